"""Clients as they are, against a real `llmctl serve start` on 127.0.0.1 (tiny artifact):
the official `openai` client (completions, chat, streaming with include_usage, logprobs
checked against llmctl's own forward pass, errors), LangChain's and LiteLLM's OpenAI
adapters (batched completions as one list-prompt request, chat), and lm-evaluation-
harness's `local-completions` on local tasks (echo + logprobs), whose per-request
log-likelihoods must equal llmctl's evaluator on the same tokens.

n > 1, best_of, logit_bias, penalties, context overflow and /metrics are in
test_serve_openai.py; the same server fixtures are used here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import servekit as K  # noqa: E402

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

IDS = {"return_token_ids": True, "ignore_eos": True}
PROMPTS = ["def f(x):", "import os\n", "class A:"]
LOGP_TOL = 1e-4  # the server's batched paged attention against one plain forward pass


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return K.tiny_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def server(artifact):
    with K.Server(artifact, "--max-batch-tokens", "512") as s:
        yield s


@pytest.fixture(scope="module")
def c(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ours(artifact):
    """llmctl's own evaluator on the same artifact (`eval run --artifact`'s model)."""
    from llmctl.eval.artifact import ArtifactLM

    return ArtifactLM(artifact, device="cpu")


def logp_rows(lm, ids: list[int]):
    """log-softmax after each prefix of `ids` (row i predicts token i + 1), by llmctl's model."""
    import torch

    with torch.inference_mode():
        return lm._logp([ids[:-1]])[0]


def requests_total(url: str, endpoint: str, status: str = "200") -> float:
    line = f'llmctl_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    for row in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if row.startswith(line):
            return float(row[len(line):])
    return 0.0


def greedy_texts(c, prompts: list[str], n: int = 8) -> list[str]:
    """Each prompt alone, through the official client."""
    return [c.completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0).choices[0].text
            for p in prompts]


# --- the official openai client ---------------------------------------------------------

def test_completion_shape_and_exact_usage(c, ours):
    r = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=9, temperature=0, extra_body=IDS)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
    ch = r.choices[0]
    assert ch.index == 0 and ch.finish_reason == "length" and len(ch.token_ids) == 9
    assert ch.prompt_token_ids == ours.encode("def f(x):")
    assert ch.text == ours.decode(ch.token_ids)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (len(ch.prompt_token_ids), 9, len(ch.prompt_token_ids) + 9)


def test_chat_shape_and_exact_usage(c):
    r = c.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": "hi"}],
                                  max_completion_tokens=7, temperature=0, extra_body=IDS)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == len(r.choices[0].token_ids) == 7
    assert r.usage.prompt_tokens == len(r.prompt_token_ids)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_with_include_usage_ends_with_the_exact_usage(c, chat):
    kw = dict(model="tiny", max_tokens=11, temperature=0, extra_body={"ignore_eos": True})
    if chat:
        kw["messages"] = [{"role": "user", "content": "tell me"}]
        create = c.chat.completions.create
    else:
        kw["prompt"] = "import "
        create = c.completions.create
    whole = create(**kw)
    events = list(create(stream=True, stream_options={"include_usage": True}, **kw))
    *parts, last = events
    assert last.choices == [] and last.usage is not None  # the usage event is last, choices empty
    assert last.usage.model_dump() == {**whole.usage.model_dump(), "total_tokens": whole.usage.total_tokens}
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == \
        (whole.usage.prompt_tokens, whole.usage.completion_tokens) and last.usage.completion_tokens == 11
    assert all(ev.usage is None for ev in parts)
    text = "".join((ev.choices[0].delta.content or "") if chat else ev.choices[0].text for ev in parts)
    assert text == (whole.choices[0].message.content if chat else whole.choices[0].text)
    assert parts[-1].choices[0].finish_reason == "length"
    without = list(create(stream=True, **kw))
    assert all(ev.usage is None for ev in without) and all(ev.choices for ev in without)


def test_completion_logprobs_with_echo_are_llmctls_own(c, ours):
    ids = ours.encode("def square(x):\n    return")
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, echo=True, logprobs=3,
                             extra_body=IDS)
    ch = r.choices[0]
    lp = ch.logprobs
    full = ids + ch.token_ids
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(full)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    assert lp.tokens == [ours.decode([t]) for t in full]
    assert ch.text == ours.decode(ids) + ours.decode(ch.token_ids)  # echo: prompt first
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(full))]
    rows = logp_rows(ours, full)
    for i in range(1, len(full)):
        assert lp.token_logprobs[i] == pytest.approx(rows[i - 1, full[i]].item(), abs=LOGP_TOL)
        # keyed by text: ids that decode alike (parts of one UTF-8 character) keep the likeliest
        want: dict[str, float] = {}
        for v, j in zip(*rows[i - 1].topk(3)):
            want.setdefault(ours.decode([int(j)]), v.item())
        assert lp.top_logprobs[i] == pytest.approx(want, abs=LOGP_TOL)
    for i in range(len(ids), len(full)):  # greedy: each generated token is the top one
        assert full[i] == int(rows[i - 1].argmax())


def test_completion_logprobs_without_echo_cover_the_output_only(c):
    r = c.completions.create(model="tiny", prompt="x = ", max_tokens=4, temperature=0, logprobs=0,
                             extra_body=IDS)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4 and all(v <= 0 for v in lp.token_logprobs)
    assert lp.text_offset[0] == len("x = ")  # offsets count from the start of the prompt, as OpenAI's


def test_chat_logprobs_and_top_logprobs_are_llmctls_own(c, ours):
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=6,
                                  temperature=0, logprobs=True, top_logprobs=4, extra_body=IDS)
    out = r.choices[0].token_ids
    full = r.prompt_token_ids + out
    rows = logp_rows(ours, full)
    start = len(r.prompt_token_ids) - 1
    content = r.choices[0].logprobs.content
    assert [x.token for x in content] == [ours.decode([t]) for t in out]
    for k, item in enumerate(content):
        row = rows[start + k]
        assert item.logprob == pytest.approx(row[out[k]].item(), abs=LOGP_TOL)
        want = row.topk(4).values.tolist()
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(want, abs=LOGP_TOL)
        assert all(t.bytes == list(t.token.encode()) for t in item.top_logprobs)


def test_n_and_logit_bias_through_the_client(c):
    r = c.completions.create(model="tiny", prompt="def", max_tokens=6, temperature=0.9, seed=1, n=2,
                             logit_bias={"77": 100}, extra_body=IDS)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert [ch.token_ids for ch in r.choices] == [[77] * 6, [77] * 6]  # +100 outweighs any sample
    assert r.usage.completion_tokens == 12


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_errors_in_openais_shape(c, chat):
    def call(**kw):
        if chat:
            return c.chat.completions.create(messages=[{"role": "user", "content": "x"}], max_tokens=2, **kw)
        return c.completions.create(prompt="x", max_tokens=2, **kw)

    with pytest.raises(openai.NotFoundError) as e:
        call(model="gpt-4")
    assert e.value.status_code == 404 and e.value.code == "model_not_found" and "gpt-4" in e.value.message
    for kw, param in [({"temperature": 3}, "temperature"), ({"top_p": -1}, "top_p"),
                      ({"presence_penalty": 9}, "presence_penalty"), ({"stop": ["a"] * 5}, "stop"),
                      ({"extra_body": {"temprature": 0}}, "temprature")]:
        with pytest.raises(openai.BadRequestError) as e:
            call(model="tiny", **kw)
        assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
        assert param in e.value.message


# --- LangChain -----------------------------------------------------------------------

def test_langchain_openai_batch_is_one_list_prompt_request(c, server):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.OpenAI(model="tiny", base_url=server.url + "/v1", api_key="unused", max_tokens=8, temperature=0,
                    max_retries=0)
    alone = greedy_texts(c, PROMPTS)
    before = requests_total(server.url, "completions")
    got = llm.batch(PROMPTS)
    assert requests_total(server.url, "completions") - before == 1  # LangChain sent prompt=[...]
    assert got == alone


def test_langchain_chat_invoke_and_stream(c, server):
    lc = pytest.importorskip("langchain_openai")
    chat = lc.ChatOpenAI(model="tiny", base_url=server.url + "/v1", api_key="unused", max_tokens=8,
                         temperature=0, max_retries=0, stream_usage=True)
    want = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8,
                                     temperature=0)
    msg = chat.invoke("hello")
    assert msg.content == want.choices[0].message.content
    assert msg.usage_metadata["input_tokens"] == want.usage.prompt_tokens
    assert msg.usage_metadata["output_tokens"] == want.usage.completion_tokens
    chunks = list(chat.stream("hello"))  # stream_usage: stream_options.include_usage
    whole = chunks[0]
    for ch in chunks[1:]:
        whole += ch
    assert whole.content == msg.content
    assert whole.usage_metadata["total_tokens"] == want.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        lc.ChatOpenAI(model="gpt-4", base_url=server.url + "/v1", api_key="unused", max_retries=0).invoke("x")


# --- LiteLLM -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def litellm():
    # Its model price map is fetched from GitHub at import unless told to use its own copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return pytest.importorskip("litellm")


def test_litellm_text_completion_with_a_list_prompt(c, server, litellm):
    alone = greedy_texts(c, PROMPTS)
    before = requests_total(server.url, "completions")
    r = litellm.text_completion(model="openai/tiny", prompt=PROMPTS, api_base=server.url + "/v1",
                                api_key="unused", max_tokens=8, temperature=0)
    assert requests_total(server.url, "completions") - before == 1
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.text for ch in r.choices] == alone
    assert r.usage.completion_tokens == 24


def test_litellm_chat_completion(c, server, litellm):
    msgs = [{"role": "user", "content": "hello"}]
    want = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    r = litellm.completion(model="openai/tiny", messages=msgs, api_base=server.url + "/v1", api_key="unused",
                           max_tokens=8, temperature=0)
    assert r.choices[0].message.content == want.choices[0].message.content
    assert r.usage.prompt_tokens == want.usage.prompt_tokens and r.usage.completion_tokens == 8
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="openai/gpt-4", messages=msgs, api_base=server.url + "/v1", api_key="unused",
                           max_tokens=2, num_retries=0)


# --- lm-evaluation-harness local-completions -----------------------------------------

TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
{body}"""
MC = """\
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
ROLLING = """\
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
"""
TEXTS = ["import os\nprint(os.getcwd())\n", "def square(x):\n    return x * x\n",
         "for i in range(10):\n    total += i\n", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"]
MC_DOCS = 8


def test_lm_eval_local_completions_scores_as_llmctl_does(server, artifact, ours, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    builtin = Path(__file__).parents[2] / "llmctl" / "eval" / "builtin"
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(TASK.format(name="conf_mc", data=builtin / "code_completion.jsonl",
                                               kind="multiple_choice", body=MC))
    (tasks / "rolling.yaml").write_text(TASK.format(name="conf_rolling", data=tmp_path / "texts.jsonl",
                                                    kind="loglikelihood_rolling", body=ROLLING))
    for var, val in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, val)

    # batch_size 4: each request carries four token-id prompts (a list of lists).
    lm = get_model("local-completions")(base_url=server.url + "/v1/completions", model="tiny",
                                         tokenizer_backend="huggingface", tokenizer=str(artifact),
                                         max_length=256, batch_size=4, max_retries=1)
    before = requests_total(server.url, "completions")
    res = simple_evaluate(model=lm, tasks=["conf_mc", "conf_rolling"], limit=MC_DOCS, log_samples=True,
                          bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    sent = requests_total(server.url, "completions") - before
    mc_samples, roll_samples = res["samples"]["conf_mc"], res["samples"]["conf_rolling"]
    assert len(mc_samples) == MC_DOCS and len(roll_samples) == len(TEXTS)
    n_choices = sum(len(s["arguments"]) for s in mc_samples)
    assert sent < n_choices  # batched: fewer requests than scored continuations

    # Multiple choice: each (context, choice) scored on lm-eval's own tokens by llmctl's model.
    correct = 0
    for s in mc_samples:
        got = [r[0] for r in s["resps"]]
        want = []
        for (ctx, cont), (ll, greedy) in zip(s["arguments"], got):
            ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
            full = ctx_ids + cont_ids
            rows = logp_rows(ours, full)[len(ctx_ids) - 1:]
            expect = sum(rows[k, t].item() for k, t in enumerate(cont_ids))
            assert ll == pytest.approx(expect, abs=LOGP_TOL * len(cont_ids)), (ctx, cont)
            assert greedy == all(int(rows[k].argmax()) == t for k, t in enumerate(cont_ids))
            want.append(expect)
        correct += max(range(len(want)), key=want.__getitem__) == s["target"]
    assert res["results"]["conf_mc"]["acc,none"] == pytest.approx(correct / MC_DOCS)

    # Rolling loglikelihood: one window per short text, [eos] first on both sides, so the
    # harness's numbers must equal llmctl's own perplexity scoring (LM.token_nll).
    for s in roll_samples:
        text = s["doc"]["text"]
        want = -sum(nll for nll, _ in ours.token_nll(ours.encode(text)))
        assert s["resps"][0][0] == pytest.approx(want, abs=1e-3), text
