"""An exported Hugging Face artifact as a language model to score (`eval run --artifact`).

The folder `llmctl export` writes, or a Llama/GPT-2 folder transformers saved,
loaded by the same `load_artifact` that `llmctl serve` uses, in fp32 so that it
scores like the checkpoint it came from. It needs the folder's tokenizer.json
and an eos token id in config.json. `data_config = "run"` tasks use the run that
llmctl-manifest.json names as the source, when that run is still there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.eval.lm import TorchLM


def artifact_folder(path: str | Path) -> Path:
    """The artifact folder, or a clear error when `path` is not one."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise LlmctlError(f"{p}: artifact folder not found",
                          hint="make one with `llmctl export --checkpoint RUN --out artifacts/NAME`")
    if not (p / "config.json").is_file():
        raise LlmctlError(f"{p}: not an artifact folder (no config.json)",
                          hint="pass a folder made by `llmctl export`, or a Hugging Face model folder")
    if not (p / "tokenizer.json").is_file():
        raise LlmctlError(f"{p}: the artifact has no tokenizer.json; evaluation needs its tokenizer")
    return p


def source_run(folder: Path) -> Optional[Path]:
    """The training run an llmctl-exported artifact came from (None when unknown)."""
    from llmctl.export.hf import MANIFEST

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run = manifest.get("source_run") if isinstance(manifest, dict) else None
    return Path(run) if run else None


def run_data_dir(folder: Path, name: str) -> Path:
    """The prepared data of the artifact's source run (for `data_config = "run"`)."""
    run = source_run(folder)
    if run is None or not (run / "config.toml").is_file():
        where = f"its source run {run} is gone" if run else "it names no source run"
        raise LlmctlError(f"{name}: data_config = \"run\" needs the training run, and {where}",
                          hint="give the task a data_config path, or pick other tasks with --tasks")
    from llmctl.train.setup import load_run

    return load_run(run).data_dir


class ArtifactLM(TorchLM):
    def __init__(self, artifact: str | Path, batch_size: int = 8, device: Optional[str] = None):
        import torch

        from llmctl.export.hf import load_artifact

        folder = artifact_folder(artifact)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        art = load_artifact(folder, dtype="fp32", device=dev)
        if art.eos_id is None:
            raise LlmctlError(f"{folder / 'config.json'}: eos_token_id: missing; evaluation starts every "
                              "text with the end-of-text token")
        vocab = art.tokenizer.get_vocab_size()
        if vocab > art.cfg.vocab_size:
            raise LlmctlError(f"{folder / 'tokenizer.json'}: vocabulary mismatch: the tokenizer has {vocab} "
                              f"tokens, the model only {art.cfg.vocab_size}")
        super().__init__(art.model, art.tokenizer, art.eos_id, art.cfg.max_seq_len, torch.device(dev),
                         batch_size)
        self.path, self.name = folder, art.name

    def run_data_dir(self) -> Path:
        return run_data_dir(self.path, self.name)

    def describe(self) -> dict[str, Any]:
        run = source_run(self.path)
        return {"model_args": f"artifact={self.path}", "artifact": str(self.path),
                "source_run": str(run) if run else None, **super().describe()}
