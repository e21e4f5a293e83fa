"""Bootstrap standard errors and perplexity aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmctl.eval import metrics as M


@pytest.mark.parametrize("p,n", [(0.5, 200), (0.2, 400), (0.9, 100)])
def test_bootstrap_stderr_of_accuracy_matches_the_binomial_formula(p, n):
    rng = np.random.default_rng(1)
    values = (rng.random(n) < p).astype(float)
    phat = values.mean()
    exact = math.sqrt(phat * (1 - phat) / n)
    est = M.bootstrap([values], M.mean, iters=4000, seed=3)
    assert abs(est - exact) / exact < 0.08, (est, exact)
    assert M.bootstrap([values], M.mean, iters=4000, seed=3) == est  # seeded: reproducible


def test_bits_per_byte_and_perplexity_of_a_uniform_byte_model():
    # A model uniform over 256 byte tokens, one token per byte: 8 bits per byte, perplexity 256.
    nll = np.array([10 * math.log(256), 30 * math.log(256)])
    tokens = np.array([10.0, 30.0])
    agg = M.perplexity_parts(nll, tokens, tokens.copy())
    assert agg["bits_per_byte"] == pytest.approx(8.0)
    assert agg["perplexity"] == pytest.approx(256.0)


def test_perplexity_weights_documents_by_tokens():
    # One long easy document and one short hard one: the corpus perplexity is near the easy one's.
    nll = np.array([100 * 1.0, 2 * 5.0])
    tokens = np.array([100.0, 2.0])
    agg = M.perplexity_parts(nll, tokens, tokens * 3)
    assert math.exp(1.0) < agg["perplexity"] < math.exp(1.2)
    errs = M.bootstrap([nll, tokens, tokens * 3], M.perplexity_parts, iters=200, seed=0)
    assert set(errs) == {"loss", "perplexity", "bits_per_byte"} and errs["loss"] > 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=50))
def test_bootstrap_is_zero_only_for_constant_samples(values):
    est = M.bootstrap([values], M.mean, iters=300, seed=0)
    if len(set(values)) == 1:
        assert est == 0.0
    else:
        assert est >= 0.0
    assert M.bootstrap([values[:1]], M.mean, iters=300, seed=0) is None  # one sample: undefined
