"""Numbers in config files: finite floats, real integers, sizes within bounds (issue 13, item 5)."""

from __future__ import annotations

import json
import math
import typing

import pytest
from pydantic import BaseModel

from llmctl.config import KINDS, load, model_class
from llmctl.config.base import validate_data
from llmctl.errors import ConfigError

MODEL = {"name": "m", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 100}
TRAIN = '[model]\nname = "m"\nconfig_file = "m.json"\n[optimizer]\nlr = {lr}\n'


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(tmp_path, kind, name, text):
    with pytest.raises(ConfigError) as e:
        load(kind, write(tmp_path, name, text))
    return e.value.problems


# --- floats: finite everywhere ---------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "+inf", "-inf", "nan"])
def test_train_lr_must_be_finite(tmp_path, value):
    # `llmctl schema train --check` accepted lr = inf (NaN was refused by gt=0 only by luck)
    (line,) = problems(tmp_path, "train", "t.toml", TRAIN.format(lr=value))
    assert line.startswith("optimizer.lr: ") and "finite" in line


def test_train_lr_has_an_upper_bound(tmp_path):
    # lr = 1e38 is finite, and crashed inside AdamW (its float32 step overflowed) with a traceback
    (line,) = problems(tmp_path, "train", "t.toml", TRAIN.format(lr="1e38"))
    assert line.startswith("optimizer.lr: ") and "(got 1e+38)" in line
    load("train", write(tmp_path, "ok.toml", TRAIN.format(lr="1e30")))  # what divergence tests use


def test_json_number_that_overflows_is_refused(tmp_path):
    # json.loads turns 1e400 into inf without a word
    doc = json.dumps({**MODEL, "norm_eps": 1}).replace('"norm_eps": 1', '"norm_eps": 1e400')
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert "1e400" in line and "too large" in line


def _models() -> list[type[BaseModel]]:
    """Every config model class reachable from the kinds `llmctl schema` knows."""
    seen: list[type[BaseModel]] = []

    def visit(ann: typing.Any) -> None:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann not in seen:
                seen.append(ann)
                for f in ann.model_fields.values():
                    visit(f.annotation)
            return
        for a in typing.get_args(ann):
            visit(a)

    for kind in KINDS:
        visit(model_class(kind))
    return seen


def _fields(scalar: type) -> list[tuple[type[BaseModel], str, typing.Any]]:
    """(model, field, annotation) for every field that holds `scalar` (directly or in a container)."""
    out = []
    for m in _models():
        for name, f in m.model_fields.items():
            ann = f.annotation
            args = set(typing.get_args(ann)) | {ann}
            for a in list(args):
                args |= set(typing.get_args(a))
            if scalar in args and bool not in args:
                out.append((m, name, ann))
    return out


def _hostile(ann: typing.Any, value: typing.Any) -> typing.Any:
    origin = typing.get_origin(ann)
    if origin is dict:
        return {"k": value}
    if origin in (list, tuple):
        return [value, value]
    if origin is typing.Union:
        return _hostile(next(a for a in typing.get_args(ann) if a is not type(None)), value)
    return value


FLOAT_FIELDS = _fields(float)
INT_FIELDS = _fields(int)


def test_the_walk_finds_the_fields():
    names = {(m.__name__, f) for m, f, _ in FLOAT_FIELDS}
    assert {("Optimizer", "lr"), ("Optimizer", "betas"), ("HardwareProfile", "measured"),
            ("RopeConfig", "base"), ("Partition", "memory_gb"), ("Limits", "estimated_flops")} <= names
    names = {(m.__name__, f) for m, f, _ in INT_FIELDS}
    assert {("ModelConfig", "layers"), ("Parallelism", "layers_per_stage"), ("Training", "seed")} <= names


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_is_finite(value):
    accepted = []
    for model, field, ann in FLOAT_FIELDS:
        if model.model_fields[field].json_schema_extra == {"allow_inf": True}:
            continue
        try:
            validate_data({field: _hostile(ann, value)}, model, "x.toml")
        except ConfigError as e:
            if any(p.startswith(field) and "finite" in p for p in e.problems):
                continue
        accepted.append(f"{model.__name__}.{field}")
    assert not accepted, f"non-finite {value} accepted by {accepted}"


# --- integers: real integers, and within bounds ---------------------------------

@pytest.mark.parametrize("value,words", [
    (True, "boolean"), (False, "boolean"), (2.0, "got 2.0"), (1e30, "got 1e+30"), (1e5, "got 100000.0"),
    ("32", "got '32'"),
])
def test_model_layers_must_be_an_integer(tmp_path, value, words):
    (line,) = problems(tmp_path, "model", "m.json", json.dumps({**MODEL, "layers": value}))
    assert line.startswith("layers: ") and "integer" in line and words in line


@pytest.mark.parametrize("value", [True, 3.0])
def test_every_int_field_refuses_bools_and_floats(value):
    accepted = []
    for model, field, ann in INT_FIELDS:
        try:
            validate_data({field: _hostile(ann, value)}, model, "x.toml")
        except ConfigError as e:
            if any(p.startswith(field) and "integer" in p for p in e.problems):
                continue
        accepted.append(f"{model.__name__}.{field}")
    assert not accepted, f"{value!r} accepted as an integer by {accepted}"


def test_bool_fields_refuse_numbers_and_words(tmp_path):
    doc = json.dumps({**MODEL, "bias": 1, "tie_embeddings": "yes"})
    lines = problems(tmp_path, "model", "m.json", doc)
    assert [x.split(":")[0] for x in lines] == ["bias", "tie_embeddings"]
    assert all("true or false" in x for x in lines)


@pytest.mark.parametrize("key,limit", [
    ("layers", 10_000), ("hidden", 2**20), ("ffn", 2**22), ("heads", 2**14), ("kv_heads", 2**14),
    ("head_dim", 2**14), ("vocab_size", 2**24), ("max_seq_len", 2**27),
])
def test_model_sizes_have_upper_bounds(tmp_path, key, limit):
    lines = problems(tmp_path, "model", "m.json", json.dumps({**MODEL, key: limit + 1}))
    assert any(x.startswith(f"{key}: ") and f"less than or equal to {limit} " in x for x in lines), lines


def test_the_largest_published_models_are_well_inside_the_bounds(tmp_path):
    # Llama 3.1 405B (126 layers, 16384 wide, 53248 ffn, 128 heads, 8 kv heads,
    # 128k vocab, 128k context) and Gemma's 256k vocabulary load.
    big = {"name": "llama-3.1-405b", "layers": 126, "hidden": 16384, "ffn": 53248, "heads": 128,
           "kv_heads": 8, "vocab_size": 262_144, "max_seq_len": 131_072, "rope": {"base": 500000.0}}
    cfg = load("model", write(tmp_path, "big.json", json.dumps(big)))
    assert cfg.layers == 126


def test_model_1e30_layers_no_longer_reaches_the_planner(tmp_path, cli):
    p = write(tmp_path, "m.json", json.dumps({**MODEL, "layers": 1e30}).replace("1e+30", "1e30"))
    r = cli("schema", "model", "--check", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "layers" in r.stderr and "integer" in r.stderr


@pytest.mark.parametrize("seed", [2**63, 2**70, -1])
def test_seeds_fit_64_bits(tmp_path, seed):
    text = TRAIN.format(lr="1e-4") + f"[training]\nseed = {seed}\n"
    lines = problems(tmp_path, "train", "t.toml", text)
    assert any(x.startswith("training.seed: ") for x in lines), lines


def test_huge_integer_anywhere_is_refused(tmp_path):
    # JSON integers have no size limit; TOML's are 64-bit. Config files keep to 64 bits.
    doc = json.dumps({**MODEL, "rope": {"base": 10**30}})
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert line.startswith("rope.base: ") and "64-bit" in line


def test_schema_check_cli_refuses_inf(tmp_path, cli):
    p = write(tmp_path, "t.toml", TRAIN.format(lr="inf"))
    r = cli("schema", "train", "--check", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}: optimizer.lr:" in r.stderr and "finite" in r.stderr
