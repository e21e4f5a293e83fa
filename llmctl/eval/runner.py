"""Run a suite's tasks on a model and build lm-evaluation-harness-shaped results.

The results dict has the harness's top-level layout (`results` with "metric,filter"
and "metric_stderr,filter" keys, `configs`, `versions`, `n-shot`,
`higher_is_better`, `n-samples`, `config`, `git_hash`, `date`), so tools that read
harness results read ours. The filter is always "none" (no answer extraction).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from llmctl.config.eval import METRICS
from llmctl.errors import LlmctlError
from llmctl.eval import metrics as M
from llmctl.eval import tasks as T

FILTER = "none"


class Progress:
    """One line per task on stderr: a bar redrawn in place on a terminal, else the final line."""

    def __init__(self, name: str, total: int, enabled: bool = True):
        self.name, self.total, self.done = name, max(total, 1), 0
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.t0 = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            self._draw("\r")

    def close(self) -> None:
        if self.enabled:
            self._draw("\r" if self.tty else "")
            sys.stderr.write("\n")

    def _draw(self, lead: str) -> None:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
        sys.stderr.write(f"{lead}{self.name:<20} [{bar}] {self.done}/{self.total} "
                         f"{time.monotonic() - self.t0:.1f}s")
        sys.stderr.flush()


def git_hash(where: Path) -> Optional[str]:
    """Short commit hash of the project folder, or None outside a git checkout."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


# --- per task type -------------------------------------------------------------------

def _perplexity_items(lm, task: T.Task, limit: Optional[int], progress: bool):
    """(samples, columns): one item per window (data config) or per document (JSONL)."""
    cfg = task.cfg
    samples = []
    if cfg.data_config:
        # --limit N: N windows, each predicting `stride` tokens (N * max_len would make N + 1).
        ids = _validation_tokens(lm, task)[: (limit * lm.stride) if limit else None]
        bar = Progress(task.name, -(-len(ids) // lm.stride), progress)
        windows = lm.token_nll(ids)
        # Bytes of each window's text, to turn nats per token into bits per byte.
        stream = [lm.eos_id] + list(ids)
        for j, (nll, n) in enumerate(windows):
            start = j * lm.stride + 1
            nbytes = len(lm.decode(stream[start:start + n]).encode("utf-8"))
            samples.append({"doc_id": j, "doc": {"window": j, "tokens": n}, "nll": nll, "tokens": n,
                            "bytes": nbytes})
            bar.update()
        bar.close()
    else:
        docs = task.docs()[:limit] if limit else task.docs()
        bar = Progress(task.name, len(docs), progress)
        for i, doc in enumerate(docs):
            text = str(T.apply(cfg.doc_to_text, doc, task, "doc_to_text"))
            ids = lm.encode(text)
            parts = lm.token_nll(ids) if ids else []
            samples.append({"doc_id": i, "doc": doc, "nll": sum(p[0] for p in parts),
                            "tokens": sum(p[1] for p in parts), "bytes": len(text.encode("utf-8"))})
            bar.update()
        bar.close()
    if not samples:
        raise LlmctlError(f"{task.path}: task {task.name!r}: no text to evaluate")
    cols = [[s["nll"] for s in samples], [s["tokens"] for s in samples], [s["bytes"] for s in samples]]
    return samples, cols


def _validation_tokens(lm, task: T.Task) -> list[int]:
    """The validation split of the task's data config ("run": the data the model trained on)."""
    from llmctl.data.shards import TokenStore, read_meta

    spec = task.cfg.data_config
    if spec == "run":
        data_dir = lm.run_data_dir()
    else:
        from llmctl.config.base import load_config
        from llmctl.config.data import DataConfig

        p = Path(spec).expanduser()
        p = p if p.is_absolute() else task.path.parent / p
        dcfg = load_config(p, DataConfig)
        cands = [Path(dcfg.output.dir).expanduser(), p.parent / dcfg.output.dir]
        cands += [q / dcfg.output.dir for q in p.parent.parents]
        data_dir = next((c for c in cands if (c / "meta.json").is_file()), None)
        if data_dir is None:
            raise LlmctlError(f"{task.path}: data_config: {p}: no prepared data at {dcfg.output.dir!r}",
                              hint=f"run `llmctl data prepare --config {p}` first")
    want = lm.tokenizer_sha256
    if want is not None and read_meta(data_dir)["tokenizer"]["sha256"] != want:
        raise LlmctlError(f"{task.path}: data_config: {data_dir} was tokenized with another tokenizer "
                          f"than {lm.name}'s (vocabulary mismatch)",
                          hint="prepare that data with the model's tokenizer (tokenizer.type = \"file\")")
    store = TokenStore(data_dir, "val")
    try:
        if store.tokens == 0:
            raise LlmctlError(f"{data_dir}: the validation split is empty", hint="raise val_fraction")
        return store.read(0, store.tokens).tolist()
    finally:
        store.close()


def _choice_items(lm, task: T.Task, limit: Optional[int], seed: int, progress: bool):
    cfg = task.cfg
    docs = task.docs()
    n = min(limit, len(docs)) if limit else len(docs)
    reqs, spans, samples = [], [], []
    for i in range(n):
        ctx = T.fewshot_context(task, i, seed)
        choices = T.choices_of(task, docs[i])
        gold = T.gold_index(task, docs[i], choices)
        spans.append((len(reqs), choices, gold, ctx))
        reqs += [(ctx, cfg.target_delimiter + c) for c in choices]
    bar = Progress(task.name, n, progress)
    scores: list[tuple[float, bool]] = []
    per = max(1, lm.batch_size)
    for b in range(0, len(reqs), per):
        scores += lm.loglikelihood(reqs[b:b + per])
        bar.done = sum(1 for s in spans if s[0] < len(scores)) - 1
        bar.update()
    bar.close()
    acc, acc_norm = [], []
    for i, (start, choices, gold, ctx) in enumerate(spans):
        lls = [scores[start + j][0] for j in range(len(choices))]
        # acc_norm: loglikelihood per byte of the choice, so long answers are not penalised.
        norm = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, choices)]
        a = float(max(range(len(lls)), key=lls.__getitem__) == gold)
        an = float(max(range(len(norm)), key=norm.__getitem__) == gold)
        acc.append(a)
        acc_norm.append(an)
        samples.append({"doc_id": i, "doc": docs[i], "target": gold,
                        "arguments": [[ctx, cfg.target_delimiter + c] for c in choices],
                        "resps": [[[ll, scores[start + j][1]]] for j, ll in enumerate(lls)],
                        "filtered_resps": [[ll, scores[start + j][1]] for j, ll in enumerate(lls)],
                        "acc": a, "acc_norm": an})
    return samples, {"acc": acc, "acc_norm": acc_norm}


def _generate_items(lm, task: T.Task, limit: Optional[int], seed: int, progress: bool):
    cfg = task.cfg
    docs = task.docs()
    n = min(limit, len(docs)) if limit else len(docs)
    bar = Progress(task.name, n, progress)
    samples, em = [], []
    for i in range(n):
        ctx = T.fewshot_context(task, i, seed)
        target = T.target_text(task, docs[i])
        out = lm.generate_until(ctx, cfg.until, cfg.max_gen_toks)
        hit = float(out.strip() == target.strip())
        em.append(hit)
        samples.append({"doc_id": i, "doc": docs[i], "target": target, "arguments": [[ctx, {"until": cfg.until}]],
                        "resps": [[out]], "filtered_resps": [out], "exact_match": hit})
        bar.update()
    bar.close()
    return samples, {"exact_match": em}


# --- the suite ---------------------------------------------------------------------------

def evaluate(lm, suite, tasks: list[T.Task], limit: Optional[int] = None, log_samples: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run `tasks` on `lm`; returns the results dict (with `samples` when asked)."""
    import numpy as np

    started = time.time()
    out: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {},
                           "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
    all_samples: dict[str, list] = {}
    for task in tasks:
        cfg = task.cfg
        lim = limit or task.limit
        names = list(cfg.metrics) or list(METRICS[cfg.output_type])
        res: dict[str, Any] = {"alias": task.name}
        if cfg.output_type == "perplexity":
            samples, cols = _perplexity_items(lm, task, lim, progress)
            agg = M.perplexity_parts(*[np.asarray(c, dtype=np.float64) for c in cols])
            errs = M.bootstrap(cols, M.perplexity_parts, suite.bootstrap_iters, suite.seed) or {}
            for m in names:
                res[f"{m},{FILTER}"] = float(agg[m])
                res[f"{m}_stderr,{FILTER}"] = errs.get(m, "N/A")
            original = len(samples)
        else:
            if cfg.output_type == "multiple_choice":
                samples, per = _choice_items(lm, task, lim, suite.seed, progress)
            else:
                samples, per = _generate_items(lm, task, lim, suite.seed, progress)
            for m in names:
                res[f"{m},{FILTER}"] = float(np.mean(per[m]))
                err = M.bootstrap([per[m]], M.mean, suite.bootstrap_iters, suite.seed)
                res[f"{m}_stderr,{FILTER}"] = err if err is not None else "N/A"
            original = len(task.docs())
        out["results"][task.name] = res
        out["group_subtasks"][task.name] = []
        out["configs"][task.name] = {
            **cfg.to_data(), "metric_list": [{"metric": m, "aggregation": "perplexity" if
                                              cfg.output_type == "perplexity" else "mean",
                                              "higher_is_better": M.HIGHER_IS_BETTER[m]} for m in names],
            "metadata": {"version": float(cfg.version) if _is_number(cfg.version) else cfg.version}}
        out["versions"][task.name] = float(cfg.version) if _is_number(cfg.version) else cfg.version
        out["n-shot"][task.name] = cfg.num_fewshot
        out["higher_is_better"][task.name] = {m: M.HIGHER_IS_BETTER[m] for m in names}
        out["n-samples"][task.name] = {"original": original, "effective": len(samples)}
        if log_samples:
            all_samples[task.name] = samples
    ended = time.time()
    out["config"] = {
        "model": "llmctl", **lm.describe(), "batch_size": lm.batch_size,
        "limit": limit, "bootstrap_iters": suite.bootstrap_iters,
        "fewshot_seed": suite.seed, "suite": suite.name}
    eos = lm.eos_token
    # The harness's remaining top-level keys, so readers that index them find them;
    # what has no meaning for an llmctl checkpoint (chat templates, HF revisions) is null.
    out.update({
        "git_hash": git_hash(Path.cwd()), "date": started,
        "pretty_env_info": _env_info(out["config"].get("device")),
        "transformers_version": None, "upper_git_hash": None,
        "tokenizer_pad_token": None, "tokenizer_eos_token": [eos, str(lm.eos_id)], "tokenizer_bos_token": None,
        "eot_token_id": lm.eos_id, "max_length": lm.max_len, "task_hashes": {},
        "model_source": "llmctl", "model_name": lm.name, "model_name_sanitized": lm.name.replace("/", "__"),
        "system_instruction": None, "system_instruction_sha": None, "fewshot_as_multiturn": False,
        "chat_template": None, "chat_template_sha": None,
        "start_time": started, "end_time": ended, "total_evaluation_time_seconds": str(ended - started),
    })
    if log_samples:
        out["samples"] = all_samples
    return out


def _env_info(device) -> str:
    # The torch version without importing torch: an endpoint eval never loads it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_v = version("torch")
    except PackageNotFoundError:
        torch_v = "none"
    return f"PyTorch version: {torch_v}; device: {device}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_results(results: dict[str, Any], output: Path) -> list[Path]:
    """The results JSON and, if present, one samples JSONL per task next to it (all atomic)."""
    import json

    from llmctl.fsutil import atomic_write_text

    samples = results.pop("samples", None)
    written = []
    if samples:
        for name, rows in samples.items():
            p = output.with_name(f"{output.stem}_samples_{name}.jsonl")
            atomic_write_text(p, "".join(json.dumps(r, default=str) + "\n" for r in rows))
            written.append(p)
    atomic_write_text(output, json.dumps(results, indent=2, default=str) + "\n")
    return [output, *written]


def summary_table(results: dict[str, Any]) -> str:
    """The harness's markdown table: task, version, n-shot, metric, value, stderr."""
    lines = ["|Tasks|Version|n-shot|Metric| |Value| |Stderr|", "|---|---:|---:|---|---|---:|---|---:|"]
    for task, res in results["results"].items():
        for key, value in res.items():
            if "," not in key or "_stderr," in key:
                continue
            metric = key.split(",")[0]
            err = res.get(f"{metric}_stderr,{FILTER}", "N/A")
            arrow = "↑" if results["higher_is_better"][task].get(metric) else "↓"
            err_s = f"{err:.4f}" if isinstance(err, float) else str(err)
            lines.append(f"|{task}|{results['versions'][task]}|{results['n-shot'][task]}|{metric}|{arrow}|"
                         f"{value:.4f}|±|{err_s}|")
    return "\n".join(lines)
