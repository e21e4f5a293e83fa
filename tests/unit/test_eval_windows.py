"""How every LM backend cuts text: rolling perplexity windows predict each token
exactly once and never exceed the context (an endpoint must be sent every token
it scores); loglikelihood requests keep the continuation and fit the context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmctl.errors import LlmctlError
from llmctl.eval.lm import LM


class CharLM(LM):
    """Tokens are characters' code points; eos is 0."""

    def __init__(self, max_len: int):
        self.max_len, self.eos_id = max_len, 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@given(n=st.integers(0, 300), max_len=st.integers(2, 40))
def test_windows_predict_each_token_once_within_the_context(n, max_len):
    lm = CharLM(max_len)
    ids = list(range(1, n + 1))
    windows = lm.rolling_windows(ids)
    predicted = [t for w in windows for t in w[1:]]
    assert predicted == ids
    assert all(2 <= len(w) <= max_len for w in windows)
    # Each window starts where the previous one's predictions ended (its first token is context).
    for a, b in zip(windows, windows[1:]):
        assert b[0] == a[-1]
    if ids:
        assert windows[0][0] == lm.eos_id


@given(ctx=st.text(st.characters(min_codepoint=97, max_codepoint=122), max_size=80),
       cont=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=80),
       max_len=st.integers(2, 64))
def test_scoring_ids_keep_the_continuation_and_fit(ctx, cont, max_len):
    lm = CharLM(max_len)
    ids, n = lm.scoring_ids(ctx, cont)
    assert len(ids) <= max_len and 1 <= n <= len(ids) - 1
    assert ids[-n:] == lm.encode(cont)[-n:]
    full = [0] + lm.encode(ctx) + lm.encode(cont)
    assert ids == full[-len(ids):]


def test_empty_continuation_is_an_error():
    with pytest.raises(LlmctlError, match="empty continuation"):
        CharLM(8).scoring_ids("abc", "")
