"""Login-node speed: `llmctl --help` against `python -c pass` (target: at most +0.25 s).

Run with `make bench`; these are measurements, not pass/fail gates.
"""

from __future__ import annotations

import subprocess
import sys


def _run(args):
    subprocess.run(args, check=True, capture_output=True)


def test_python_baseline(benchmark):
    benchmark.pedantic(_run, args=([sys.executable, "-c", "pass"],), rounds=15, warmup_rounds=2)


def test_llmctl_help(benchmark):
    benchmark.pedantic(_run, args=([sys.executable, "-m", "llmctl", "--help"],), rounds=15, warmup_rounds=2)


def test_llmctl_site_list(benchmark):
    benchmark.pedantic(_run, args=([sys.executable, "-m", "llmctl", "site", "list"],), rounds=10,
                       warmup_rounds=1)


def test_llmctl_init_scaffold(benchmark, tmp_path):
    counter = iter(range(10**6))

    def scaffold():
        _run([sys.executable, "-m", "llmctl", "init", "scaffold", "--template", "llama", "--size", "7b",
              "--name", f"p{next(counter)}", "--output-dir", str(tmp_path)])

    benchmark.pedantic(scaffold, rounds=10, warmup_rounds=1)
