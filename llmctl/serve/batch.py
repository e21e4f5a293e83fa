"""`llmctl serve batch`: answer an OpenAI batch file (JSONL), resumably.

In: one request a line, `{"custom_id", "method": "POST", "url":
"/v1/completions" | "/v1/chat/completions", "body"}`. Out: one result a line,
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`,
appended and flushed as each request finishes, in finishing order. On a rerun
(a requeued or resubmitted job) the custom_ids already in the output are
skipped; a torn last line (the job was killed mid-write) is cut off first.
A request that fails (a bad body, or alone in the engine) gets an error line;
the others still run.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.jsonl import read_objects

URLS = {"/v1/completions": False, "/v1/chat/completions": True}
IN_FLIGHT = 256  # requests handed to the engine at once


def read_requests(path: Path) -> list[dict]:
    if not path.is_file():
        raise LlmctlError(f"{path}: input file not found")
    out, seen = [], set()
    for n, req in read_objects(path, "a line", finite=True):  # NaN would reach the sampler
        where = f"{path}:{n}"
        cid = req.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise LlmctlError(f"{where}: custom_id: missing or not a string")
        if cid in seen:
            raise LlmctlError(f"{where}: custom_id: {cid!r} appears twice")
        seen.add(cid)
        if req.get("method", "POST") != "POST":
            raise LlmctlError(f"{where}: method: must be POST")
        if not isinstance(req.get("url"), str) or req["url"] not in URLS:
            raise LlmctlError(f"{where}: url: {req.get('url')!r} is not one of {', '.join(URLS)}")
        if not isinstance(req.get("body"), dict):
            raise LlmctlError(f"{where}: body: must be an object")
        out.append(req)
    return out


def answered(path: Path) -> set[str]:
    """custom_ids already in the output; cuts a torn last line."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):  # killed mid-line: drop the fragment
        with open(path, "r+b") as f:
            f.truncate(good)
    done = set()
    for line in data[:good].decode("utf-8").splitlines():
        if line.strip():
            done.add(json.loads(line)["custom_id"])
    return done


def run_batch(engine, model_name: str, input_path: str, output_path: str, settings) -> dict[str, int]:
    from llmctl.serve import protocol as P
    from llmctl.hw import threads
    from llmctl.serve import testhooks
    from llmctl.serve.validate import check_tree

    # the job's CPUs, not the node's
    threads.apply(getattr(settings, "threads", None), "the serve config's threads")

    inp, outp = Path(input_path), Path(output_path)
    reqs = read_requests(inp)
    done = answered(outp)
    todo = [r for r in reqs if r["custom_id"] not in done]
    outp.parent.mkdir(parents=True, exist_ok=True)
    counts = {"total": len(reqs), "skipped": len(reqs) - len(todo), "answered": 0, "errors": 0}
    with open(outp, "a", encoding="utf-8") as out:
        def write(req, body=None, error=None):
            line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": req["custom_id"],
                    "response": None if body is None else {
                        "status_code": 200, "request_id": body["id"], "body": body},
                    "error": error}
            out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())
            counts["errors" if error else "answered"] += 1

        pending = iter(todo)
        inflight: dict[int, tuple] = {}
        while True:
            while len(inflight) < IN_FLIGHT:
                req = next(pending, None)
                if req is None:
                    break
                chat = URLS[req["url"]]
                try:
                    check_tree(req["body"])
                    params = P.sampling_params(req["body"], settings.max_tokens_limit, chat,
                                               testhooks.enabled(), vocab_size=engine.cfg.vocab_size)
                    seqs = P.sequences(req["body"], chat, params, engine.tokenizer, settings.max_prompt_tokens,
                                       engine.cfg.vocab_size, engine.cfg.max_seq_len)
                    for seq in seqs:
                        problem = engine.check(seq)
                        if problem:
                            raise P.ApiError(400, problem)
                except P.ApiError as e:
                    write(req, error={"code": e.code or e.type, "message": e.message})
                    continue
                group = (seqs, req, chat)
                for seq in seqs:
                    engine.add(seq)
                    inflight[seq.seq_id] = group
            if not inflight:
                break
            for seq in engine.step():
                if seq.finished and seq.seq_id in inflight:
                    seqs, req, chat = inflight.pop(seq.seq_id)
                    if any(s.seq_id in inflight for s in seqs):
                        continue  # another choice of this request still runs
                    bad = [s for s in seqs if s.finish_reason == "error"]
                    if bad:
                        write(req, error={"code": "server_error", "message": f"generation failed: {bad[0].error}"})
                    else:
                        n, _ = P.choice_counts(req["body"], chat)
                        write(req, body=P.response(seqs, P.new_id(chat), model_name, chat, engine.tokenizer, n=n,
                                                   token_ids=bool(req["body"].get("return_token_ids"))))
    return counts
