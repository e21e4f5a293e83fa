"""The language-model interface the evaluator scores, its torch implementation, and
the checkpoint backend.

Three request kinds, those of lm-evaluation-harness: `loglikelihood` (context,
continuation), rolling loss over a token stream (perplexity), and
`generate_until` (greedy decoding up to a stop sequence). Backends: an llmctl
checkpoint (`CheckpointLM`, here), an exported Hugging Face artifact
(`llmctl.eval.artifact`) and an OpenAI-compatible endpoint
(`llmctl.eval.endpoint`). All three cut text the same way (an end-of-text token
first, the same windows), so one model scores the same through each of them.

The checkpoint's run folder says which model and which tokenizer it was trained
with (the same `load_run` the trainer uses); weights load from safetensors, or
from a distributed run's DCP shards (any layout: llmctl.parallel.checkpoint), never
from a pickle.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

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


class LM:
    """What the evaluator needs of a model. Subclasses set the attributes and the
    three request kinds; text always enters as [eos] + tokens of the text."""

    name: str = "model"
    batch_size: int = 8
    max_len: int = 0          # tokens the model sees at once
    eos_id: int = 0
    eos_token: str = ""
    step: Optional[int] = None
    tokenizer_sha256: Optional[str] = None  # to check data_config shards against

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding gives the continuation)."""
        raise NotImplementedError

    def token_nll(self, ids: list[int]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and predicted-token count per window of
        `rolling_windows(ids)`, in that order."""
        raise NotImplementedError

    def generate_until(self, context: str, until: list[str], max_tokens: int) -> str:
        """Greedy continuation of `context`, cut at the first stop sequence."""
        raise NotImplementedError

    def run_data_dir(self) -> Path:
        """The prepared data the model was trained on (`data_config = "run"`)."""
        raise LlmctlError(f"{self.name}: data_config = \"run\" needs the model's training run, "
                          "which this model does not name",
                          hint="evaluate the checkpoint, an artifact exported by `llmctl export`, or "
                               "give the task a data_config path")

    def describe(self) -> dict[str, Any]:
        """This model's entries in the results' `config`."""
        raise NotImplementedError

    # --- shared text cutting ---------------------------------------------------------
    def scoring_ids(self, context: str, continuation: str) -> tuple[list[int], int]:
        """[eos] + context + continuation, cut from the left to max_len tokens (the
        continuation must fit), and the continuation's token count."""
        k = self.encode(continuation)
        if not k:
            raise LlmctlError(f"empty continuation after the prompt {context[-40:]!r}")
        ids = ([self.eos_id] + self.encode(context) + k)[-self.max_len:]
        return ids, min(len(k), len(ids) - 1)  # the first token is never predicted

    @property
    def stride(self) -> int:
        """Tokens predicted per full window: a window of max_len tokens predicts all
        but its first, so that an endpoint (which must be sent every token it scores)
        sees exactly what the model sees here."""
        return self.max_len - 1

    def rolling_windows(self, ids: list[int]) -> list[list[int]]:
        """Non-overlapping prediction windows over [eos] + ids: window j holds tokens
        j*stride .. j*stride+max_len-1 of that stream and predicts all but its first."""
        stream = [self.eos_id] + list(ids)
        return [stream[s:s + self.max_len] for s in range(0, len(stream) - 1, self.stride)]


class TorchLM(LM):
    """A llmctl `Transformer` in memory with its tokenizer (checkpoints and artifacts)."""

    def __init__(self, model, tokenizer, eos_id: int, max_len: int, device, batch_size: int = 8):
        self.model, self.tokenizer, self.eos_id, self.max_len = model, tokenizer, eos_id, max_len
        self.device, self.batch_size = device, batch_size
        self.eos_token = tokenizer.id_to_token(eos_id)
        from llmctl.data.tokenizer import tokenizer_sha256

        self.tokenizer_sha256 = tokenizer_sha256(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _logp(self, rows: list[list[int]]):
        """log-softmax over the vocabulary for each position of each row (padded with eos)."""
        import torch

        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, :len(r)] = torch.tensor(r)
        return torch.log_softmax(self.model(x.to(self.device)).float(), dim=-1).cpu()

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        import torch

        encoded = [self.scoring_ids(ctx, cont) for ctx, cont in requests]
        out: list[tuple[float, bool]] = []
        with torch.inference_mode():
            for b in range(0, len(encoded), self.batch_size):
                batch = encoded[b:b + self.batch_size]
                logp = self._logp([ids[:-1] for ids, _ in batch])
                for i, (ids, n) in enumerate(batch):
                    end = len(ids) - 1
                    rows = logp[i, end - n:end]
                    target = torch.tensor(ids[-n:])
                    lp = rows.gather(1, target[:, None]).sum().item()
                    out.append((lp, bool((rows.argmax(-1) == target).all())))
        return out

    def token_nll(self, ids: list[int]) -> list[tuple[float, int]]:
        import torch

        windows = self.rolling_windows(ids)
        out = []
        with torch.inference_mode():
            for b in range(0, len(windows), self.batch_size):
                batch = windows[b:b + self.batch_size]
                logp = self._logp([w[:-1] for w in batch])
                for i, w in enumerate(batch):
                    n = len(w) - 1
                    nll = -logp[i, :n].gather(1, torch.tensor(w[1:])[:, None]).sum().item()
                    out.append((nll, n))
        return out

    def generate_until(self, context: str, until: list[str], max_tokens: int) -> str:
        import torch

        # Like a server: the prompt keeps its last max_len-1 tokens and generation
        # stops when the context is full (no sliding window), so backends agree.
        ids = ([self.eos_id] + self.encode(context))[-max(self.max_len - 1, 1):]
        new: list[int] = []
        text = ""
        with torch.inference_mode():
            for _ in range(min(max_tokens, self.max_len - len(ids))):
                logits = self.model(torch.tensor([ids + new], device=self.device))[0, -1]
                nxt = int(logits.argmax())
                if nxt == self.eos_id:
                    break
                new.append(nxt)
                text = self.decode(new)
                if any(s in text for s in until):
                    break
        return cut_at_stops(text, until)

    def describe(self) -> dict[str, Any]:
        return {"model_num_parameters": self.model.num_parameters(), "batch_size": self.batch_size,
                "device": str(self.device)}


def cut_at_stops(text: str, until: list[str]) -> str:
    for s in until:
        if s in text:
            text = text[:text.index(s)]
    return text


class CheckpointLM(TorchLM):
    """A loaded checkpoint with its tokenizer, scoring on the CPU or the first GPU."""

    def __init__(self, checkpoint: str | Path, batch_size: int = 8, device: Optional[str] = None,
                 verify: bool = True):
        from llmctl.data.tokenizer import load_tokenizer
        from llmctl.train.checkpoint import STATE, check_files
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
        check_files(self.path, state, verify)  # the digests in state.json (`--skip-verify`: not)
        meta = setup.data_meta["tokenizer"]
        tok_path = setup.data_dir / meta.get("file", "tokenizer.json")
        tokenizer = load_tokenizer(str(tok_path), meta["eos_token"], str(setup.data_dir / "meta.json"))
        vocab = tokenizer.get_vocab_size()
        if vocab > mc.vocab_size:
            raise LlmctlError(f"{tok_path}: vocabulary mismatch: the tokenizer has {vocab} tokens, the "
                              f"model ({setup.model_path}) only {mc.vocab_size}",
                              hint="evaluate with the tokenizer the model was trained with")
        self.step = int(state.get("step", 0))

        import torch

        from llmctl.model.transformer import Transformer
        from llmctl.parallel.checkpoint import load_weights

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = Transformer(mc).to(dev)
        try:  # any format: one process's safetensors or a distributed run's DCP shards
            load_weights(self.path, model)
        except LlmctlError:
            raise
        except Exception as e:  # safetensors, DCP and DeepSpeed readers raise their own kinds
            raise LlmctlError(f"{self.path}: cannot load: {' '.join(str(e).split())[:300]}") from None
        model.eval()
        super().__init__(model, tokenizer, tokenizer.token_to_id(meta["eos_token"]), mc.max_seq_len, dev,
                         batch_size)
        self.tokenizer_sha256 = meta.get("sha256") or self.tokenizer_sha256
        self.name = f"{run_dir.name}/{self.path.name}"

    def run_data_dir(self) -> Path:
        return self.setup.data_dir

    def describe(self) -> dict[str, Any]:
        return {"model_args": f"checkpoint={self.path}", "checkpoint": str(self.path), "step": self.step,
                **super().describe()}
