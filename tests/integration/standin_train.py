"""A stand-in for `python -m llmctl.train --run-dir R` until the trainer lands.

A real program with the trainer's contract: it counts steps, checkpoints the
counter to the run folder when SIGUSR1 arrives, requeues its own SLURM job with
`scontrol requeue $SLURM_JOB_ID`, and on restart continues from the checkpoint.
With STANDIN_MPI=1 it instead checks it runs as one of several real MPI ranks.
Environment: STANDIN_STEPS, STANDIN_STEP_S, STANDIN_ORDER_FILE (appends start/end lines).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def mpi_main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.Get_rank() + 1)
    print(f"standin-mpi: rank {comm.Get_rank()} of {comm.Get_size()} sum {total}", flush=True)
    return 0


def main() -> int:
    if os.environ.get("STANDIN_MPI") == "1":
        return mpi_main()
    run_dir = Path(sys.argv[sys.argv.index("--run-dir") + 1])
    index = os.environ.get("LLMCTL_ARRAY_INDEX", "")
    config = os.environ.get("LLMCTL_CONFIG", "")
    if config and not Path(config).is_file():
        print(f"standin: config {config} missing", flush=True)
        return 3
    steps = int(os.environ.get("STANDIN_STEPS", "3"))
    step_s = float(os.environ.get("STANDIN_STEP_S", "0.3"))
    order = os.environ.get("STANDIN_ORDER_FILE")
    ckpt = run_dir / "checkpoints" / f"counter{index}.json"
    start = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else 0
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    if order:
        with open(order, "a") as f:
            f.write(f"start {os.environ.get('LLMCTL_JOB_NAME')}{index} {time.time():.3f}\n")
    print(f"standin: start at step {start}, restart {restart}, task {index or '-'}", flush=True)
    preempted = []
    signal.signal(signal.SIGUSR1, lambda *_: preempted.append(1))
    print("standin: ready", flush=True)
    for step in range(start, steps):
        if preempted:
            ckpt.write_text(json.dumps({"step": step}))
            print(f"standin: checkpointed at step {step}; requeueing", flush=True)
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
            time.sleep(600)  # SLURM stops this run; the next one continues from the checkpoint
        time.sleep(step_s)
    ckpt.write_text(json.dumps({"step": steps}))
    if order:
        with open(order, "a") as f:
            f.write(f"end {os.environ.get('LLMCTL_JOB_NAME')}{index} {time.time():.3f}\n")
    print(f"standin: done {steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
