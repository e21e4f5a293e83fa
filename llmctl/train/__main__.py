"""`python -m llmctl.train --run-dir R`: train the run folder's config.

    python -m llmctl.train --run-dir runs/train-20260101-120000
    python -m llmctl.train --run-dir R --skip-verify     # resume from a checkpoint that fails its digests

Exit codes: 0 finished, 2 bad input, a corrupt checkpoint, a full disk or a loss that
is not finite (one clean message), 75 stopped by a preemption signal after
checkpointing (the next start resumes).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from llmctl.errors import LlmctlError

    ap = argparse.ArgumentParser(prog="python -m llmctl.train", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="run folder (config.toml, plan.toml, checkpoints/)")
    ap.add_argument("--skip-verify", action="store_true",
                    help="resume even from a checkpoint whose files do not match the digests in its state.json")
    args = ap.parse_args(argv)
    try:
        from llmctl.train.trainer import train

        return train(args.run_dir, verify=not args.skip_verify)
    except LlmctlError as e:
        if os.environ.get("LLMCTL_DEBUG"):
            raise
        print(e.render(), file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
