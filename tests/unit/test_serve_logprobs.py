"""Echo + logprobs in the engine and the legacy completions shape: the prompt's
token logprobs recorded during (chunked) prefill equal a plain full forward pass's,
max_tokens 0 scores a prompt that fills the whole context, generated tokens carry
their own logprobs, and the protocol builds OpenAI's `logprobs` object."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import servekit as K  # noqa: E402

torch = pytest.importorskip("torch")

from llmctl.serve import protocol as P  # noqa: E402
from llmctl.serve.engine import Engine  # noqa: E402
from llmctl.serve.sequence import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return K.tiny_model(K.TINY_LLAMA)


def full_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


@pytest.mark.parametrize("scheduler,budget", [("vllm-like", 16), ("vllm-like", 4096), ("fcfs", 4096)])
def test_prompt_logprobs_match_a_plain_forward(model, scheduler, budget):
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 384, (n,), generator=g).tolist() for n in (3, 37, 90)]
    eng = Engine(model, scheduler=scheduler, max_batch_tokens=budget, block_size=4)
    seqs = eng.generate(prompts, SamplingParams(max_tokens=0, temperature=0, logprobs=2, echo=True))
    for ids, seq in zip(prompts, seqs):
        assert seq.finish_reason == "length" and seq.output_ids == []
        ref = full_logprobs(model, ids)
        assert sorted(seq.prompt_logprobs) == list(range(1, len(ids)))
        for pos, (lp, top) in seq.prompt_logprobs.items():
            assert lp == pytest.approx(ref[pos - 1, ids[pos]].item(), abs=1e-4)
            want = ref[pos - 1].topk(2)
            assert [i for i, _ in top] == want.indices.tolist()


def test_max_tokens_zero_scores_a_prompt_that_fills_the_context(model):
    eng = Engine(model, block_size=16)
    full = list(range(1, K.TINY_LLAMA["max_seq_len"] + 1))
    scored = SamplingParams(max_tokens=0, logprobs=0, echo=True)
    from llmctl.serve.sequence import Sequence

    assert eng.check(Sequence(full, scored)) is None
    assert eng.check(Sequence(full, SamplingParams(max_tokens=1))) is not None  # no room to generate
    (seq,) = eng.generate([full], scored)
    ref = full_logprobs(model, full)
    total = sum(lp for lp, _ in seq.prompt_logprobs.values())
    assert total == pytest.approx(ref[:-1].gather(1, torch.tensor(full[1:])[:, None]).sum().item(), rel=1e-5)


def test_generated_tokens_carry_logprobs_and_the_response_has_openai_shape(model, tmp_path):
    from tokenizers import Tokenizer

    tok_file = tmp_path / "tok.json"
    K.tiny_tokenizer(tok_file)
    tok = Tokenizer.from_file(str(tok_file))
    ids = tok.encode("def main(argv):\n    return").ids
    eng = Engine(model, tok, block_size=4)
    params = P.sampling_params({"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 1,
                                "echo": True}, 100)
    (seq,) = eng.generate([ids], params)
    lp = P.response(seq, "cmpl-x", "tiny", False, tok)["choices"][0]["logprobs"]
    n = len(ids) + 3
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    # Greedy: every generated token is the top alternative, with the same logprob.
    ref = full_logprobs(model, seq.tokens)
    for j, t in enumerate(seq.output_ids):
        assert lp["token_logprobs"][len(ids) + j] == pytest.approx(ref[len(ids) + j - 1, t].item(), abs=1e-4)
        (top_lp,) = lp["top_logprobs"][len(ids) + j].values()
        assert top_lp == pytest.approx(lp["token_logprobs"][len(ids) + j])


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),          # 0 only with echo
    ({"prompt": "x", "logprobs": 6}, "logprobs"),              # OpenAI's limit is 5
    ({"prompt": "x", "echo": "yes"}, "echo"),
    ({"prompt": "x", "echo": True, "stream": True}, "stream"),
])
def test_bad_logprob_requests_are_400(body, param):
    with pytest.raises(P.ApiError) as e:
        P.sampling_params(body, 100)
    assert e.value.status == 400 and e.value.param == param


def test_prompts_as_token_ids():
    assert P.prompt_ids({"prompt": [1, 2, 3]}, False, None, 10, 384) == [1, 2, 3]
    assert P.prompt_ids({"prompt": [[4, 5]]}, False, None, 10, 384) == [4, 5]
    with pytest.raises(P.ApiError, match="outside the vocabulary"):
        P.prompt_ids({"prompt": [1, 999]}, False, None, 10, 384)
    with pytest.raises(P.ApiError, match="limit is 2"):
        P.prompt_ids({"prompt": [1, 2, 3]}, False, None, 2, 384)
