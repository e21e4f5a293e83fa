"""The same suite on a trained checkpoint, on its exported artifact and on that
artifact served by `llmctl serve` (a real server process on 127.0.0.1, real HTTP)
gives the same metrics; the official `openai` client gets echo + logprobs from our
server; bad backends (unreachable, no logprobs, not an artifact) exit 2."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, run_cli

pytest.importorskip("torch")
pytest.importorskip("h5py")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
sys.path.insert(0, str(REPO / "tests" / "unit"))

import servekit as K  # noqa: E402
from trainkit import make_project, make_run, prepare_data, quiet_env, run_train  # noqa: E402

# All three task types; the built-in perplexity task reads the run's own validation
# data, which the artifact and endpoint backends find through the export manifest.
TASKS = ["--tasks", "stdlib_perplexity,code_completion,arithmetic", "--limit", "12", "--batch-size", "4"]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """A run trained 40 steps, its fp32 export, and that export served."""
    root = make_project(tmp_path_factory.mktemp("evalbk") / "p", docs=60)
    prepare_data(root)
    run = make_run(root, "r", steps=40, interval=40, eval_interval=40)
    r = run_train(run)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = run / "checkpoints" / "step-00000040"
    art = root / "artifacts" / "tiny"
    ok("export", "--checkpoint", str(ckpt), "--out", str(art), "--dtype", "fp32", cwd=root)
    with K.Server(art, "--max-batch-tokens", "512") as server:
        yield root, ckpt, art, server


def ok(*args, cwd, env=None):
    r = run_cli(*args, cwd=cwd, env=env or quiet_env(), timeout=600)
    assert r.returncode == 0, f"llmctl {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


def bad(*args, cwd, env=None):
    r = run_cli(*args, cwd=cwd, env=env or quiet_env(), timeout=120)
    assert r.returncode == 2, f"llmctl {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r.stderr


def evaluate(root, out: Path, *source) -> dict:
    ok("eval", "run", *source, "--output", str(out), *TASKS, cwd=root)
    return json.loads(out.read_text())


def test_checkpoint_artifact_and_endpoint_agree(backends, tmp_path):
    root, ckpt, art, server = backends
    runs = {
        "checkpoint": evaluate(root, tmp_path / "c.json", "--checkpoint", str(ckpt)),
        "artifact": evaluate(root, tmp_path / "a.json", "--artifact", str(art)),
        "endpoint": evaluate(root, tmp_path / "e.json", "--endpoint", server.url + "/v1", "--tokenizer", str(art)),
    }
    ref = runs["checkpoint"]["results"]
    assert set(ref) == {"stdlib_perplexity", "code_completion", "arithmetic"}
    for name, res in runs.items():
        got = res["results"]
        assert set(got) == set(ref), name
        for key in ("perplexity,none", "loss,none", "bits_per_byte,none"):
            assert got["stdlib_perplexity"][key] == pytest.approx(ref["stdlib_perplexity"][key], rel=1e-3), \
                (name, key)
        for task, key in (("code_completion", "acc,none"), ("code_completion", "acc_norm,none"),
                          ("arithmetic", "exact_match,none")):
            assert got[task][key] == ref[task][key], (name, task, key)
        assert res["n-samples"] == runs["checkpoint"]["n-samples"], name
    # Each results file names what was evaluated.
    assert runs["checkpoint"]["config"]["step"] == 40
    assert runs["artifact"]["config"]["artifact"] == str(art)
    assert runs["endpoint"]["config"]["endpoint"] == server.url + "/v1"
    assert runs["endpoint"]["config"]["served_model"] == "tiny"


def test_per_sample_loglikelihoods_and_generations_agree(backends, tmp_path):
    """Not only the metrics: each choice's loglikelihood and each generated text through
    HTTP are the checkpoint's."""
    root, ckpt, art, server = backends
    opts = ["--tasks", "code_completion,arithmetic", "--limit", "6", "--log-samples"]
    ok("eval", "run", "--checkpoint", str(ckpt), "--output", str(tmp_path / "c.json"), *opts, cwd=root)
    ok("eval", "run", "--endpoint", server.url + "/v1", "--tokenizer", str(art), "--output",
       str(tmp_path / "e.json"), *opts, cwd=root)

    def rows(k, task):
        return [json.loads(x) for x in (tmp_path / f"{k}_samples_{task}.jsonl").read_text().splitlines()]

    c, e = rows("c", "code_completion"), rows("e", "code_completion")
    assert len(c) == len(e) == 6
    for sc, se in zip(c, e):
        lls_c = [r[0] for r in sc["filtered_resps"]]
        assert [r[0] for r in se["filtered_resps"]] == pytest.approx(lls_c, rel=1e-4, abs=1e-3)
        assert [r[1] for r in sc["filtered_resps"]] == [r[1] for r in se["filtered_resps"]]
    c, e = rows("c", "arithmetic"), rows("e", "arithmetic")
    assert len(c) == len(e) == 6
    assert [s["resps"] for s in e] == [s["resps"] for s in c]
    assert any(s["resps"][0][0] for s in c)  # something was generated, not only empty strings


def test_a_context_longer_than_the_model_still_generates(backends):
    """The context keeps its last tokens and leaves room for the answer: the server refuses
    prompt + max_tokens beyond its context with 400 (it used to be cut to context - 1)."""
    from llmctl.eval.endpoint import EndpointLM

    root, ckpt, art, server = backends
    lm = EndpointLM(server.url + "/v1", art)
    text = lm.generate_until("x = 1\n" * 200, until=[], max_tokens=16)  # far over 64 tokens
    assert isinstance(text, str)  # before: LlmctlError, the server answered 400
    assert lm.generate_until("y", until=[], max_tokens=500) is not None  # more than the context


def test_openai_client_gets_echo_and_logprobs(backends):
    openai = pytest.importorskip("openai")
    _, _, art, server = backends
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    prompt = "def add(a, b):\n    return a + b\n"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1,
                                  temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt
    assert "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and all(v < 0 for v in lp.token_logprobs[1:])
    assert len(lp.top_logprobs) == len(lp.tokens) and all(len(t) == 1 for t in lp.top_logprobs[1:])
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(prompt) - len(lp.tokens[-1])
    # Generation with logprobs, and a prompt given as token ids.
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(art / "tokenizer.json")).encode(prompt).ids
    g = client.completions.create(model="tiny", prompt=ids, max_tokens=3, echo=False, logprobs=2, temperature=0)
    glp = g.choices[0].logprobs
    assert len(glp.tokens) == len(glp.token_logprobs) == g.usage.completion_tokens
    assert all(len(t) == 2 and max(t.values()) == pytest.approx(v) for t, v in zip(glp.top_logprobs,
                                                                                  glp.token_logprobs))
    assert g.usage.prompt_tokens == len(ids)


class NoLogprobs(threading.Thread):
    """A completions server that, like a chat-only proxy, never returns logprobs."""

    def __init__(self):
        super().__init__(daemon=True)
        import http.server

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send({"id": "x", "object": "text_completion",
                            "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None}]})

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def run(self):
        self.httpd.serve_forever()


def test_bad_backends_exit_2(backends, tmp_path):
    root, ckpt, art, server = backends
    fast = ["--tasks", "code_completion", "--limit", "2"]
    err = bad("eval", "run", "--endpoint", f"http://127.0.0.1:{K.free_port()}/v1", "--tokenizer", str(art),
              *fast, cwd=root)
    assert "cannot reach" in err
    fake = NoLogprobs()
    fake.start()
    try:
        err = bad("eval", "run", "--endpoint", fake.url, "--tokenizer", str(art), *fast, cwd=root)
        assert "does not return prompt logprobs" in err
        # Generation needs no logprobs: a generation-only task runs on such a server.
        out = tmp_path / "gen.json"
        ok("eval", "run", "--endpoint", fake.url, "--tokenizer", str(art), "--tasks", "arithmetic", "--limit", "3",
           "--output", str(out), cwd=root)
        res = json.loads(out.read_text())
        assert res["results"]["arithmetic"]["exact_match,none"] == 0.0  # the fake always answers ""
        assert res["config"]["served_model"] == "m"
    finally:
        fake.httpd.shutdown()
    err = bad("eval", "run", "--artifact", str(ckpt), *fast, cwd=root)
    assert "not an artifact folder" in err and str(ckpt) in err
    err = bad("eval", "run", "--artifact", str(tmp_path / "nope"), *fast, cwd=root)
    assert "artifact folder not found" in err
    err = bad("eval", "run", "--endpoint", server.url + "/v1", *fast, cwd=root)
    assert "--tokenizer" in err
    err = bad("eval", "run", "--checkpoint", str(ckpt), "--artifact", str(art), *fast, cwd=root)
    assert "exactly one of" in err
    err = bad("eval", "run", "--endpoint", server.url + "/v1", "--tokenizer", str(art), "--api-key-env",
              "LLMCTL_TEST_NO_SUCH_KEY", *fast, cwd=root)
    assert "LLMCTL_TEST_NO_SUCH_KEY" in err
