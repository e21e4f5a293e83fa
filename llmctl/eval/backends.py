"""Which language-model backend `eval run`'s options name: an llmctl checkpoint, an
exported Hugging Face artifact or an OpenAI-compatible endpoint (exactly one).

Shared by the CLI and the lm-evaluation-harness adapter (llmctl.eval.harness), so both
check the options the same way. Each backend is imported only when chosen (torch,
httpx)."""

from __future__ import annotations

from llmctl.errors import LlmctlError


def open_model(checkpoint, artifact, endpoint, tokenizer, served_model, api_key_env, batch_size,
               need_logprobs=True, verify=True):
    """The LM backend the options name (exactly one of checkpoint, artifact, endpoint)."""
    given = [name for name, v in (("--checkpoint", checkpoint), ("--artifact", artifact),
                                  ("--endpoint", endpoint)) if v]
    if len(given) != 1:
        raise LlmctlError("give exactly one of --checkpoint, --artifact, --endpoint"
                          + (f" (got {', '.join(given)})" if given else ""))
    endpoint_only = [n for n, v in (("--tokenizer", tokenizer), ("--served-model", served_model),
                                    ("--api-key-env", api_key_env)) if v]
    if endpoint_only and not endpoint:
        raise LlmctlError(f"{', '.join(endpoint_only)}: only with --endpoint")
    if not verify and not checkpoint:
        raise LlmctlError("--skip-verify: only with --checkpoint")
    if checkpoint:
        from llmctl.eval.lm import CheckpointLM

        return CheckpointLM(checkpoint, batch_size=batch_size, verify=verify)
    if artifact:
        from llmctl.eval.artifact import ArtifactLM

        return ArtifactLM(artifact, batch_size=batch_size)
    if not tokenizer:
        raise LlmctlError("--endpoint needs --tokenizer: the artifact or Hugging Face folder the server loaded",
                          hint="token ids are cut on this side, exactly as for --checkpoint and --artifact")
    from llmctl.eval.endpoint import EndpointLM

    return EndpointLM(endpoint, tokenizer, served_model=served_model, api_key_env=api_key_env,
                      batch_size=batch_size, need_logprobs=need_logprobs)
