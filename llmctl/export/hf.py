"""Hugging Face layout: llmctl checkpoint <-> `from_pretrained` folder.

An artifact folder is what `transformers.AutoModelForCausalLM.from_pretrained`
reads: `config.json` (llama -> LlamaForCausalLM, gpt -> GPT2LMHeadModel, the
closest transformers architecture), `model.safetensors` in transformers' tensor
names, `tokenizer.json` + `tokenizer_config.json`, and our `llmctl-manifest.json`
(sha256 of every file, the source checkpoint, the llmctl model config). The same
reader loads a Llama folder that transformers itself saved, so `serve` and
`export --artifact` accept both.

An export first checks the checkpoint's files against the digests in its state.json
(`verify=False`: `--skip-verify`), and refuses weights that hold NaN or infinity, or
that overflow the export dtype, naming the tensor. The folder is written beside its
destination and renamed into place: a full disk is one line (the file, the space
left) and leaves nothing behind.

Both directions are one table of names; GPT-2 stores its linear layers as Conv1D
((in, out), q/k/v fused), hence the transposes and the split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.export.families import read_hf_config
from llmctl.fsutil import atomic_write_text, writing

MANIFEST = "llmctl-manifest.json"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# A plain role-tagged chat format: the tiny models have no chat training, so any
# unambiguous format serves; it is written into tokenizer_config.json so that
# transformers' apply_chat_template renders the same text as our server.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def render_chat(messages: list[dict[str, str]]) -> str:
    """CHAT_TEMPLATE in Python (the server must not need Jinja for every request)."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


# --- names -----------------------------------------------------------------------

def _llama_names(cfg) -> dict[str, str]:
    """llmctl name -> transformers name."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["head.weight"] = "lm_head.weight"
    for i in range(cfg.layers):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            names[f"{p}attn.{a}.weight"] = f"{q}self_attn.{b}.weight"
            if cfg.bias_o if a == "wo" else cfg.bias_qkv:
                names[f"{p}attn.{a}.bias"] = f"{q}self_attn.{b}.bias"
        for a in ("gate", "up", "down"):
            names[f"{p}mlp.{a}.weight"] = f"{q}mlp.{a}_proj.weight"
            if cfg.bias_mlp:
                names[f"{p}mlp.{a}.bias"] = f"{q}mlp.{a}_proj.bias"
        names[f"{p}norm1.weight"] = f"{q}input_layernorm.weight"
        names[f"{p}norm2.weight"] = f"{q}post_attention_layernorm.weight"
    return names


def config_json(cfg) -> dict[str, Any]:
    """transformers' config.json for `cfg` (llmctl.export.families)."""
    from llmctl.export.families import config_json as make

    return make(cfg)


def _same(ts):
    return ts[0]


def _transpose(ts):
    return ts[0].t()


def _cat(ts):
    import torch

    return torch.cat(ts, 0)


def _cat_transpose(ts):
    import torch

    return torch.cat(ts, 0).t()


def export_plan(cfg) -> list[tuple[str, list[str], Any]]:
    """(transformers name, llmctl names, how) for every tensor of the export: `how` makes the
    transformers tensor from the llmctl ones (GPT-2's Conv1D is (in, out), q/k/v fused)."""
    if cfg.template == "llama":
        return [(theirs, [ours], _same) for ours, theirs in _llama_names(cfg).items()]
    plan = [("transformer.wte.weight", ["tok_emb.weight"], _same),
            ("transformer.wpe.weight", ["pos_emb.weight"], _same),
            ("transformer.ln_f.weight", ["norm.weight"], _same),
            ("transformer.ln_f.bias", ["norm.bias"], _same)]
    for i in range(cfg.layers):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            plan.append((f"{q}{theirs}.weight", [f"{p}{ours}.weight"], _same))
            plan.append((f"{q}{theirs}.bias", [f"{p}{ours}.bias"], _same))
        plan.append((f"{q}attn.c_attn.weight", [f"{p}attn.{n}.weight" for n in ("wq", "wk", "wv")],
                     _cat_transpose))
        plan.append((f"{q}attn.c_attn.bias", [f"{p}attn.{n}.bias" for n in ("wq", "wk", "wv")], _cat))
        for ours, theirs in (("attn.wo", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            plan.append((f"{q}{theirs}.weight", [f"{p}{ours}.weight"], _transpose))
            plan.append((f"{q}{theirs}.bias", [f"{p}{ours}.bias"], _same))
    if not cfg.tie_embeddings:
        plan.append(("lm_head.weight", ["head.weight"], _same))
    return plan


def to_hf_state(cfg, state: dict) -> dict:
    """llmctl tensors -> transformers tensors (contiguous, no shared storage)."""
    return {theirs: how([state[n] for n in ours]).contiguous().clone()
            for theirs, ours, how in export_plan(cfg)}


def from_hf_state(cfg, hf: dict) -> dict:
    """transformers tensors -> llmctl tensors (the inverse of to_hf_state)."""
    out = {}
    if cfg.template == "llama":
        names = _llama_names(cfg)
        for ours, theirs in names.items():
            if theirs not in hf:
                raise LlmctlError(f"tensor {theirs} missing from the artifact")
            out[ours] = hf[theirs]
        if cfg.tie_embeddings:
            out["head.weight"] = out["tok_emb.weight"]
        # A tensor the config does not account for (a bias it says is not there) is refused,
        # never dropped; a tied head may be saved as well.
        extra = sorted(set(hf) - set(names.values()) - {"lm_head.weight"})
        extra = [k for k in extra if not k.endswith("rotary_emb.inv_freq")]
        if extra:
            raise LlmctlError(f"tensor {extra[0]} in the artifact is not part of the model its config.json "
                              f"describes ({len(extra)} such tensors)")
        return out
    h = cfg.hidden
    out["tok_emb.weight"] = hf["transformer.wte.weight"]
    if cfg.tie_embeddings:
        out["head.weight"] = out["tok_emb.weight"]
    elif "lm_head.weight" not in hf:
        raise LlmctlError("tensor lm_head.weight missing from the artifact (tie_word_embeddings is false)")
    else:
        out["head.weight"] = hf["lm_head.weight"]
    out["pos_emb.weight"] = hf["transformer.wpe.weight"]
    out["norm.weight"], out["norm.bias"] = hf["transformer.ln_f.weight"], hf["transformer.ln_f.bias"]
    for i in range(cfg.layers):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"{p}{ours}.weight"], out[f"{p}{ours}.bias"] = hf[f"{q}{theirs}.weight"], hf[f"{q}{theirs}.bias"]
        w, b = hf[f"{q}attn.c_attn.weight"].t(), hf[f"{q}attn.c_attn.bias"]
        for j, n in enumerate(("wq", "wk", "wv")):
            # copies, not views: q, k and v sharing c_attn's storage made save_model refuse them
            out[f"{p}attn.{n}.weight"] = w[j * h:(j + 1) * h].clone()
            out[f"{p}attn.{n}.bias"] = b[j * h:(j + 1) * h].clone()
        for ours, theirs in (("attn.wo", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[f"{p}{ours}.weight"] = hf[f"{q}{theirs}.weight"].t().contiguous()
            out[f"{p}{ours}.bias"] = hf[f"{q}{theirs}.bias"]
    return out


def model_config_from_hf(cj: dict, where: str):
    """A ModelConfig from a transformers config.json: every field honoured or refused
    (llmctl.export.families)."""
    from llmctl.export.families import model_config_from_hf as read

    return read(cj, where)


# --- export ----------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint folder, run folder) from a checkpoint, a checkpoints/ folder or a run folder."""
    from llmctl.train.checkpoint import MODEL, STATE, Checkpointer

    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise LlmctlError(f"{p}: checkpoint not found")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if not (p / MODEL).is_file() and not (p / STATE).is_file():
        latest = Checkpointer(p).latest()
        if latest is None:
            raise LlmctlError(f"{p}: no checkpoint here (no {STATE}, no `latest` pointer)")
        p = latest
    run = next((q for q in p.parents if (q / "config.toml").is_file()), None)
    if run is None:
        raise LlmctlError(f"{p}: cannot find the run folder (with config.toml) above the checkpoint")
    return p, run


def _stage(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise LlmctlError(f"{out}: exists and is not empty", hint="choose a new --out folder")
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _writing(tmp):
        tmp.mkdir(parents=True)
    return tmp


def _writing(path: Path):
    """A write the operating system refuses (a full disk): one line naming the file."""
    return writing(path, "export", "; nothing was exported")


def _refuse_nonfinite(tensors: dict, where: str, dtype: Optional[str] = None) -> None:
    """An error naming the first tensor that holds NaN or infinity (after conversion to
    `dtype`, when given: fp16 overflows beyond 65504)."""
    from llmctl.train.nonfinite import nonfinite_tensors

    bad = nonfinite_tensors(tensors.items())
    if not bad:
        return
    name, count = bad[0]
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    if dtype is None:
        raise LlmctlError(f"{where}: tensor {name} holds {count} non-finite values (NaN or inf){more}; "
                          "refusing to export it",
                          hint="export an earlier checkpoint (step-* folders beside it)")
    raise LlmctlError(f"{where}: tensor {name} holds {count} values that overflow {dtype}{more}; "
                      "refusing to export it", hint="export with --dtype bf16 or fp32")


def _finish(tmp: Path, out: Path, manifest: dict) -> None:
    manifest["files"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def quantize_int8(hf: dict) -> dict:
    """Weight-only int8: every projection weight (not embeddings, norms or the head)
    becomes int8 with one fp32 scale per output channel (absmax / 127), stored as
    NAME_scale. Llama's nn.Linear is (out, in); GPT-2's Conv1D is (in, out)."""
    import torch

    out = {}
    for name, t in hf.items():
        conv1d = name.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
        if t.dim() == 2 and (conv1d or name.endswith("proj.weight")):
            scale = t.float().abs().amax(dim=0 if conv1d else 1, keepdim=True).clamp(min=1e-12) / 127.0
            out[name] = (t.float() / scale).round().clamp(-127, 127).to(torch.int8)
            out[name + "_scale"] = scale
        else:
            out[name] = t
    return out


def dequantize_int8(hf: dict, dtype) -> dict:
    return {k: (v.float() * hf[k + "_scale"]).to(dtype) if k + "_scale" in hf else v
            for k, v in hf.items() if not k.endswith("_scale")}


def export_checkpoint(checkpoint: str, out: str, dtype: str = "bf16", quantize: Optional[str] = None,
                      verify: bool = True) -> Path:
    """Write a transformers-loadable folder from an llmctl checkpoint; returns it.

    Any checkpoint: one process's model.safetensors or a distributed run's DCP shards
    (DDP, FSDP2, ZeRO, tp, pp); read and written one tensor at a time. `verify` False
    exports a checkpoint whose files do not match its state.json digests."""
    from llmctl.parallel.checkpoint import Source
    from llmctl.train.checkpoint import STATE, check_files, read_state
    from llmctl.train.setup import load_run

    ckpt, run = find_checkpoint(checkpoint)
    setup = load_run(run)
    cfg = setup.model_cfg
    if (ckpt / STATE).is_file():
        check_files(ckpt, read_state(ckpt), verify)
    try:
        src = Source(ckpt)
        stored = set(src.model_names())
    except LlmctlError:
        raise
    except Exception as e:  # safetensors, DCP and DeepSpeed readers raise their own kinds
        raise LlmctlError(f"{ckpt}: cannot load: {' '.join(str(e).split())[:300]}") from None
    reader = _source_reader(src, stored, cfg, str(ckpt))
    tok_file = setup.data_dir / "tokenizer.json"
    eos_id = setup.data_meta["tokenizer"].get("eos_id")
    return _write(cfg, reader, out, dtype, tok_file, eos_id,
                  {"source_checkpoint": str(ckpt), "source_run": str(run), "source_format": src.kind}, quantize)


def _source_reader(src, stored: set, cfg, where: str):
    """(names -> tensors) over a checkpoint Source; a tied head is the embedding."""
    def read(names: list[str]) -> list:
        keys = []
        for n in names:
            if n not in stored and n == "head.weight" and cfg.tie_embeddings:
                n = "tok_emb.weight"
            if n not in stored:
                raise LlmctlError(f"{where}: tensor {n} missing from the checkpoint",
                                  hint="is this checkpoint of the run's model config?")
            keys.append(f"model.{n}")
        got = src.read(keys)
        return [got[k] for k in keys]
    return read


def write_artifact(cfg, state: dict, out: str | Path, dtype: str, tok_file: Optional[Path],
                   eos_id: Optional[int], source: dict, quantize: Optional[str] = None) -> Path:
    """Write llmctl tensors `state` of model `cfg` as a transformers folder at `out` (atomically)."""
    if cfg.tie_embeddings and "head.weight" not in state:
        state = {**state, "head.weight": state["tok_emb.weight"]}
    return _write(cfg, lambda names: [state[n] for n in names], out, dtype, tok_file, eos_id, source, quantize)


def _entries(cfg, read, dtype: str, quantize: Optional[str], where: str) -> list:
    """The export's tensors as stream entries: shapes from meta tensors, data made on demand,
    each source checked for NaN/inf and each result for overflow as it is made."""
    import torch

    from llmctl.export.stream import Entry

    tdtype = getattr(torch, DTYPES[dtype])
    entries = []
    for theirs, ours, how in export_plan(cfg):
        metas = [torch.empty(s, dtype=torch.float32, device="meta") for s in _shapes(cfg, ours)]
        shape = tuple(how(metas).shape)

        def make(theirs=theirs, ours=ours, how=how):
            ts = read(ours)
            for n, t in zip(ours, ts):
                _refuse_nonfinite({n: t}, where)
            return how([t.float() for t in ts]).to(tdtype).contiguous()

        if quantize == "int8" and _quantized(theirs, len(shape)):
            conv1d = theirs.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
            scale_shape = (1, shape[1]) if conv1d else (shape[0], 1)

            def q(make=make, theirs=theirs):
                t = make()
                _refuse_nonfinite({theirs: t}, f"export to {dtype}", dtype)
                return quantize_int8({theirs: t})[theirs]

            def s(make=make, theirs=theirs):
                return quantize_int8({theirs: make()})[theirs + "_scale"]

            entries.append(Entry(theirs, shape, torch.int8, q))
            entries.append(Entry(theirs + "_scale", scale_shape, torch.float32, s))
            continue

        def checked(make=make, theirs=theirs):
            t = make()
            _refuse_nonfinite({theirs: t}, f"export to {dtype}", dtype)
            return t

        entries.append(Entry(theirs, shape, tdtype, checked))
    return entries


def _quantized(name: str, dims: int) -> bool:
    conv1d = name.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
    return dims == 2 and (conv1d or name.endswith("proj.weight"))


def _shapes(cfg, names: list[str]) -> list[tuple[int, ...]]:
    """The llmctl shapes of these tensors, from a model built on the meta device."""
    import torch

    from llmctl.model.transformer import Transformer

    key = json.dumps(cfg.to_data(), sort_keys=True)
    if _SHAPES.get("key") != key:
        with torch.device("meta"):
            model = Transformer(cfg)
        _SHAPES.clear()
        _SHAPES.update({"key": key, **{k: tuple(v.shape) for k, v in model.state_dict().items()}})
    return [_SHAPES[n] for n in names]


_SHAPES: dict = {}


def _write(cfg, read, out: str | Path, dtype: str, tok_file: Optional[Path], eos_id: Optional[int],
           source: dict, quantize: Optional[str] = None) -> Path:
    from llmctl.export.stream import write_sharded

    cj = config_json(cfg)
    cj.update({"torch_dtype": DTYPES[dtype], "eos_token_id": eos_id, "bos_token_id": eos_id})
    if quantize == "int8":
        # Not a transformers quantisation method: such a folder is for `llmctl serve`.
        cj["quantization_config"] = {"quant_method": "llmctl-int8", "weights": "per-row absmax"}
    where = source.get("source_checkpoint", "the model")
    entries = _entries(cfg, read, dtype, quantize, where)
    out_p = Path(out).expanduser().absolute()
    tmp = _stage(out_p)
    try:
        with _writing(tmp / "model.safetensors"):
            write_sharded(tmp, entries, {"format": "pt"})
        with _writing(tmp / "config.json"):
            (tmp / "config.json").write_text(json.dumps(cj, indent=2) + "\n", encoding="utf-8")
        with _writing(tmp / "generation_config.json"):
            (tmp / "generation_config.json").write_text(json.dumps(
                {"eos_token_id": eos_id, "bos_token_id": eos_id}) + "\n", encoding="utf-8")
        if tok_file is not None:
            _write_tokenizer(tmp, Path(tok_file), eos_id, cfg.max_seq_len)
        _finish(tmp, out_p, {"format": "hf", "dtype": dtype, "quantize": quantize, **source,
                             "model_config": cfg.to_data()})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_p


def _write_tokenizer(tmp: Path, tok_file: Path, eos_id: Optional[int], max_len: int) -> None:
    if not tok_file.is_file():
        return
    from tokenizers import Tokenizer

    with _writing(tmp / "tokenizer.json"):
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
    eos = Tokenizer.from_file(str(tok_file)).id_to_token(eos_id) if eos_id is not None else None
    with _writing(tmp / "tokenizer_config.json"):
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
            "model_max_length": max_len, "chat_template": CHAT_TEMPLATE}, indent=2) + "\n",
            encoding="utf-8")


# --- loading ---------------------------------------------------------------------

class Artifact:
    """A loaded artifact: model (eval mode), its ModelConfig, tokenizer (or None), eos id."""

    def __init__(self, model, cfg, tokenizer, eos_id: Optional[int], path: Path):
        self.model, self.cfg, self.tokenizer, self.eos_id, self.path = model, cfg, tokenizer, eos_id, path

    @property
    def name(self) -> str:
        return self.path.name


def read_hf_folder(p: Path, dtype: str = "fp32"):
    """(ModelConfig, llmctl tensors, config.json) of a Hugging Face folder."""
    import torch
    from safetensors.torch import load_file

    cfg, cj = read_hf_config(p)
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise LlmctlError(f"{p}: no *.safetensors weights")
    hf: dict = {}
    for f in files:
        hf.update(load_file(str(f)))
    tdtype = getattr(torch, DTYPES.get(dtype, "float32"))
    qmethod = (cj.get("quantization_config") or {}).get("quant_method")
    if qmethod == "llmctl-int8":
        hf = dequantize_int8(hf, tdtype)
    elif qmethod is not None:
        raise LlmctlError(f"{p / 'config.json'}: quantization method {qmethod!r} is not supported")
    return cfg, from_hf_state(cfg, hf), cj


def load_artifact(path: str | Path, dtype: str = "fp32", device: str = "cpu") -> Artifact:
    """Load a Hugging Face folder (ours, or a Llama/GPT-2 one transformers saved)."""
    import torch

    from llmctl.model.transformer import Transformer

    p = Path(path).expanduser().absolute()
    cfg_file = p / "config.json"
    if not cfg_file.is_file() and ((p / "checkpoints").is_dir() or (p / "state.json").is_file()
                                   or (p / "latest").is_file()):
        return _load_checkpoint_artifact(p, dtype, device)
    if not cfg_file.is_file():
        raise LlmctlError(f"{p}: not an artifact folder (no config.json)",
                          hint="make one with `llmctl export --checkpoint RUN --out artifacts/NAME`")
    cfg, state, cj = read_hf_folder(p, dtype)
    tdtype = getattr(torch, DTYPES.get(dtype, "float32"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict({k: v.to(tdtype) for k, v in state.items()},
                                                strict=False, assign=True)
    if cfg.tie_embeddings:
        model.head.weight = model.tok_emb.weight
    missing = [m for m in missing if m != "head.weight" or not cfg.tie_embeddings]
    if missing:
        raise LlmctlError(f"{p}: weights missing for {missing[:5]}")
    if model.rope_cos is not None:  # buffers were on meta: recompute them
        from llmctl.model.transformer import rope_cache

        length = model.rope_cos.shape[0]
        cos, sin = rope_cache(cfg, length)
        model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    model = model.to(tdtype).eval()
    tokenizer = None
    if (p / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(p / "tokenizer.json"))
    eos_id = cj.get("eos_token_id")
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    return Artifact(model, cfg, tokenizer, eos_id, p)


def _load_checkpoint_artifact(path: Path, dtype: str, device: str) -> Artifact:
    """A training checkpoint (a run, its checkpoints/ or a step folder, any format) served as
    it is: the run's model config and tokenizer, its weights read in place."""
    import torch

    from llmctl.model.transformer import Transformer
    from llmctl.parallel.checkpoint import load_weights
    from llmctl.train.checkpoint import STATE, check_files, read_state
    from llmctl.train.setup import load_run

    ckpt, run = find_checkpoint(path)
    setup = load_run(run)
    if (ckpt / STATE).is_file():
        check_files(ckpt, read_state(ckpt))
    model = Transformer(setup.model_cfg).to(device)
    load_weights(ckpt, model)
    model = model.to(getattr(torch, DTYPES.get(dtype, "float32"))).eval()
    tokenizer = None
    tok_file = setup.data_dir / "tokenizer.json"
    if tok_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tok_file))
    return Artifact(model, setup.model_cfg, tokenizer, setup.data_meta["tokenizer"].get("eos_id"), run)


def import_artifact(artifact: str, out: str) -> Path:
    """`export --artifact`: a transformers folder -> llmctl model.json + model.safetensors."""
    from safetensors.torch import save_model

    art = load_artifact(artifact)
    out_p = Path(out).expanduser().absolute()
    tmp = _stage(out_p)
    try:
        with _writing(tmp / "model.safetensors"):
            save_model(art.model, str(tmp / "model.safetensors"))
        with _writing(tmp / "model.json"):
            (tmp / "model.json").write_text(json.dumps(art.cfg.to_data(), indent=2) + "\n", encoding="utf-8")
        # the tokenizer travels with the model: vocabulary, special tokens, chat template
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json"):
            if (art.path / name).is_file():
                with _writing(tmp / name):
                    shutil.copyfile(art.path / name, tmp / name)
        _finish(tmp, out_p, {"format": "llmctl", "source_artifact": str(art.path)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_p
