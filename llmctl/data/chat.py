"""Conversations rendered through a chat template, with the loss on the answers only.

The template is the model's own (`chat_template` in its tokenizer_config.json, the
Jinja that transformers' `apply_chat_template` runs, in the same sandbox), or
llmctl's role-tagged one. A conversation is rendered prefix by prefix: for each
assistant turn, the prompt up to it (with the generation prompt) and the text with
it; what the turn adds is the answer. Answer tokens get mask 1 (the loss counts
them as targets), everything else 0, and the end-of-text token after a closing
answer 1 (the model learns to stop). A template that does not render a conversation
as a growing prefix cannot be split this way, and is refused naming the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError


def find_template(tokenizer_path: Optional[Path], explicit: Optional[Path]) -> tuple[str, dict[str, Any]]:
    """(the Jinja chat template, tokenizer_config.json's special tokens) for chat sources."""
    from llmctl.export.hf import CHAT_TEMPLATE

    candidates = []
    if explicit is not None:
        candidates.append(explicit / "tokenizer_config.json" if explicit.is_dir() else explicit)
    elif tokenizer_path is not None:
        candidates.append(tokenizer_path.parent / "tokenizer_config.json")
    for p in candidates:
        if not p.is_file():
            if explicit is not None:
                raise LlmctlError(f"tokenizer.chat_template: {p} not found")
            continue
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise LlmctlError(f"{p}: not valid JSON: {e}") from None
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template:
            specials = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
            return template, specials
        if explicit is not None:
            raise LlmctlError(f"{p}: no chat_template in it")
    return CHAT_TEMPLATE, {}


def _token_text(value: Any) -> Optional[str]:
    if isinstance(value, dict):  # AddedToken form
        return value.get("content")
    return value


class ChatRenderer:
    def __init__(self, template: str, specials: dict[str, Any]):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(message)

        # As transformers' apply_chat_template renders it.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
        self.template = env.from_string(template)
        self.specials = {k: v for k, v in specials.items() if v is not None}

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **self.specials)

    def pieces(self, messages: list[dict[str, str]], where: str) -> list[tuple[str, int]]:
        """The rendered conversation as (text, mask) pieces: answers 1, the rest 0."""
        out: list[tuple[str, int]] = []
        done = ""
        try:
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prompt = self.render(messages[:i], add_generation_prompt=True)
                full = self.render(messages[:i + 1], add_generation_prompt=False)
                if not prompt.startswith(done) or not full.startswith(prompt):
                    raise LlmctlError(f"{where}: the chat template does not render this conversation as "
                                      "a growing prefix, so its answers cannot be told from its prompts",
                                      hint="use a template that renders turn by turn (most do)")
                out += [(prompt[len(done):], 0), (full[len(prompt):], 1)]
                done = full
            rest = self.render(messages, add_generation_prompt=False)
        except ValueError as e:  # raise_exception in the template, or a Jinja error
            raise LlmctlError(f"{where}: the chat template refused the conversation: {e}") from None
        out.append((rest[len(done):], 0))
        return [(t, m) for t, m in out if t]

    def text(self, messages: list[dict[str, str]]) -> str:
        return self.render(messages, add_generation_prompt=False)


def encode_conversation(renderer: ChatRenderer, tok, eos_id: int, messages: list[dict[str, str]], where: str):
    """(token ids, loss mask) of one conversation, the end-of-text token appended."""
    import numpy as np

    ids: list[int] = []
    mask: list[int] = []
    for text, m in renderer.pieces(messages, where):
        piece = tok.encode(text, add_special_tokens=False).ids
        ids += piece
        mask += [m] * len(piece)
    ids.append(eos_id)
    mask.append(1 if messages[-1]["role"] == "assistant" else 0)
    return np.array(ids, dtype=np.uint32), np.array(mask, dtype=np.uint8)
