"""A test-only hold point for the trainer: put this folder on PYTHONPATH and set
LLMCTL_TEST_HOLD_AT_STEP=N, and the trainer stops after logging step N until a
stop signal (SIGUSR1 or SIGTERM) reaches it.

Tests that interrupt a run used to poll for "step >= N" and then signal, racing the
run's end: on a fast enough machine the run finished first. Held, the signal always
lands mid-run, however fast the machine is. Only rank 0 writes the metrics log, so
only rank 0 holds; the other ranks wait for it in the step's next collective, as
they would for a slow rank. Python imports `sitecustomize` at start-up, which is how
this reaches ranks that srun, torchrun or mpirun start inside a job.

LLMCTL_TEST_HOLD_RESTART=K holds only in the job's run K (SLURM_RESTART_COUNT, 0 for the
first): a requeued job's rerun, which inherits the environment, then runs through.
"""

import os

_AT = os.environ.get("LLMCTL_TEST_HOLD_AT_STEP")
_RUN = os.environ.get("LLMCTL_TEST_HOLD_RESTART")
if _RUN is not None and os.environ.get("SLURM_RESTART_COUNT", "0") != _RUN:
    _AT = None

if _AT:
    import sys
    import time

    from llmctl.train import metrics, preempt

    _seen = []
    _handle = preempt.Preemption._handle
    _write = metrics.MetricsLog.write

    def _handle_and_note(self, signum, frame):
        _seen.append(signum)
        _handle(self, signum, frame)

    def _write_and_hold(self, record):
        _write(self, record)
        if record.get("kind") == "train" and record.get("step") == int(_AT):
            print(f"llmctl-test: held after step {_AT}", file=sys.stderr, flush=True)
            while not _seen:
                time.sleep(0.02)

    preempt.Preemption._handle = _handle_and_note
    metrics.MetricsLog.write = _write_and_hold

# LLMCTL_TEST_CRASH_AT_STEP=N with LLMCTL_TEST_CRASH_RANK=R: rank R dies (exit 1, no
# clean-up, as a crashed process) right after its N-th optimizer step, in the first
# attempt only (torchrun's TORCHELASTIC_RESTART_COUNT 0): an elastic restart then runs through.
_CRASH = os.environ.get("LLMCTL_TEST_CRASH_AT_STEP")
if (_CRASH and os.environ.get("RANK") == os.environ.get("LLMCTL_TEST_CRASH_RANK", "0")
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
    import sys as _sys

    from llmctl.parallel import runner as _runner

    _step = _runner.Runner.step
    _done = []

    def _step_and_crash(self, *args, **kwargs):
        out = _step(self, *args, **kwargs)
        _done.append(1)
        if len(_done) == int(_CRASH):
            print(f"llmctl-test: rank {os.environ['RANK']} crashing after step {_CRASH}",
                  file=_sys.stderr, flush=True)
            os._exit(1)
        return out

    _runner.Runner.step = _step_and_crash
