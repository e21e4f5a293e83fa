"""A tiny project for the data, model and trainer tests: a small slice of the stdlib
corpus, a BPE of 512 tokens, a 2-layer llama, and a run folder that trains it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

TINY_MODEL = {
    "name": "llama-test", "template": "llama", "layers": 2, "hidden": 32, "ffn": 64, "heads": 4,
    "kv_heads": 2, "vocab_size": 512, "max_seq_len": 64, "tie_embeddings": True,
}
TINY_GPT = {"name": "gpt-test", "template": "gpt", "layers": 2, "hidden": 32, "heads": 4,
            "vocab_size": 512, "max_seq_len": 64}

DATA_TOML = """name = "tiny"
val_fraction = 0.1
seed = 7
max_documents = {docs}

[[sources]]
type = "stdlib"

[tokenizer]
type = "bpe"
vocab_size = 512

[output]
dir = "data/tiny"
shard_tokens = {shard_tokens}
"""

def train_toml(*, steps: int, interval: int = 1000, eval_interval: int | None = None, warmup: int = 1,
               micro_batch: int = 4, global_batch: int = 8, eval_batches: int = 2, keep_last: int | None = 2,
               lr: float | None = 0.003, seed: int | None = 11, schedule: str | None = "cosine",
               model: str = "llama-test", model_file: str | None = "configs/models/tiny.json",
               data_file: str = "configs/data/tiny.toml", seq_len: int = 32, init_from: str | None = None) -> str:
    """The tests' one training config: the tiny llama on the tiny data. A key given None is
    left out (the config's default applies); `eval_interval` defaults to `steps`."""
    lines = ["[model]", f'name = "{model}"']
    if model_file:
        lines.append(f'config_file = "{model_file}"')
    if init_from:
        lines += ["", "[init]", f'from = "{init_from}"']
    if lr is not None:
        lines += ["", "[optimizer]", f"lr = {lr}"]
    lines += ["", "[parallel]", f"micro_batch_size = {micro_batch}", f"global_batch_size = {global_batch}",
              "", "[data]", f'config_file = "{data_file}"', f"seq_len = {seq_len}",
              "", "[schedule]"] + ([f'type = "{schedule}"'] if schedule else []) + [f"warmup_steps = {warmup}",
              "", "[checkpoint]", f"interval_steps = {interval}"] + (
              [f"keep_last = {keep_last}"] if keep_last is not None else []) + [
              "", "[training]", f"max_steps = {steps}"] + ([f"seed = {seed}"] if seed is not None else []) + [
              f"eval_interval = {steps if eval_interval is None else eval_interval}",
              f"eval_batches = {eval_batches}", "log_interval = 1"]
    return "\n".join(lines) + "\n"


def quiet_env(**extra: str) -> dict:
    """One thread per process: the test machine has 2 cores shared with other tests."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    env.pop("LLMCTL_DEBUG", None)
    return env


HOLDPOINT = Path(__file__).resolve().parent.parent / "holdpoint"


def held_env(step: int, env: dict | None = None) -> dict:
    """Environment in which the trainer holds after logging `step` until a stop signal
    reaches it (tests/holdpoint/sitecustomize.py): a signal sent then lands mid-run."""
    env = dict(env if env is not None else quiet_env())
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(HOLDPOINT), env.get("PYTHONPATH", "")) if x)
    env["LLMCTL_TEST_HOLD_AT_STEP"] = str(step)
    return env


def make_project(root: Path, docs: int = 40, shard_tokens: int = 20000, model: dict | None = None) -> Path:
    """Project folder with configs (data not prepared yet)."""
    (root / "configs" / "models").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "models" / "tiny.json").write_text(json.dumps(model or TINY_MODEL))
    (root / "configs" / "data" / "tiny.toml").write_text(DATA_TOML.format(docs=docs, shard_tokens=shard_tokens))
    return root


def prepare_data(root: Path, workers: int = 1) -> dict:
    r = subprocess.run([sys.executable, "-m", "llmctl", "data", "prepare", "--config",
                        "configs/data/tiny.toml", "--workers", str(workers), "--json"],
                       cwd=root, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def make_run(root: Path, name: str, steps: int = 30, interval: int = 10, eval_interval: int = 10,
             extra: str = "") -> Path:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        train_toml(steps=steps, interval=interval, eval_interval=eval_interval, warmup=min(5, steps)) + extra)
    return run


def train_cmd(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmctl.train", "--run-dir", str(run), *args]


def run_train(run: Path, timeout: float = 300, args: tuple[str, ...] = (),
              **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(run, *args), cwd=run, env=quiet_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def records(run: Path, kind: str | None = None, name: str = "metrics.jsonl") -> list[dict]:
    p = run / name
    if not p.is_file():
        return []
    out = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return [r for r in out if kind is None or r.get("kind") == kind]


def flip_bytes(path: Path, count: int = 16, value: int | None = None) -> None:
    """Corrupt `count` bytes in the middle of `path`, as a bad disk or a stray write would:
    each byte inverted, or set to `value` (0xFF makes float32 NaNs)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + count):
        data[i] = data[i] ^ 0xFF if value is None else value
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A real, tiny filesystem (tmpfs of `size`, e.g. "600k") mounted at `path` for the block:
    what a full disk does to a writer. Needs root (or CAP_SYS_ADMIN); the test is skipped
    where mounting is refused."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
