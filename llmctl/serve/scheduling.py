"""Batching schedulers: which tokens of which requests run in the next engine step.

A scheduler's `schedule(state) -> list[(sequence, n_tokens)]` sees the engine's
`state` (`waiting` deque, `running` list, `cache`, `max_batch_tokens`,
`max_seqs`, and `preempt(seq)`); it moves sequences from waiting to running and
reserves their KV blocks itself. A waiting sequence may already hold blocks (a
sibling's shared prompt, or its cached prefix) with `num_computed` past them: a
reservation covers the total it needs, as for any sequence. Built in:

- `vllm-like`: continuous batching (Yu et al. 2022, Orca; Kwon et al. 2023, vLLM).
  Each step fills the token budget with the running decodes first (1 token
  each), then prompt chunks (long prompts are split across steps, Agrawal et al.
  2023, Sarathi); when the KV pool runs dry the latest arrival is preempted and
  recomputed later.
- `fcfs`: static batching, the baseline. A batch is admitted only when the
  previous one has finished, with every member's prompt + max_tokens reserved.

Plugins: an entry point in the group `llmctl.serve.schedulers` names a class
(constructed with no arguments) whose `schedule(state)` returns the batch.
"""

from __future__ import annotations

from llmctl.errors import LlmctlError

ENTRY_POINT_GROUP = "llmctl.serve.schedulers"


class VllmLike:
    name = "vllm-like"

    def schedule(self, state):
        budget, chunks, cache = state.max_batch_tokens, [], state.cache
        scheduled = set()
        for seq in list(state.running):
            if seq.remaining != 1 or budget < 1 or seq not in state.running:
                continue
            while not cache.reserve(seq, seq.num_computed + 1):
                victim = next((s for s in reversed(state.running) if s.seq_id not in scheduled), None)
                state.preempt(victim)
                if victim is seq:
                    break
            if seq in state.running:
                chunks.append((seq, 1))
                scheduled.add(seq.seq_id)
                budget -= 1
        candidates = [s for s in state.running if s.seq_id not in scheduled and s.remaining > 1]
        for seq in candidates + list(state.waiting):
            if budget < 1:
                break
            waiting = seq not in state.running
            if waiting and len(state.running) >= state.max_seqs:
                break
            n = min(seq.remaining, budget)
            if not cache.reserve(seq, seq.num_computed + n):
                break
            if waiting:
                state.waiting.remove(seq)
                state.running.append(seq)
            chunks.append((seq, n))
            budget -= n
        return chunks


class Fcfs:
    name = "fcfs"

    def schedule(self, state):
        if state.running:
            return [(s, s.remaining) for s in state.running]
        budget, chunks = state.max_batch_tokens, []
        while state.waiting and len(chunks) < state.max_seqs:
            seq = state.waiting[0]
            if chunks and seq.remaining > budget:
                break
            if not state.cache.reserve(seq, len(seq.tokens) + seq.params.max_tokens):
                break
            state.waiting.popleft()
            state.running.append(seq)
            chunks.append((seq, seq.remaining))
            budget -= seq.remaining
        return chunks


BUILTIN = {"vllm-like": VllmLike, "fcfs": Fcfs}


def get_scheduler(name: str):
    if name in BUILTIN:
        return BUILTIN[name]()
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise LlmctlError(f"unknown scheduler {name!r}; expected one of "
                          f"{', '.join(sorted([*BUILTIN, *found]))}",
                          hint=f"plugins register a class in the entry-point group {ENTRY_POINT_GROUP}")
    cls = found[name].load()
    sched = cls()
    if not callable(getattr(sched, "schedule", None)):
        raise LlmctlError(f"scheduler plugin {name!r} ({found[name].value}) has no schedule() method")
    return sched
