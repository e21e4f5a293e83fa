"""One request as the engine sees it: prompt, sampling settings, output so far, KV blocks."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

_ids = itertools.count()


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # OpenAI legacy completions: `logprobs` = how many top alternatives per token
    # (None: no logprobs at all); `echo` = also score and return the prompt.
    logprobs: Optional[int] = None
    echo: bool = False
    # OpenAI's logit adjustments: {token id: bias} added to the logits (-100 bans the token),
    # and the presence/frequency penalties over the tokens generated so far.
    logit_bias: Optional[dict] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # best_of > n: the engine sums each sample's log-probability so the best n can be kept.
    cumulative: bool = False
    # Only with LLMCTL_SERVE_TEST_HOOKS=1: a fault or a hold for this request (llmctl.serve.testhooks).
    test_hook: Optional[str] = None


class Sequence:
    """A request in flight. `num_computed` tokens of `tokens` have their K/V in the cache."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, request_id: Optional[str] = None):
        self.seq_id = next(_ids)
        self.request_id = request_id or f"req-{self.seq_id}"
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.output_ids: list[int] = []
        self.num_computed = 0
        self.blocks: list[int] = []
        self.block_hashes: list[bytes] = []  # chained hashes of its full blocks (prefix cache)
        self.arrival = time.monotonic()
        self.first_token_at: Optional[float] = None
        self.scheduled_at: Optional[float] = None  # first step that ran it (queue time)
        self.token_times: list[float] = []  # when each output token was sampled (inter-token latency)
        self.cumulative_logprob = 0.0  # with params.cumulative (best_of)
        self.index = 0  # the choice's place in its response (prompt * n + sample)
        self.prompt_index = 0  # which prompt of a list prompt
        self.prompt_source: Optional["Sequence"] = None  # a sibling sample whose prompt KV blocks to share
        self.last_token_at: Optional[float] = None
        self.finish_reason: Optional[str] = None
        self.error: Optional[str] = None  # why, when finish_reason is "error"
        self._text = ""         # detokenised output (stop sequences cut): see `text`
        self._text_len = 0      # how many output ids `_text` reflects
        self._text_lock = threading.Lock()
        self.detokenize = None  # set by the engine: ids -> str, to decode lazily
        self.emitted = 0        # characters of `text` already streamed
        self.generator = None   # torch.Generator when seeded
        self.preemptions = 0
        # With echo + logprobs: position -> (logprob of the prompt token there, top
        # [(id, logprob)]), filled during prefill; a dict so a recompute after
        # preemption overwrites instead of appending twice.
        self.prompt_logprobs: dict[int, tuple[float, list[tuple[int, float]]]] = {}
        self.output_logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    @property
    def text(self) -> str:
        """The output as text, decoded when asked for rather than after every token:
        decoding the whole output each step made detokenisation quadratic in its
        length, a cost only streaming and stop sequences need. The engine sets it
        where it must be exact (a stop sequence cut, EOS dropped) for the ids so far."""
        with self._text_lock:
            if self.detokenize is not None and self._text_len != len(self.output_ids):
                ids = list(self.output_ids)
                self._text, self._text_len = self.detokenize(ids), len(ids)
            return self._text

    @text.setter
    def text(self, value: str) -> None:
        with self._text_lock:
            self._text, self._text_len = value, len(self.output_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_at(self, i: int) -> int:
        """tokens[i] without building the list (the runner asks once per decode step)."""
        lp = len(self.prompt_ids)
        return self.prompt_ids[i] if i < lp else self.output_ids[i - lp]

    @property
    def remaining(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return len(self.prompt_ids) + len(self.output_ids) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
