"""`python -m llmctl.train --run-dir R`: train the run folder's config.

    python -m llmctl.train --run-dir runs/train-20260101-120000

Exit codes: 0 finished, 2 bad input (one clean message), 75 stopped by a
preemption signal after checkpointing (the next start resumes).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from llmctl.errors import LlmctlError

    ap = argparse.ArgumentParser(prog="python -m llmctl.train", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="run folder (config.toml, plan.toml, checkpoints/)")
    args = ap.parse_args(argv)
    try:
        from llmctl.train.trainer import train

        return train(args.run_dir)
    except LlmctlError as e:
        if os.environ.get("LLMCTL_DEBUG"):
            raise
        print(e.render(), file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
