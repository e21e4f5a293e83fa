"""An OpenAI-compatible completions endpoint as a language model to score
(`eval run --endpoint URL`): `llmctl serve`, vLLM, or any server whose legacy
/v1/completions returns logprobs with echo.

Scoring works the way lm-evaluation-harness's `local-completions` model does:
POST the context + continuation as token ids with `max_tokens: 0, echo: true,
logprobs: 1` and read `choices[0].logprobs.token_logprobs` for the continuation's
tokens; the continuation is greedy when each of its tokens is the top one
(`top_logprobs`). Generation is `max_tokens` + `stop` at temperature 0. Token
ids are cut on this side with the model's own tokenizer (`--tokenizer`: the
artifact or Hugging Face folder the server loaded), exactly as the checkpoint
and artifact backends cut them, so the three agree. Requests go out
`batch_size` at a time, so a batching server batches them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError
from llmctl.eval.lm import LM, cut_at_stops


class EndpointLM(LM):
    def __init__(self, url: str, tokenizer: str | Path, served_model: Optional[str] = None,
                 api_key_env: Optional[str] = None, batch_size: int = 8, timeout: float = 300.0,
                 need_logprobs: bool = True):
        try:
            import httpx
        except ImportError:
            raise LlmctlError("--endpoint needs httpx", hint="pip install 'llmctl[serve]' (or httpx)") from None
        from tokenizers import Tokenizer

        from llmctl.data.tokenizer import tokenizer_sha256
        from llmctl.eval.artifact import artifact_folder
        from llmctl.export.hf import model_config_from_hf

        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise LlmctlError(f"--endpoint {url}: not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
        self.folder = artifact_folder(tokenizer)
        cfg_file = self.folder / "config.json"
        try:
            cj = json.loads(cfg_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise LlmctlError(f"{cfg_file}: not valid JSON: {e}") from None
        eos = cj.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if not isinstance(eos, int):
            raise LlmctlError(f"{cfg_file}: eos_token_id: missing; evaluation starts every text with it")
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.eos_id, self.eos_token = eos, self.tokenizer.id_to_token(eos)
        self.max_len = model_config_from_hf(cj, str(cfg_file)).max_seq_len
        self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        self.batch_size = batch_size
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise LlmctlError(f"--api-key-env {api_key_env}: the variable is not set or empty")
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.served_model = served_model or self._first_model()
        self.name = self.served_model
        if need_logprobs:  # fail now, not after the generation tasks ran
            self._score([self.eos_id, self.eos_id])

    # --- HTTP ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        import httpx

        where = f"--endpoint {self.url}"
        try:
            r = self.http.request(method, self.url + path, json=body)
        except httpx.HTTPError as e:
            raise LlmctlError(f"{where}: cannot reach {self.url + path}: {e or type(e).__name__}",
                              hint="is the server up? (`llmctl serve start`, or the job's endpoint.json)") from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code != 200:
            msg = ((data or {}).get("error") or {}).get("message") if isinstance(data, dict) else None
            raise LlmctlError(f"{where}: {method} {path} answered {r.status_code}: "
                              f"{msg or r.text[:200].strip() or r.reason_phrase}")
        if not isinstance(data, dict):
            raise LlmctlError(f"{where}: {method} {path} did not answer a JSON object")
        return data

    def _first_model(self) -> str:
        data = self._call("GET", "/models").get("data") or []
        if not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise LlmctlError(f"--endpoint {self.url}: GET /models lists no model", hint="pass --served-model")
        return str(data[0]["id"])

    def _score(self, ids: list[int]) -> tuple[list[Optional[float]], list[Optional[dict]]]:
        """token_logprobs and top_logprobs of the prompt `ids` (first entry null)."""
        body = {"model": self.served_model, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1,
                "temperature": 0}
        choice = (self._call("POST", "/completions", body).get("choices") or [{}])[0]
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        tl = (lp or {}).get("token_logprobs")
        top = (lp or {}).get("top_logprobs")
        if not isinstance(tl, list) or not isinstance(top, list) or len(tl) < len(ids) or len(top) < len(ids) \
                or any(v is None for v in tl[1:len(ids)]):
            raise LlmctlError(f"--endpoint {self.url}: the endpoint does not return prompt logprobs "
                              "(POST /completions with echo: true, logprobs: 1, max_tokens: 0)",
                              hint="loglikelihood and perplexity tasks need a server with legacy completions "
                                   "logprobs (llmctl serve, vLLM); generation-only tasks do not")
        # A server that generates a token anyway (max_tokens 0 refused) puts it at the end: drop it.
        return tl[:len(ids)], top[:len(ids)]

    def _map(self, fn, items: list) -> list:
        if self.batch_size <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            return list(pool.map(fn, items))

    # --- the LM interface -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        def one(req):
            ids, n = self.scoring_ids(*req)
            tl, top = self._score(ids)
            cont = range(len(ids) - n, len(ids))
            greedy = all(isinstance(top[i], dict) and top[i] and tl[i] >= max(top[i].values()) for i in cont)
            return float(sum(tl[i] for i in cont)), greedy

        return self._map(one, requests)

    def token_nll(self, ids: list[int]) -> list[tuple[float, int]]:
        def one(w):
            tl, _ = self._score(w)
            return -float(sum(tl[1:])), len(w) - 1

        return self._map(one, self.rolling_windows(ids))

    def generate_until(self, context: str, until: list[str], max_tokens: int) -> str:
        # Room for the answer, as lm-eval does: the server refuses a prompt + max_tokens
        # beyond its context (400, as OpenAI and vLLM), so the context keeps its last tokens.
        max_tokens = max(1, min(max_tokens, self.max_len - 1))
        ids = ([self.eos_id] + self.encode(context))[-max(self.max_len - max_tokens, 1):]
        body: dict[str, Any] = {"model": self.served_model, "prompt": ids, "max_tokens": max_tokens,
                                "temperature": 0}
        if until:
            body["stop"] = until[:4]  # OpenAI's limit; the rest are cut here
        choice = (self._call("POST", "/completions", body).get("choices") or [{}])[0]
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise LlmctlError(f"--endpoint {self.url}: POST /completions answered no choices[0].text")
        return cut_at_stops(text, until)

    def run_data_dir(self) -> Path:
        from llmctl.eval.artifact import run_data_dir

        return run_data_dir(self.folder, self.name)

    def describe(self) -> dict[str, Any]:
        return {"model_args": f"endpoint={self.url},model={self.served_model}", "endpoint": self.url,
                "served_model": self.served_model, "tokenizer": str(self.folder), "device": "remote"}
