"""The trainer: `python -m llmctl.train --run-dir R` (what the rendered job scripts run).

`setup` reads the run folder (config, plan, model, data), `loader` serves token
windows from the HDF5 shards and resumes at the exact sample, `schedule` is the
learning rate, `checkpoint` writes and reads atomic checkpoints, `preempt` turns
SIGUSR1/SIGTERM into "finish the step, checkpoint, requeue", `metrics` and `plot`
record the run, `progress` summarises it for `llmctl job status`, and `trainer`
is the loop.
"""
