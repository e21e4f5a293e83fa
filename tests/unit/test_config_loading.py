"""The config loader: every kind of bad input becomes 'file: key.path: problem'."""

from __future__ import annotations

import json

import pytest

from llmctl.config import KINDS, load, model_class
from llmctl.config.base import key_path
from llmctl.config.hardware import HardwareProfile
from llmctl.config.model import ModelConfig
from llmctl.config.train import TrainConfig
from llmctl.errors import ConfigError
from llmctl.plan.params import count_parameters

# The seed README's configuration examples, exactly as written there.
SEED_MODEL = """{
  "name": "llama-7b",
  "arch": "decoder-only",
  "layers": 32,
  "hidden": 4096,
  "ffn": 11008,
  "heads": 32,
  "vocab_size": 32000,
  "rope": {
    "base": 10000.0,
    "scaling": "linear"
  }
}"""

SEED_HARDWARE = """[gpu]
count = 8
[[gpu.devices]]
id = 0
name = "NVIDIA A100-SXM4-80GB"
memory_gb = 80.0

[interconnect]
intra_node = "NVLink"
inter_node = "InfiniBand"

[limits]
estimated_flops = 2.496e15
memory_bw_gbps = 15480
"""

SEED_TRAIN = """[model]
name = "llama-7b"
config_file = "configs/models/llama-7b.json"

[optimizer]
type = "adamw"
lr = 2e-4
betas = [0.9, 0.95]

[parallel]
strategy = "auto"
zero_stage = 2
micro_batch_size = 4
global_batch_size = 512
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_seed_model_example_parses_as_llama_7b(tmp_path):
    cfg = load("model", write(tmp_path, "llama-7b.json", SEED_MODEL))
    assert isinstance(cfg, ModelConfig)
    # rope given and no template: the llama template, with its defaults filled in
    assert (cfg.template, cfg.norm, cfg.activation, cfg.kv_heads, cfg.head_dim) == (
        "llama", "rmsnorm", "swiglu", 32, 128)
    assert cfg.rope.scaling == "linear"
    assert round(count_parameters(cfg).total / 1e9, 2) == 6.74


def test_seed_hardware_example_parses(tmp_path):
    hw = load("hardware", write(tmp_path, "a100x8.toml", SEED_HARDWARE))
    assert isinstance(hw, HardwareProfile)
    assert hw.gpu.count == 8 and hw.gpu.devices[0].name == "NVIDIA A100-SXM4-80GB"
    assert hw.limits.estimated_flops == 2.496e15 and hw.interconnect.intra_node == "NVLink"


def test_seed_training_example_parses(tmp_path):
    cfg = load("train", write(tmp_path, "train.toml", SEED_TRAIN))
    assert isinstance(cfg, TrainConfig)
    assert cfg.optimizer.betas == (0.9, 0.95) and cfg.parallel.zero_stage == 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load("model", tmp_path / "nope.json")
    assert "nope.json: file not found" in str(e.value)


def test_malformed_toml_names_line(tmp_path):
    p = write(tmp_path, "train.toml", "[model]\nname = \n")
    with pytest.raises(ConfigError) as e:
        load("train", p)
    assert str(p) in e.value.message and "malformed TOML" in e.value.message and "line 2" in e.value.message


def test_malformed_json_names_line_and_column(tmp_path):
    p = write(tmp_path, "m.json", '{"name": "x",\n "layers": }')
    with pytest.raises(ConfigError) as e:
        load("model", p)
    assert "malformed JSON" in e.value.message and "line 2" in e.value.message


def test_json_nan_is_rejected(tmp_path):
    p = write(tmp_path, "m.json", '{"name": "x", "layers": NaN}')
    with pytest.raises(ConfigError, match="NaN"):
        load("model", p)


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, "train.toml", SEED_TRAIN.replace("lr = 2e-4", "lr = 2e-4\nlearning_rate = 1"))
    with pytest.raises(ConfigError) as e:
        load("train", p)
    (problem,) = e.value.problems
    assert problem.startswith("optimizer.learning_rate: unknown key 'learning_rate' in [optimizer]")
    for valid in ("type", "lr", "betas", "eps", "weight_decay", "grad_clip"):
        assert valid in problem


def test_unknown_key_inside_list_of_tables(tmp_path):
    p = write(tmp_path, "hw.toml", SEED_HARDWARE.replace("memory_gb = 80.0", "memory_gb = 80.0\nmem = 1"))
    with pytest.raises(ConfigError) as e:
        load("hardware", p)
    assert e.value.problems[0].startswith("gpu.devices[0].mem: unknown key 'mem'")
    assert "memory_gb" in e.value.problems[0]


def test_unknown_key_inside_dict_of_tables(tmp_path):
    from llmctl.resources import data_dir

    text = (data_dir("site-configs") / "local.toml").read_text().replace("nodes = 1", "nodes = 1\ngpu = 2")
    with pytest.raises(ConfigError) as e:
        load("site", write(tmp_path, "local.toml", text))
    assert e.value.problems[0].startswith("partitions.local.gpu: unknown key 'gpu'")
    assert "gpus_per_node" in e.value.problems[0]


def test_wrong_types_each_reported_once(tmp_path):
    bad = json.loads(SEED_MODEL)
    bad["layers"] = "thirty-two"
    bad["heads"] = -1
    p = write(tmp_path, "m.json", json.dumps(bad))
    with pytest.raises(ConfigError) as e:
        load("model", p)
    problems = e.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("layers: ") and "integer" in problems[0] and "'thirty-two'" in problems[0]
    assert problems[1].startswith("heads: ") and "greater than 0" in problems[1]
    assert all(line.strip().startswith(f"{p}: ") for line in e.value.message.splitlines()[1:])


def test_missing_required_key(tmp_path):
    bad = json.loads(SEED_MODEL)
    del bad["hidden"]
    with pytest.raises(ConfigError) as e:
        load("model", write(tmp_path, "m.json", json.dumps(bad)))
    assert e.value.problems == ["hidden: required key is missing"]


def test_cross_field_rule_is_reported(tmp_path):
    bad = json.loads(SEED_MODEL)
    bad["kv_heads"] = 5
    with pytest.raises(ConfigError) as e:
        load("model", write(tmp_path, "m.json", json.dumps(bad)))
    assert "heads (32) must be a multiple of kv_heads (5)" in e.value.problems[0]


def test_top_level_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a table"):
        load("model", write(tmp_path, "m.json", "[1, 2]"))


def test_wrong_suffix(tmp_path):
    with pytest.raises(ConfigError, match="unsupported file type '.yaml'"):
        load("train", write(tmp_path, "t.yaml", "a: 1"))


def test_binary_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load("model", p)


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    with pytest.raises(ConfigError):
        load("model", write(tmp_path, "m.json", "[" * 100_000 + "]" * 100_000))


def test_key_path_formatting():
    assert key_path(("gpu", "devices", 3, "name")) == "gpu.devices[3].name"
    assert key_path(()) == "(top level)"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_has_a_json_schema_that_forbids_unknown_keys(kind):
    schema = model_class(kind).model_json_schema()
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]
