"""Tiny artifacts for the export and serve tests: a byte-level BPE trained on a
few stdlib modules and a random 2-layer llama (or gpt) written as a Hugging Face
folder by llmctl's own exporter. Nothing is downloaded."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmctl.hw.bench.comm import free_port

TINY_LLAMA = {"name": "tiny-llama", "template": "llama", "layers": 2, "hidden": 64, "ffn": 128, "heads": 4,
              "kv_heads": 2, "vocab_size": 384, "max_seq_len": 256}
TINY_GPT = {"name": "tiny-gpt", "template": "gpt", "layers": 2, "hidden": 64, "heads": 4,
            "vocab_size": 384, "max_seq_len": 256}
EOS = "<|endoftext|>"


def tiny_tokenizer(path: Path) -> int:
    """Train a 384-token BPE on a few stdlib modules into `path`; returns the eos id."""
    import collections
    import json as json_mod

    from llmctl.data.tokenizer import train_bpe

    texts = [inspect.getsource(m) for m in (collections, json_mod)]
    tok = train_bpe(texts, 384, EOS)
    tok.save(str(path))
    return tok.token_to_id(EOS)


def tiny_model(spec: dict, seed: int = 0):
    import torch

    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**spec)).eval()
    with torch.no_grad():  # larger weights than the N(0, 0.02) init: outputs that vary with the input
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def tiny_artifact(root: Path, spec: dict = TINY_LLAMA, name: str = "tiny", seed: int = 0) -> Path:
    """Export a random tiny model with a real tokenizer as an fp32 artifact folder."""
    from llmctl.export.hf import write_artifact

    root.mkdir(parents=True, exist_ok=True)
    tok_file = root / f"{name}-tokenizer.json"
    eos = tiny_tokenizer(tok_file)
    model = tiny_model(spec, seed)
    return write_artifact(model.cfg, dict(model.state_dict()), root / name, "fp32", tok_file, eos,
                          {"source_checkpoint": "test"})


class Server:
    """`llmctl serve start` in a subprocess, waited for until /health answers."""

    def __init__(self, artifact: Path, *args: str, env: dict | None = None, cmd: list[str] | None = None):
        self.port = free_port()
        full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        full_env.pop("LLMCTL_DEBUG", None)
        argv = (cmd or []) + [sys.executable, "-m", "llmctl", "serve", "start", "--artifact", str(artifact),
                              "--port", str(self.port), *args]
        self.proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60) -> "Server":
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not come up")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc):
        self.stop()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The server's test hooks (llmctl.serve.testhooks): a request with "llmctl_test": "hold"
# keeps the engine at a known point (after its first token) until it is aborted or
# POST /_test/release, so tests never race the engine; "fail-*" inject faults.
TEST_HOOKS = {"LLMCTL_SERVE_TEST_HOOKS": "1"}


def metrics(url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics, by name."""
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def wait_until(check, what: str, timeout: float = 60):
    """Poll `check()` until it returns something truthy. The state waited for must last
    until the test acts (hold the engine for a state that lasts only while work runs);
    the timeout only keeps a broken server from hanging the suite."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"never reached: {what} (last: {got!r})")
        time.sleep(0.05)


def first_event(lines) -> dict:
    """The first `data:` event of an SSE line iterator, parsed. Keep a reference to the
    iterator while the stream should stay open: httpcore closes the connection when an
    unfinished response iterator is garbage-collected."""
    for line in lines:
        if line.startswith("data:"):
            return json.loads(line[5:])
    raise AssertionError("the stream ended without an event")
