"""The engine: waiting/running queues, one scheduler, the paged runner, sampling.

`step()` asks the scheduler for a batch, runs it, samples one token for every
sequence whose chunk reached the end of what it knows, applies the stop rules
(eos, max_tokens, stop strings, context length) and frees finished sequences'
blocks. It is single-threaded by design: the HTTP server runs it in one thread
and talks to it through `submit`/`abort`, which only enqueue.

A failure belongs to one request where it can: an exception while admitting a
sequence or handling its sampled token fails that sequence alone (finish reason
"error", `seq.error` says why, its KV blocks freed); a forward pass that raises
is re-run one chunk at a time, so only the chunks that fail alone fail. Only
when the engine cannot be shown to work afterwards (the scheduler raised, every
chunk and then a one-token probe failed, or a tensor-parallel step broke the
ranks' lockstep) does `step` raise `EngineFailure`: its state is unknown and the
caller must not step it again.

Prefix caching (on by default): before each schedule, the waiting sequences the
step could admit take the cached KV blocks of their longest cached prefix
(llmctl.serve.kvcache) and so compute only the rest; after each pass the blocks
that became full are filed for later requests. A waiting sequence whose next
uncached block is one that a sequence ahead of it is about to compute (the same
system prompt or few-shot header arriving in a burst) is held back for that step,
to take the block once it is there instead of computing it again alongside.
Sequences that score their prompt (echo + logprobs) compute it all themselves.

    engine = Engine.from_artifact(load_artifact("artifacts/tiny"), scheduler="vllm-like")
    outs = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=8, temperature=0))
"""

from __future__ import annotations

import collections
import queue
import time
from typing import Optional

from llmctl.serve.sequence import SamplingParams, Sequence


def paged_attention_for(mode: str, device) -> str:
    """ServeConfig `paged_attention` as the runner takes it: "auto" on a GPU is gather (the
    blockwise path's many small ops cost kernel launches there; docs/performance.md); on a
    CPU it stays "auto", which the runner decides per decode group by context length, as
    measured (llmctl.serve.runner.BLOCKWISE_FROM)."""
    if mode != "auto":
        return mode
    return "gather" if getattr(device, "type", str(device)).startswith("cuda") else "auto"


class EngineFailure(RuntimeError):
    """The engine's state is unknown: fail what it holds and build a new one."""


class Engine:
    def __init__(self, model, tokenizer=None, eos_id: Optional[int] = None, scheduler: str = "vllm-like",
                 max_batch_tokens: int = 8192, max_seqs: int = 256, block_size: int = 16,
                 num_blocks: Optional[int] = None, prefix_caching: bool = True, compile: bool = False,
                 paged_attention: str = "auto"):
        from llmctl.serve.kvcache import PagedKVCache
        from llmctl.serve.runner import PagedRunner
        from llmctl.serve.scheduling import get_scheduler

        cfg = model.cfg
        self.model, self.cfg, self.tokenizer, self.eos_id = model, cfg, tokenizer, eos_id
        self.scheduler = get_scheduler(scheduler)
        self.max_batch_tokens, self.max_seqs = max_batch_tokens, max_seqs
        if num_blocks is None:
            # Room for max_seqs sequences of a quarter context each, or 4 full contexts.
            num_blocks = max(4 * -(-cfg.max_seq_len // block_size),
                             max_seqs * -(-cfg.max_seq_len // (4 * block_size)))
        dtype = model.tok_emb.weight.dtype
        kv_heads = model.blocks[0].attn.kv_heads  # this rank's share under tensor parallelism
        self.cache = PagedKVCache(cfg.layers, kv_heads, cfg.head_dim, num_blocks, block_size,
                                  dtype=dtype, device=model.tok_emb.weight.device,
                                  prefix_caching=prefix_caching)
        self.runner = PagedRunner(model, self.cache, compile=compile,
                                  attention=paged_attention_for(paged_attention, self.cache.k[0].device))
        self.waiting: collections.deque = collections.deque()
        self.running: list[Sequence] = []
        self.inbox: queue.Queue = queue.Queue()
        self.stats = {"generated_tokens": 0, "prompt_tokens": 0, "steps": 0, "preemptions": 0,
                      "finished": 0, "failed": 0, "shared_prompt_tokens": 0,
                      # prefix cache: tokens of the sequences that looked (queries) and that it
                      # held (hits); every token run through the model (prompt, recompute, decode)
                      "prefix_cache_queries": 0, "prefix_cache_hits": 0, "computed_tokens": 0}
        self.forks: list[Sequence] = []  # samples waiting for a sibling's prompt blocks (`_fork`)
        self._failed: list[Sequence] = []  # failed outside a step's batch (admission): reported by step

    @classmethod
    def from_artifact(cls, art, **kw) -> "Engine":
        return cls(art.model, art.tokenizer, art.eos_id, **kw)

    # --- requests ------------------------------------------------------------------
    def check(self, seq: Sequence) -> Optional[str]:
        """Why `seq` can never run here (None when it can)."""
        total = len(seq.prompt_ids) + seq.params.max_tokens
        if not seq.prompt_ids:
            return "the prompt is empty"
        # A prompt scored without generating (max_tokens 0, echo) may fill the context.
        room = self.cfg.max_seq_len if seq.params.max_tokens == 0 else self.cfg.max_seq_len - 1
        if len(seq.prompt_ids) > room:
            return f"the prompt has {len(seq.prompt_ids)} tokens; the model's context is {self.cfg.max_seq_len}"
        if self.cache.blocks_for(min(total, self.cfg.max_seq_len)) > self.cache.num_blocks:
            return "prompt + max_tokens exceed the whole KV cache"
        return None

    def add(self, seq: Sequence) -> None:
        """Queue `seq` (engine thread only; other threads use `submit`)."""
        if seq.params.seed is not None:
            import torch

            seq.generator = torch.Generator().manual_seed(int(seq.params.seed))
        if self.tokenizer is not None:
            seq.detokenize = self.tokenizer.decode
        self.stats["prompt_tokens"] += len(seq.prompt_ids)
        if seq.prompt_source is not None and self._shareable(seq) > 0:
            self.forks.append(seq)  # joins `waiting` once its sibling has computed the prompt
        else:
            self.waiting.append(seq)

    def _shareable(self, seq: Sequence) -> int:
        """Prompt tokens `seq` can take from its sibling: whole blocks, short of the last
        prompt token (which it must run itself, to get the logits of its first sample)."""
        bs = self.cache.block_size
        return (len(seq.prompt_ids) - 1) // bs * bs

    def _fork(self) -> None:
        """Samples of one prompt (n, best_of) share its KV blocks: each waits until the
        first sample has computed the prompt's whole blocks, takes them and computes only
        the rest. If that sibling is gone (finished, aborted) or the sample was preempted
        meanwhile, it simply computes the prompt itself."""
        still = []
        for seq in self.forks:
            src, share = seq.prompt_source, self._shareable(seq)
            if seq.finished:
                continue
            if src.finished or (src.num_computed == 0 and src not in self.running and src not in self.waiting):
                self.waiting.append(seq)
            elif src.num_computed >= share and len(src.blocks) * self.cache.block_size >= share:
                self.cache.share(seq, src, share)
                seq.num_computed = share
                self.stats["shared_prompt_tokens"] += share
                self.waiting.append(seq)
            else:
                still.append(seq)
        self.forks = still

    def _match_prefixes(self) -> list[Sequence]:
        """Before a schedule: the waiting sequences this step could admit (up to max_seqs
        and the token budget, in queue order) take their cached prefixes. Returns (and
        takes out of `waiting` for this step) those held back because their next uncached
        block is being computed by a running sequence or one queued ahead of them."""
        cache, bs = self.cache, self.cache.block_size
        coming: set[bytes] = set()  # hashes of full blocks that someone is about to compute
        for s in self.running:
            if s.remaining > 1:  # still in its prompt (or a recompute)
                full = (len(s.prompt_ids) + len(s.output_ids)) // bs
                coming.update(cache.block_hashes(s, full)[s.num_computed // bs:])
        held, slots, budget = [], self.max_seqs - len(self.running), self.max_batch_tokens
        for s in list(self.waiting):
            if slots <= 0 or budget <= 0:
                break
            scoring = s.params.echo and s.params.logprobs is not None  # needs every prompt position's logits
            if not s.blocks and s.num_computed == 0 and not scoring:
                hit, limit = cache.cached_prefix(s), cache.matchable(s)
                if hit < limit and s.block_hashes[hit] in coming:
                    held.append(s)
                    continue
                s.num_computed = cache.match(s)
                self.stats["prefix_cache_queries"] += len(s.prompt_ids) + len(s.output_ids)
                self.stats["prefix_cache_hits"] += s.num_computed
            full = (len(s.prompt_ids) + len(s.output_ids)) // bs
            coming.update(cache.block_hashes(s, full)[s.num_computed // bs:])
            slots -= 1
            budget -= s.remaining
        for s in held:
            self.waiting.remove(s)
        return held

    def _unhold(self, held: list[Sequence]) -> None:
        """Held sequences back into `waiting`, each ahead of those that arrived after it
        (a sequence preempted meanwhile, queued at the head, stays ahead of them)."""
        if not held:
            return
        rest, merged, i = list(self.waiting), [], 0
        for h in held:
            while i < len(rest) and rest[i].arrival <= h.arrival:
                merged.append(rest[i])
                i += 1
            merged.append(h)
        self.waiting.clear()
        self.waiting.extend(merged + rest[i:])

    def submit(self, seq: Sequence) -> None:
        self.inbox.put(("add", seq))

    def abort(self, seq: Sequence) -> None:
        self.inbox.put(("abort", seq))

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, seq = self.inbox.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                try:
                    self.add(seq)
                except Exception as e:  # this request's settings, not the engine
                    self.fail(seq, e)
            elif not seq.finished:
                self._finish(seq, "abort")

    # --- scheduling state (what schedulers see) ------------------------------------
    def preempt(self, seq: Sequence) -> None:
        """Recompute later: drop its KV, back to the front of the queue."""
        self.cache.release(seq)
        seq.num_computed = 0
        seq.preemptions += 1
        self.stats["preemptions"] += 1
        if seq in self.running:
            self.running.remove(seq)
        self.waiting.appendleft(seq)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.cache.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.forks:
            self.forks.remove(seq)
        self.stats["finished"] += 1

    def fail(self, seq: Sequence, error: BaseException) -> None:
        """End `seq` alone with an error; the engine carries on."""
        seq.error = f"{type(error).__name__}: {error}"
        self._finish(seq, "error")
        self.stats["failed"] += 1
        self._failed.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.forks or not self.inbox.empty())

    # --- one step ----------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Run one batch; returns the sequences that got a token or finished (failed included)."""
        import torch

        self._drain_inbox()
        if self.forks:
            self._fork()
        held: list[Sequence] = []
        try:
            if self.cache.prefix_caching:
                held = self._match_prefixes()
            chunks = self.scheduler.schedule(self)
            if not chunks and not self.running and held:
                # (cannot happen: what a held sequence waits for is running or queued ahead
                # of it; but a plugin scheduler may admit differently) never wait on nothing
                self._unhold(held)
                held = []
                chunks = self.scheduler.schedule(self)
            if not chunks and any(q.blocks for q in self.waiting):
                # Forked samples and matched prefixes wait holding shared blocks; when nothing
                # fits, those are what the queue's head (or a running prompt's next chunk)
                # lacks: give them back. (With a prompt still running, they starved it: no
                # chunk, no preemption, every step empty.)
                for q in self.waiting:
                    if q.blocks:
                        self.cache.release(q)
                        q.num_computed = 0
                chunks = self.scheduler.schedule(self)
        except Exception as e:
            raise EngineFailure(f"the scheduler failed: {type(e).__name__}: {e}") from e
        finally:
            self._unhold(held)
        started = time.monotonic()
        for seq, _ in chunks or ():
            if seq.scheduled_at is None:  # queue time ends when its first chunk runs
                seq.scheduled_at = started
        if chunks:
            try:
                with torch.inference_mode():
                    logits = self.runner.forward(chunks)
            except Exception as e:
                logits, chunks = self._isolate(chunks, e)
        touched, self._failed = self._failed, []
        if not chunks:
            return touched
        self.stats["steps"] += 1
        self.stats["computed_tokens"] += sum(n for _, n in chunks)
        now = time.monotonic()
        greedy = logits.argmax(dim=-1).tolist()  # one call for the batch, not one per row
        for (seq, n), row, best in zip(chunks, logits, greedy):
            if seq.finished:
                continue
            try:
                if self._advance(seq, n, row, best, now):
                    touched.append(seq)
            except Exception as e:
                self.fail(seq, e)
        failed, self._failed = self._failed, []
        return touched + failed

    def _advance(self, seq: Sequence, n: int, row, best: int, now: float) -> bool:
        """`seq`'s share of a step: n more tokens computed, then (at the end of what it
        knows) a sampled token and the stop rules. True when it got a token or finished."""
        from llmctl.serve.sampling import sample

        seq.num_computed += n
        self.cache.commit(seq, seq.num_computed - n, seq.num_computed)
        if seq.remaining > 0:  # a prompt chunk that did not reach the end: no sample yet
            return False
        if seq.params.max_tokens == 0:  # echo only: the prompt is scored, nothing to generate
            self._finish(seq, "length")
            return True
        p = seq.params
        if p.logit_bias or p.presence_penalty or p.frequency_penalty:
            from llmctl.serve.sampling import adjust

            biased = adjust(row, p, seq.output_ids)
            tok = int(biased.argmax()) if p.temperature <= 0 else sample(biased, p, seq.generator)
        else:
            tok = best if p.temperature <= 0 else sample(row, p, seq.generator)
        seq.output_ids.append(tok)
        # Log-probabilities are the model's own (before bias and penalties), as vLLM returns them.
        if p.logprobs is not None:
            seq.output_logprobs.append(_logprob_of(row, tok, p.logprobs))
        if p.cumulative:
            seq.cumulative_logprob += float(torch_log_softmax(row)[tok])
        self.stats["generated_tokens"] += 1
        seq.first_token_at = seq.first_token_at or now
        seq.last_token_at = now
        seq.token_times.append(now)
        self._apply_stops(seq, tok)
        return True

    def _isolate(self, chunks, error: Exception):
        """The batch's forward pass raised: run each chunk alone and fail the requests
        whose chunk fails alone; (logits, chunks) of the others. Re-running is safe on
        one rank: a chunk's K/V slots lie past what its sequence has computed and are
        written again. Under tensor parallelism the workers ran part of the failed step,
        so the ranks are out of step: nothing is safe."""
        import torch

        why = f"{type(error).__name__}: {error}"
        if getattr(self, "mpi_leader", None) is not None:
            raise EngineFailure(f"a tensor-parallel step failed: {why}") from error
        rows, kept = [], []
        for chunk in chunks:
            try:
                with torch.inference_mode():
                    rows.append(self.runner.forward([chunk])[0])
                kept.append(chunk)
            except Exception as e:
                self.fail(chunk[0], e)
        if not kept and not self._probe():
            raise EngineFailure(f"the model fails even on a one-token probe after: {why}") from error
        return (torch.stack(rows) if rows else None), kept

    def _probe(self) -> bool:
        """Can the engine still run a forward pass? One token in one free block."""
        import torch

        probe = Sequence([0], SamplingParams(max_tokens=1))
        if not self.cache.reserve(probe, 1):
            return False
        try:
            with torch.inference_mode():
                self.runner.forward([(probe, 1)])
            return True
        except Exception:
            return False
        finally:
            self.cache.release(probe)

    def _apply_stops(self, seq: Sequence, tok: int) -> None:
        p = seq.params
        if self.tokenizer is not None and p.stop:  # without stop sequences, `text` decodes lazily
            text = self.tokenizer.decode(seq.output_ids)
            for s in p.stop:
                cut = text.find(s)
                if cut >= 0:
                    seq.text = text[:cut]
                    return self._finish(seq, "stop")
            seq.text = text
        if tok == self.eos_id and not p.ignore_eos:
            seq.text = self.tokenizer.decode(seq.output_ids[:-1]) if self.tokenizer else ""
            return self._finish(seq, "stop")
        if len(seq.output_ids) >= p.max_tokens or len(seq.tokens) >= self.cfg.max_seq_len:
            return self._finish(seq, "length")

    def run_until_done(self) -> None:
        while self.has_work:
            self.step()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sequence]:
        """Run `prompts` to completion together (tests, batch mode)."""
        seqs = [Sequence(p, params) for p in prompts]
        for s in seqs:
            problem = self.check(s)
            if problem:
                raise ValueError(problem)
            self.add(s)
        self.run_until_done()
        return seqs


def torch_log_softmax(row):
    import torch

    return torch.log_softmax(row.float(), dim=-1)


def _logprob_of(row, tok: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """(log P(tok), the k most likely [(id, logprob)]) from one row of logits."""
    import torch

    logp = torch.log_softmax(row.float(), dim=-1)
    top_v, top_i = logp.topk(k) if k else (logp[:0], logp[:0].long())
    return float(logp[tok]), list(zip(top_i.tolist(), top_v.tolist()))
