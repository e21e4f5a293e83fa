"""An llmctl checkpoint as a language model to score: loglikelihoods, rolling loss, greedy text.

The checkpoint's run folder says which model and which tokenizer it was trained
with (the same `load_run` the trainer uses); weights load from safetensors, never
from a pickle. The three request kinds are those of lm-evaluation-harness:
`loglikelihood` (context, continuation), rolling loss over whole texts
(perplexity), and `generate_until` (greedy decoding up to a stop sequence).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from llmctl.errors import LlmctlError


def find_run_dir(checkpoint: Path) -> tuple[Path, str]:
    """The run folder holding `checkpoint` and its array task ("" when not an array)."""
    parent = checkpoint.parent
    if parent.name.startswith("task-") and parent.parent.name == "checkpoints":
        return parent.parent.parent, parent.name[len("task-"):]
    if parent.name == "checkpoints":
        return parent.parent, ""
    raise LlmctlError(f"{checkpoint}: not inside a run folder's checkpoints/ (RUN/checkpoints/step-N)",
                      hint="pass a step-* folder of a run made by `llmctl train launch`")


def resolve_checkpoint(path: str | Path) -> Path:
    """A step-* folder; a run folder or a checkpoints/ folder means its latest checkpoint."""
    from llmctl.train.checkpoint import STATE, Checkpointer

    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise LlmctlError(f"{p}: checkpoint not found")
    if (p / STATE).is_file():
        return p
    for folder in (p / "checkpoints", p):
        if (folder / "latest").is_file():
            latest = Checkpointer(folder).latest()
            if latest is not None:
                return latest
    raise LlmctlError(f"{p}: not a complete checkpoint (no state.json) and holds no `latest` pointer",
                      hint="pass RUN/checkpoints/step-N, or a run folder with checkpoints")


@contextmanager
def _array_task(task: str) -> Iterator[None]:
    old = os.environ.get("LLMCTL_ARRAY_INDEX")
    os.environ["LLMCTL_ARRAY_INDEX"] = task
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLMCTL_ARRAY_INDEX", None)
        else:
            os.environ["LLMCTL_ARRAY_INDEX"] = old


class CheckpointLM:
    """A loaded checkpoint with its tokenizer, scoring on the CPU or the first GPU."""

    def __init__(self, checkpoint: str | Path, batch_size: int = 8, device: Optional[str] = None):
        from llmctl.data.tokenizer import load_tokenizer
        from llmctl.train.checkpoint import MODEL, STATE
        from llmctl.train.setup import load_run, short_hash

        self.path = resolve_checkpoint(checkpoint)
        run_dir, task = find_run_dir(self.path)
        with _array_task(task):
            setup = load_run(run_dir)
        self.setup = setup
        mc = setup.model_cfg
        try:
            state = json.loads((self.path / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmctlError(f"{self.path / STATE}: cannot read: {e}") from None
        if state.get("model_hash") != short_hash(mc.to_data()):
            raise LlmctlError(f"{self.path}: checkpoint of another model ({state.get('model_shape')}) than "
                              f"the run's model config {setup.model_path} ({mc.template}, {mc.layers} layers, "
                              f"vocab {mc.vocab_size})", hint="restore the model config the run trained with")
        meta = setup.data_meta["tokenizer"]
        tok_path = setup.data_dir / meta.get("file", "tokenizer.json")
        self.tokenizer = load_tokenizer(str(tok_path), meta["eos_token"], str(setup.data_dir / "meta.json"))
        vocab = self.tokenizer.get_vocab_size()
        if vocab > mc.vocab_size:
            raise LlmctlError(f"{tok_path}: vocabulary mismatch: the tokenizer has {vocab} tokens, the "
                              f"model ({setup.model_path}) only {mc.vocab_size}",
                              hint="evaluate with the tokenizer the model was trained with")
        self.eos_id = self.tokenizer.token_to_id(meta["eos_token"])
        self.max_len = mc.max_seq_len
        self.batch_size = batch_size
        self.step = int(state.get("step", 0))

        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from llmctl.model.transformer import Transformer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = Transformer(mc).to(self.device)
        try:
            missing, unexpected = load_model(self.model, str(self.path / MODEL), strict=False,
                                             device=str(self.device))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise LlmctlError(f"{self.path / MODEL}: cannot load: {' '.join(str(e).split())[:300]}") from None
        if missing or unexpected:
            raise LlmctlError(f"{self.path / MODEL}: tensors do not match the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        self.model.eval()
        self.name = f"{run_dir.name}/{self.path.name}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # --- loglikelihood -------------------------------------------------------------
    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding gives the continuation)."""
        import torch

        encoded = []
        for ctx, cont in requests:
            c, k = [self.eos_id] + self.encode(ctx), self.encode(cont)
            if not k:
                raise LlmctlError(f"empty continuation after the prompt {ctx[-40:]!r}")
            ids = (c + k)[-(self.max_len + 1):]  # keep the end: the continuation must fit
            encoded.append((ids, len(k)))
        out: list[tuple[float, bool]] = []
        with torch.inference_mode():
            for b in range(0, len(encoded), self.batch_size):
                batch = encoded[b:b + self.batch_size]
                width = max(len(ids) for ids, _ in batch) - 1
                x = torch.full((len(batch), width), self.eos_id, dtype=torch.long)
                for i, (ids, _) in enumerate(batch):
                    x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
                logp = torch.log_softmax(self.model(x.to(self.device)).float(), dim=-1).cpu()
                for i, (ids, n) in enumerate(batch):
                    end = len(ids) - 1
                    rows = logp[i, end - n:end]
                    target = torch.tensor(ids[-n:])
                    lp = rows.gather(1, target[:, None]).sum().item()
                    out.append((lp, bool((rows.argmax(-1) == target).all())))
        return out

    # --- rolling loss ----------------------------------------------------------------
    def token_nll(self, ids: list[int]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and token count per window of a token stream.

        Non-overlapping windows of max_seq_len predicted tokens, each conditioned on
        what precedes it inside its window (the first on an end-of-text token).
        """
        import torch

        windows = []
        step = self.max_len
        stream = [self.eos_id] + list(ids)
        for s in range(0, len(stream) - 1, step):
            windows.append(stream[s:s + step + 1])
        out = []
        with torch.inference_mode():
            for b in range(0, len(windows), self.batch_size):
                batch = windows[b:b + self.batch_size]
                width = max(len(w) for w in batch) - 1
                x = torch.full((len(batch), width), self.eos_id, dtype=torch.long)
                for i, w in enumerate(batch):
                    x[i, :len(w) - 1] = torch.tensor(w[:-1])
                logp = torch.log_softmax(self.model(x.to(self.device)).float(), dim=-1).cpu()
                for i, w in enumerate(batch):
                    n = len(w) - 1
                    nll = -logp[i, :n].gather(1, torch.tensor(w[1:])[:, None]).sum().item()
                    out.append((nll, n))
        return out

    # --- generation --------------------------------------------------------------------
    def generate_until(self, context: str, until: list[str], max_tokens: int) -> str:
        """Greedy continuation of `context`, cut at the first stop sequence."""
        import torch

        ids = [self.eos_id] + self.encode(context)
        new: list[int] = []
        text = ""
        with torch.inference_mode():
            for _ in range(max_tokens):
                window = (ids + new)[-self.max_len:]
                logits = self.model(torch.tensor([window], device=self.device))[0, -1]
                nxt = int(logits.argmax())
                if nxt == self.eos_id:
                    break
                new.append(nxt)
                text = self.decode(new)
                if any(s in text for s in until):
                    break
        for s in until:
            if s in text:
                text = text[:text.index(s)]
        return text
