"""Engine isolation without HTTP: a request whose settings or step raise fails alone
(finish reason "error", its KV blocks back in the pool) while the others finish with
the same tokens as without it; only a failure that leaves the engine's state unknown
raises EngineFailure. Also the test hooks' hold, and the restarter's swap and give-up."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

from llmctl.serve import testhooks  # noqa: E402
from llmctl.serve.engine import Engine, EngineFailure  # noqa: E402
from llmctl.serve.sequence import SamplingParams, Sequence  # noqa: E402

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
PROMPTS = [[5, 6, 7], [9, 10], list(range(30, 50))]


@pytest.fixture(scope="module")
def model():
    return K.tiny_model(K.TINY_LLAMA)


@pytest.fixture(scope="module")
def alone(model):
    return [o.output_ids for o in Engine(model, block_size=4).generate(PROMPTS, GREEDY)]


def run_with(eng: Engine, bad: Sequence) -> list[Sequence]:
    """PROMPTS (greedy) and `bad` submitted together, run until all have finished."""
    seqs = [Sequence(p, GREEDY) for p in PROMPTS]
    for s in seqs[:1] + [bad] + seqs[1:]:
        eng.submit(s)
    eng.run_until_done()
    return seqs


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=6, temperature=float("nan")),   # the sampler raises on NaN probabilities
    SamplingParams(max_tokens=6, temperature=1.0, seed=2**64),  # manual_seed overflows at admission
    SamplingParams(max_tokens=6, temperature=1.0, top_k=-1),  # torch.topk raises
])
def test_a_request_that_raises_fails_alone(model, alone, params):
    eng = Engine(model, block_size=4)
    bad = Sequence([1, 2, 3], params)
    seqs = run_with(eng, bad)
    assert bad.finish_reason == "error" and bad.error
    assert [s.output_ids for s in seqs] == alone
    assert eng.cache.num_free == eng.cache.num_blocks  # the failed request's blocks are back
    assert eng.stats["failed"] == 1
    assert eng.generate([PROMPTS[0]], GREEDY)[0].output_ids == alone[0]  # and it carries on


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-8, 2.0])
@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (5e-324, 0), (0.5, 3), (1.0, 2**70)])
def test_extreme_valid_sampling_settings_sample(model, temperature, top_p, top_k):
    """Once a tiny temperature made the logits inf - inf = NaN: a 500 for a valid request."""
    eng = Engine(model)
    [s] = eng.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=temperature, top_p=top_p,
                                                   top_k=top_k, seed=1, ignore_eos=True))
    assert s.finish_reason == "length" and s.error is None
    if temperature < 1e-30:  # as good as greedy
        assert s.output_ids == eng.generate([[5, 6, 7]], GREEDY)[0].output_ids[:4]


def test_a_forward_pass_that_fails_for_one_request_is_rerun_without_it(model, alone):
    eng = Engine(model, block_size=4)
    testhooks.install(eng)
    bad = Sequence([1, 2, 3], SamplingParams(max_tokens=6, test_hook="fail-forward"))
    seqs = run_with(eng, bad)
    assert bad.finish_reason == "error" and "forward pass" in bad.error
    assert [s.output_ids for s in seqs] == alone
    assert eng.cache.num_free == eng.cache.num_blocks


def test_a_request_failing_alone_in_its_batch_is_still_its_own_failure(model):
    """Every chunk failed, but a one-token probe runs: the engine is fine."""
    eng = Engine(model, block_size=4)
    testhooks.install(eng)
    [bad] = eng.generate([[1, 2]], SamplingParams(max_tokens=3, test_hook="fail-forward"))
    assert bad.finish_reason == "error"
    assert eng.generate([[1, 2]], GREEDY)[0].finish_reason == "length"


def test_a_model_that_cannot_run_at_all_is_an_engine_failure(model):
    eng = Engine(model, block_size=4)

    def broken(chunks, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    eng.runner.forward = broken
    eng.add(Sequence([1, 2], GREEDY))
    with pytest.raises(EngineFailure, match="one-token probe"):
        eng.step()


def test_a_failing_scheduler_is_an_engine_failure(model):
    eng = Engine(model)
    testhooks.install(eng)
    eng.submit(Sequence([1, 2], SamplingParams(max_tokens=2, test_hook="fail-engine")))
    with pytest.raises(EngineFailure, match="scheduler"):
        eng.step()


def test_a_tensor_parallel_step_that_fails_is_an_engine_failure(model):
    """The workers ran part of the step: nothing may be re-run."""
    eng = Engine(model)
    testhooks.install(eng)
    eng.mpi_leader = SimpleNamespace(error=None)
    eng.submit(Sequence([1, 2], SamplingParams(max_tokens=2, test_hook="fail-forward")))
    with pytest.raises(EngineFailure, match="tensor-parallel"):
        eng.step()


def test_hold_parks_the_engine_until_the_request_is_aborted(model):
    eng = Engine(model)
    hooks = testhooks.install(eng)
    held = Sequence([1, 2], SamplingParams(max_tokens=50, ignore_eos=True, test_hook="hold"))
    other = Sequence([3, 4], GREEDY)
    eng.submit(held)
    eng.step()
    assert hooks.held is held and len(held.output_ids) == 1
    eng.submit(other)
    for _ in range(5):
        assert eng.step() == []  # held: nothing moves, however many steps are asked for
    assert len(held.output_ids) == 1 and other.output_ids == [] and held in eng.running
    eng.abort(held)
    eng.run_until_done()
    assert held.finish_reason == "abort" and len(held.output_ids) == 1
    assert other.finish_reason == "length"
    assert eng.cache.num_free == eng.cache.num_blocks


class FakeWorker:
    def __init__(self, error=None):
        self.engine, self.error = object(), error
        self.died = threading.Event()
        if error:
            self.died.set()

    def shutdown(self):
        pass


def test_the_restarter_swaps_in_a_new_engine_then_gives_up(monkeypatch):
    from llmctl.serve import restart

    monkeypatch.setattr(restart, "MAX_RESTARTS", 2)
    state = SimpleNamespace(worker=FakeWorker("engine failed: boom"))
    state.swap = lambda w: setattr(state, "worker", w)
    built, gave_up = [], threading.Event()

    def rebuild():
        built.append(FakeWorker("engine failed: again"))  # each new engine fails at once
        return built[-1]

    r = restart.Restarter(state, rebuild, gave_up.set).start()
    assert gave_up.wait(30), "the restarter never gave up"
    r.stop()
    assert r.restarts == 2 and len(built) == 2 and state.worker is built[-1]
    assert "failed 3 times" in r.gave_up and "again" in r.gave_up
