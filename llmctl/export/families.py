"""Hugging Face model families <-> llmctl's ModelConfig, every config.json field accounted for.

Import reads a `config.json` field by field: each is honoured (mapped onto the
ModelConfig), known not to change the function the model computes (ids, names,
flags for transformers' own machinery, training-only dropout), or refused with a
one-line error naming it. A field no table knows is refused too: nothing is
silently ignored. Families: llama (1, 2, 3.x; rope_scaling linear, dynamic, llama3,
yarn), mistral (full attention; a sliding window shorter than the context is
refused), qwen2 (q/k/v bias) and gpt2 (untied head, scale_attn_by_inverse_layer_idx,
activation variants). Export writes the transformers config for a ModelConfig:
LlamaForCausalLM, Qwen2ForCausalLM (q/k/v-only biases) or GPT2LMHeadModel.

No torch here: `llmctl export --help` and the config checks stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError

# Fields that do not change the function a model computes: names, ids, transformers'
# own switches, generation defaults (llmctl's serve takes them per request).
METADATA = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "id2label", "label2id", "problem_type", "return_dict", "output_attentions", "output_hidden_states",
    "use_return_dict", "torchscript", "use_cache", "initializer_range", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "tokenizer_class", "task_specific_params",
    "finetuning_task", "prefix", "_attn_implementation", "_attn_implementation_autoset", "use_bfloat16",
    "tf_legacy_loss", "chunk_size_feed_forward", "is_decoder", "cross_attention_hidden_size",
    "tie_encoder_decoder", "quantization_config",
    # generation defaults of older config.json files
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens",
}
# Regularisation while training only: the logits of a model in eval mode do not depend on
# it, and llmctl trains without dropout.
DROPOUT = {"attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"}
# GPT2DoubleHeadsModel's multiple-choice head: not part of the language model.
GPT2_SUMMARY = {"summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels"}

LLAMA_ACTS = {"silu": None, "swish": None, "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
              "gelu_new": "gelu_tanh", "relu": "relu", "quick_gelu": "quick_gelu"}
GPT2_ACTS = {"gelu_new": None, "gelu_pytorch_tanh": None, "gelu_fast": None, "gelu": "gelu", "relu": "relu",
             "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu"}
ROPE_KEYS = {
    "default": set(), "linear": {"factor"}, "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
             "mscale", "mscale_all_dim", "truncate"},
}
_MISSING = object()


class _Fields:
    """config.json's fields, each taken once; `finish` refuses any left over."""

    def __init__(self, cj: dict, where: str, family: str):
        self.cj, self.where, self.family = cj, where, family
        self.used: set[str] = set()

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key in self.cj and self.cj[key] is not None:
            return self.cj[key]
        if default is _MISSING:
            raise LlmctlError(f"{self.where}: config.json lacks {key}")
        return default

    def only(self, key: str, *allowed: Any) -> Any:
        """A field llmctl follows only at these values (absent or null counts as the first)."""
        value = self.get(key, allowed[0])
        if value not in allowed:
            raise self.refuse(key, value, f"only {' or '.join(repr(a) for a in allowed)} is supported")
        return value

    def refuse(self, key: str, value: Any, why: str) -> LlmctlError:
        return LlmctlError(f"{self.where}: {key} = {value!r}: {why}",
                           hint=f"llmctl imports {self.family} models whose config it can follow exactly")

    def finish(self) -> None:
        for key in self.cj:
            if key in self.used or key in METADATA or key in DROPOUT:
                continue
            raise self.refuse(key, self.cj[key], f"not supported for model_type {self.family!r} "
                                                 "(llmctl would ignore it and compute another model)")


def model_config_from_hf(cj: dict, where: str):
    """A ModelConfig from a transformers config.json (llama, mistral, qwen2 or gpt2)."""
    from llmctl.config.model import ModelConfig

    mt = cj.get("model_type")
    if mt not in ("llama", "mistral", "qwen2", "gpt2"):
        raise LlmctlError(f"{where}: model_type {mt!r} is not supported; llmctl imports llama, mistral, "
                          "qwen2 and gpt2")
    f = _Fields(cj, where, mt)
    if f.get("is_encoder_decoder", False):
        raise f.refuse("is_encoder_decoder", True, "llmctl models are decoder-only")
    if f.get("pruned_heads", {}):
        raise f.refuse("pruned_heads", cj["pruned_heads"], "pruned attention heads are not supported")
    data = _gpt2(f) if mt == "gpt2" else _llama_like(f, mt)
    f.finish()
    data.setdefault("name", str(cj.get("_name_or_path") or f"hf-{mt}").replace("/", "-")[-64:] or f"hf-{mt}")
    try:
        return ModelConfig(**data)
    except ValueError as e:
        raise LlmctlError(f"{where}: {' '.join(str(e).split())[:300]}") from None


def _llama_like(f: _Fields, family: str) -> dict:
    heads = f.get("num_attention_heads")
    hidden = f.get("hidden_size")
    max_pos = f.get("max_position_embeddings", {"llama": 2048, "mistral": 131072, "qwen2": 32768}[family])
    act = f.get("hidden_act", "silu")
    if act not in LLAMA_ACTS:
        raise f.refuse("hidden_act", act, f"supported: {', '.join(LLAMA_ACTS)}")
    data = {
        "template": "llama", "layers": f.get("num_hidden_layers"), "hidden": hidden,
        "ffn": f.get("intermediate_size"), "heads": heads, "kv_heads": f.get("num_key_value_heads", heads),
        "head_dim": f.get("head_dim", hidden // heads), "vocab_size": f.get("vocab_size"),
        "max_seq_len": max_pos, "norm_eps": f.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(f.get("tie_word_embeddings", False)), "bias": False,
        "rope": _rope(f, max_pos),
    }
    if LLAMA_ACTS[act]:
        data["hidden_act"] = LLAMA_ACTS[act]
    if family == "llama":
        data["attn_bias"] = bool(f.get("attention_bias", False))
        data["mlp_bias"] = bool(f.get("mlp_bias", False))
        f.get("pretraining_tp", 1)  # slices the same matmuls (transformers 4): the same function
    elif family == "mistral":
        _full_attention(f, "sliding_window", max_pos)
    else:  # qwen2: q, k and v carry biases, o and the MLP none
        data["qkv_bias"] = True
        if f.get("use_sliding_window", False):
            _full_attention(f, "sliding_window", max_pos)
        else:
            f.get("sliding_window", None)  # applies only with use_sliding_window
            f.get("max_window_layers", None)
        kinds = set(f.get("layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise f.refuse("layer_types", sorted(kinds), "only full_attention layers are supported")
    return data


def _full_attention(f: _Fields, key: str, max_pos: int) -> None:
    window = f.get(key, None)
    if window is not None and window < max_pos:
        raise f.refuse(key, window, f"sliding-window attention (shorter than max_position_embeddings "
                                    f"{max_pos}) is not implemented")


def _rope(f: _Fields, max_pos: int) -> dict:
    """rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x) -> RopeConfig data."""
    params = dict(f.get("rope_parameters", None) or {})
    legacy = dict(f.get("rope_scaling", None) or {})
    theta = f.get("rope_theta", None)
    key = "rope_parameters" if params else "rope_scaling"
    params = {**legacy, **params}
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    base = params.pop("rope_theta", None) or theta or 10000.0
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        raise f.refuse(f"{key}.partial_rotary_factor", f.cj.get(key), "partial rotary embeddings are not supported")
    if f.cj.get("partial_rotary_factor", 1.0) not in (None, 1.0):
        raise f.refuse("partial_rotary_factor", f.cj["partial_rotary_factor"], "not supported")
    f.used.add("partial_rotary_factor")
    if kind not in ROPE_KEYS:
        raise f.refuse(f"{key}.rope_type", kind, f"supported: {', '.join(ROPE_KEYS)}")
    for k in params:
        if k not in ROPE_KEYS[kind]:
            raise f.refuse(f"{key}.{k}", params[k], f"not a setting llmctl follows for rope_type {kind!r}")
    rope: dict = {"base": float(base)}
    if kind == "default":
        return rope
    orig = f.cj.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    f.used.add("original_max_position_embeddings")
    factor = params.get("factor")
    if factor is None and kind == "yarn":
        factor = max_pos / (orig or max_pos)
    rope.update(scaling=kind, factor=float(factor))
    if kind in ("llama3", "yarn"):
        rope["original_max_seq_len"] = int(orig or max_pos)
    if kind == "llama3":
        rope["low_freq_factor"] = float(params["low_freq_factor"])
        rope["high_freq_factor"] = float(params["high_freq_factor"])
    if kind == "yarn":
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        att = params.get("attention_factor")
        if att is None and mscale and mscale_all:
            import math

            def get(scale, m):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            att = get(rope["factor"], mscale) / get(rope["factor"], mscale_all)
        for ours, theirs in (("beta_fast", "beta_fast"), ("beta_slow", "beta_slow"), ("truncate", "truncate")):
            if params.get(theirs) is not None:
                rope[ours] = params[theirs]
        if att is not None:
            rope["attention_factor"] = float(att)
    return rope


def _gpt2(f: _Fields) -> dict:
    h = f.get("n_embd")
    act = f.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise f.refuse("activation_function", act, f"supported: {', '.join(GPT2_ACTS)}")
    f.only("scale_attn_weights", True)
    f.only("add_cross_attention", False)
    # transformers 4.x's eager attention in fp32 when true: the same function (fp32 already).
    f.get("reorder_and_upcast_attn", False)
    n_pos = f.get("n_positions")
    f.get("n_ctx", None)  # an older name of n_positions, no longer read by transformers
    for k in GPT2_SUMMARY:
        f.get(k, None)
    data = {"template": "gpt", "layers": f.get("n_layer"), "hidden": h, "ffn": f.get("n_inner", None) or 4 * h,
            "heads": f.get("n_head"), "vocab_size": f.get("vocab_size"), "max_seq_len": n_pos,
            "norm_eps": f.get("layer_norm_epsilon", 1e-5),
            "tie_embeddings": bool(f.get("tie_word_embeddings", True))}
    if GPT2_ACTS[act]:
        data["hidden_act"] = GPT2_ACTS[act]
    if f.get("scale_attn_by_inverse_layer_idx", False):
        data["attn_layer_scale"] = True
    return data


# --- export -----------------------------------------------------------------------------

LLAMA_ACT_OUT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                 "quick_gelu": "quick_gelu"}
GPT2_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu",
                "quick_gelu": "quick_gelu"}


def read_hf_config(p: Path):
    """(ModelConfig, config.json) of a Hugging Face folder, every field honoured or refused."""
    cfg_file = p / "config.json"
    try:
        cj = json.loads(cfg_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise LlmctlError(f"{cfg_file}: cannot read: {e}") from None
    except ValueError as e:
        raise LlmctlError(f"{cfg_file}: not valid JSON: {e}") from None
    return model_config_from_hf(cj, str(cfg_file)), cj


def family_of(cfg) -> str:
    """The transformers family that expresses `cfg` exactly."""
    if cfg.template == "gpt":
        return "gpt2"
    if cfg.bias_qkv and not cfg.bias_o and not cfg.bias_mlp:
        return "qwen2"
    return "llama"


def config_json(cfg) -> dict[str, Any]:
    """transformers' config.json for `cfg`, or an error naming what no family expresses."""
    fam = family_of(cfg)
    if fam == "gpt2":
        return _gpt2_json(cfg)
    if cfg.activation != "swiglu" or cfg.norm != "rmsnorm":
        raise LlmctlError(f"model {cfg.name}: a llama export needs swiglu + rmsnorm")
    if cfg.attn_layer_scale:
        raise LlmctlError(f"model {cfg.name}: attn_layer_scale has no Llama/Qwen2 equivalent")
    if fam == "llama" and cfg.bias_qkv != cfg.bias_o:
        raise LlmctlError(f"model {cfg.name}: q/k/v biases without o's (and MLP biases) is Qwen2's layout; "
                          "this mix has no transformers equivalent")
    r = cfg.rope
    rope: dict[str, Any] = {"rope_type": "default" if r.scaling == "none" else r.scaling, "rope_theta": r.base}
    max_pos = cfg.max_seq_len
    if r.scaling != "none":
        rope["factor"] = r.factor
        if r.scaling in ("llama3", "yarn"):
            from llmctl.model.transformer import rope_length

            # without original_max_seq_len, max_seq_len is the original and the table longer
            rope["original_max_position_embeddings"] = r.original_max_seq_len or cfg.max_seq_len
            max_pos = rope_length(cfg)
        elif r.scaling == "linear":
            from llmctl.model.transformer import rope_length

            max_pos = rope_length(cfg)
        if r.scaling == "llama3":
            rope["low_freq_factor"] = r.low_freq_factor or 1.0
            rope["high_freq_factor"] = r.high_freq_factor or 4.0
        if r.scaling == "yarn":
            for k in ("beta_fast", "beta_slow", "attention_factor", "truncate"):
                if getattr(r, k) is not None:
                    rope[k] = getattr(r, k)
    out = {
        "architectures": ["Qwen2ForCausalLM" if fam == "qwen2" else "LlamaForCausalLM"], "model_type": fam,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": max_pos, "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope, "tie_word_embeddings": bool(cfg.tie_embeddings),
        "hidden_act": LLAMA_ACT_OUT[cfg.act],
    }
    if fam == "llama":
        out.update(attention_bias=cfg.bias_o, mlp_bias=cfg.bias_mlp)
    else:
        if cfg.head_dim * cfg.heads != cfg.hidden:
            raise LlmctlError(f"model {cfg.name}: Qwen2 needs head_dim x heads = hidden")
        del out["head_dim"]
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.layers)
    return out


def _gpt2_json(cfg) -> dict[str, Any]:
    problems = []
    if cfg.kv_heads != cfg.heads:
        problems.append("grouped-query attention")
    if cfg.head_dim * cfg.heads != cfg.hidden:
        problems.append("head_dim*heads != hidden")
    if not (cfg.bias_qkv and cfg.bias_o and cfg.bias_mlp):
        problems.append("GPT-2 has biases on every linear layer")
    if cfg.norm != "layernorm" or cfg.activation != "gelu":
        problems.append("GPT-2 needs layernorm and a plain (not gated) MLP")
    if problems:
        raise LlmctlError(f"model {cfg.name}: no transformers architecture fits: {'; '.join(problems)}")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden, "n_layer": cfg.layers, "n_head": cfg.heads,
        "n_inner": cfg.ffn, "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps, "activation_function": GPT2_ACT_OUT[cfg.act],
        "tie_word_embeddings": bool(cfg.tie_embeddings), "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": bool(cfg.attn_layer_scale),
    }
