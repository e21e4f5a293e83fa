"""Fine-tuning: a run that starts from pretrained weights (`[init] from = FOLDER`).

FOLDER is an artifact `llmctl export` wrote, a Hugging Face folder transformers saved
(llama, mistral, qwen2, gpt2: its config.json read field by field, llmctl.export.families)
or what `llmctl export --artifact` imported (model.json + model.safetensors). The run's
model config is taken from it (llmctl.train.setup.pretrained_config), and at step 0 its
weights replace the random ones; a run that already has a checkpoint resumes from the
checkpoint instead. Everything else is as
for pretraining: the learning-rate warm-up and schedule, the layouts, the checkpoints.
Chat data (`type = "chat"` sources) carries the loss mask that restricts the loss to
the answers (llmctl.data.chat).
"""

from __future__ import annotations

from llmctl.errors import LlmctlError


def load_pretrained(model, s) -> bool:
    """Put the pretrained weights of run `s` into `model` (whole, before any sharding), unless
    the run has no `[init] from` or already has a checkpoint to resume. Returns whether it did."""
    if s.init_path is None:
        return False
    from llmctl.train.checkpoint import Checkpointer

    if Checkpointer(s.run.task_checkpoints(s.task)).latest() is not None:
        return False
    path = s.init_path
    if (path / "model.json").is_file():
        from safetensors.torch import load_model

        load_model(model, str(path / "model.safetensors"), strict=True)
        return True
    from llmctl.export.hf import read_hf_folder

    _, state, _ = read_hf_folder(path)
    if s.model_cfg.tie_embeddings:
        state["head.weight"] = state["tok_emb.weight"]
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise LlmctlError(f"{path}: weights do not match the model (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    if s.model_cfg.tie_embeddings:
        model.head.weight = model.tok_emb.weight
    return True
