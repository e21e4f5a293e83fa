"""Parameter counts against published figures."""

from __future__ import annotations

import pytest

from llmctl.config.model import ModelConfig
from llmctl.plan.params import count_parameters
from llmctl.presets import MODELS, model_fields


def model(**kw) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", **kw})


@pytest.mark.parametrize("size,published_b", [("7b", 6.74), ("13b", 13.0), ("70b", 69.0)])
def test_llama2_published_counts(size, published_b):
    # Touvron et al. 2023 / Meta's model cards: 6,738,415,616; 13,015,864,320; 68,976,648,192.
    n = count_parameters(model(**model_fields("llama", size))).total
    assert round(n / 1e9, 2 if size == "7b" else 1) == published_b


def test_llama2_7b_exact():
    # The exact count of the released checkpoint (sum of numel over consolidated.00.pth).
    assert count_parameters(model(**model_fields("llama", "7b"))).total == 6_738_415_616


# Narayanan et al. 2021, Table 1: (billions, layers, hidden, heads) with V = 51200, s = 2048.
NARAYANAN = [(1.7, 24, 2304, 24), (3.6, 30, 3072, 32), (7.5, 36, 4096, 32), (18.4, 40, 6144, 48),
             (39.1, 48, 8192, 64), (76.1, 60, 10240, 80), (145.6, 80, 12288, 96),
             (310.1, 96, 16384, 128), (529.6, 105, 20480, 128), (1008.0, 128, 25600, 160)]


@pytest.mark.parametrize("billions,layers,hidden,heads", NARAYANAN)
def test_narayanan_table1_as_printed(billions, layers, hidden, heads):
    # The table prints billions to one decimal; the count must round to that figure,
    # and land within 1% wherever the rounding itself allows it (>= 7.5B).
    cfg = model(template="gpt", layers=layers, hidden=hidden, heads=heads, vocab_size=51200, max_seq_len=2048)
    n = count_parameters(cfg).total / 1e9
    assert round(n, 1) == billions
    if billions >= 7.5:
        assert abs(n - billions) / billions < 0.01


def test_gpt_matches_narayanan_equation_2_plus_final_norm():
    l, h, V, s = 36, 4096, 51200, 2048
    cfg = model(template="gpt", layers=l, hidden=h, heads=32, vocab_size=V, max_seq_len=s)
    eq2 = 12 * l * h * h * (1 + 13 / (12 * h) + (V + s) / (12 * l * h))
    assert count_parameters(cfg).total == round(eq2) + 2 * h  # eq. 2 leaves out the final LayerNorm


def test_gqa_shrinks_only_kv_projections():
    mha = count_parameters(model(template="llama", layers=1, hidden=512, heads=8, ffn=1024, vocab_size=10))
    gqa = count_parameters(model(template="llama", layers=1, hidden=512, heads=8, kv_heads=2, ffn=1024,
                                 vocab_size=10))
    # k and v projections go from 512x512 to 512x128 each
    assert mha.per_layer - gqa.per_layer == 2 * (512 * 512 - 512 * 128)


def test_tied_head_counted_once():
    untied = count_parameters(model(template="llama", layers=2, hidden=64, heads=4, vocab_size=1000))
    tied = count_parameters(model(template="llama", layers=2, hidden=64, heads=4, vocab_size=1000,
                                  tie_embeddings=True))
    assert untied.total - tied.total == 1000 * 64


@pytest.mark.parametrize("template,size", sorted(MODELS))
def test_every_preset_is_valid_and_near_its_label(template, size):
    n = count_parameters(model(**model_fields(template, size))).total
    label = {"tiny": 1.3e6, "125m": 125e6, "1b": 1.1e9, "7b": 7e9, "13b": 13e9, "30b": 30e9, "70b": 70e9,
             "0.5b": 0.5e9, "1.5b": 1.5e9, "3b": 3e9, "8b": 8e9, "14b": 14e9, "32b": 32e9, "72b": 72e9,
             "405b": 405e9}[size]
    assert 0.7 * label < n < 1.3 * label


# Exact totals of the released weights (each model's model.safetensors.index.json total_size
# over 2 bytes per bf16 parameter), and the rounded figure its model card or paper prints.
RELEASED = {
    ("llama3", "1b"): 1_235_814_400, ("llama3", "3b"): 3_212_749_824, ("llama3", "8b"): 8_030_261_248,
    ("llama3", "70b"): 70_553_706_496, ("llama3", "405b"): 405_853_388_800, ("mistral", "7b"): 7_248_023_552,
    ("qwen2.5", "0.5b"): 494_032_768, ("qwen2.5", "1.5b"): 1_543_714_304, ("qwen2.5", "3b"): 3_085_938_688,
    ("qwen2.5", "7b"): 7_615_616_512, ("qwen2.5", "14b"): 14_770_033_664, ("qwen2.5", "32b"): 32_763_876_352,
    ("qwen2.5", "72b"): 72_706_203_648,
}


@pytest.mark.parametrize("template,size", sorted(RELEASED))
def test_newer_families_match_their_released_and_published_counts(template, size):
    from llmctl.presets import PUBLISHED_B

    n = count_parameters(model(**model_fields(template, size))).total
    assert n == RELEASED[(template, size)]
    # the model cards round (Qwen2.5-32B's card says 32.5B for its 32.76B weights): within 1%
    assert abs(n / 1e9 - PUBLISHED_B[(template, size)]) <= 0.01 * PUBLISHED_B[(template, size)]
