"""`llmctl data prepare`: documents -> tokenizer -> token ids -> HDF5 shards.

Idempotent: the output's meta.json records a fingerprint of the config, of every
input file (path, size, mtime) and of the tokenizer file; an unchanged config finds
it and does nothing. Crash-safe: everything is written into a temporary sibling
folder that is renamed into place only when complete (meta.json included), so an
interrupted run leaves no shard that a later run or the trainer would trust. A full
disk is one line (the file, the space left); the temporary folder is removed and the
data already there stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from llmctl.data.shards import FORMAT, META, TOKENIZER, ShardWriter
from llmctl.data.sources import Unit, file_fingerprint, list_units, read_documents, split_score
from llmctl.errors import LlmctlError

_worker_tok = None
_worker_eos = 0
_GROUP = 8  # files per encode_batch call (and per task sent to a worker)


def output_dir(cfg, base: Path) -> Path:
    """The config's output folder; relative paths are taken from `base` (the project folder)."""
    p = Path(cfg.output.dir).expanduser()
    return p if p.is_absolute() else base / p


def _fingerprint(cfg, units: list[Unit], base: Path) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(json.dumps(cfg.to_data(), sort_keys=True).encode())
    h.update(file_fingerprint(units).encode())
    if cfg.tokenizer.type == "file":
        h.update(_resolve(cfg.tokenizer.path, base).read_bytes())
    if any(u.kind == "chat" for u in units):
        template, specials = _chat_template(cfg, base)
        h.update(json.dumps([template, specials], sort_keys=True).encode())
    return h.hexdigest()


def _chat_template(cfg, base: Path):
    from llmctl.data.chat import find_template

    t = cfg.tokenizer
    return find_template(_resolve(t.path, base) if t.type == "file" else None,
                         _resolve(t.chat_template, base) if t.chat_template else None)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _is_current(out: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """meta.json if `out` holds complete data made from the same fingerprint."""
    try:
        meta = json.loads((out / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint:
        return None
    for split in meta.get("splits", {}).values():
        for s in split["shards"]:
            p = out / s["file"]
            if not p.is_file() or p.stat().st_size != s["bytes"]:
                return None
    return meta


def _documents(units: list[Unit], cap: Optional[int], chat=None) -> Iterator[tuple[str, str]]:
    from llmctl.data.sources import read_conversations

    n = 0
    for u in units:
        docs = ((k, chat.text(m)) for k, m in read_conversations(u)) if u.kind == "chat" else read_documents(u)
        for key, text in docs:
            if cap is not None and n >= cap:
                return
            n += 1
            yield key, text


def _init_worker(tok_json: str, eos_id: int) -> None:
    # One process = one core: the tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    global _worker_tok, _worker_eos
    _worker_tok = Tokenizer.from_str(tok_json)
    _worker_eos = eos_id


def _encode_units(units: list[Unit]) -> list[list[tuple[str, Any]]]:
    """Token ids of each document of each unit, each followed by the end-of-text id.

    One encode_batch call for several files: the tokenizer's per-call overhead and
    (in-process) its thread pool then work on many documents at once.
    """
    import numpy as np

    per_unit = [list(read_documents(u)) for u in units]
    encs = iter(_worker_tok.encode_batch([t for docs in per_unit for _, t in docs], add_special_tokens=False))
    out = []
    for docs in per_unit:
        encoded = []
        for key, _ in docs:
            ids = np.array(next(encs).ids + [_worker_eos], dtype=np.uint32)
            encoded.append((key, ids))
        out.append(encoded)
    return out


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, tokens: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last = now
        frac = done / max(self.total, 1)
        bar = "#" * int(frac * 30)
        rate = tokens / max(now - self.t0, 1e-9)
        line = (f"tokenizing [{bar:<30}] {done}/{self.total} files  {tokens:,} tokens  "
                f"{rate:,.0f} tokens/s")
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


def prepare(cfg, config_name: str, base: Path | None = None, workers: Optional[int] = None,
            progress: bool = False, force: bool = False) -> dict[str, Any]:
    """Prepare the data `cfg` (a DataConfig read from `config_name`) describes.

    Returns a summary: output folder, whether it was already up to date, token and
    document counts per split, shard count, tokenizer, seconds and tokens/s.
    """
    base = Path(base or Path.cwd()).absolute()
    t0 = time.monotonic()
    units = list_units(cfg, config_name, base)
    out = output_dir(cfg, base)
    fingerprint = _fingerprint(cfg, units, base)
    meta = None if force else _is_current(out, fingerprint)
    if meta is not None:
        return _summary(out, meta, up_to_date=True, seconds=time.monotonic() - t0)
    if out.exists() and not out.is_dir():
        raise LlmctlError(f"{config_name}: output.dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise LlmctlError(f"{config_name}: output.dir {out} exists and holds no prepared data "
                          f"(no {META}); not overwriting it", hint="choose an empty or new output.dir")
    from llmctl.fsutil import writing

    with writing(out.parent, "data prepare"):
        out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    with writing(out.parent, "data prepare"):
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    _umask = os.umask(0)
    os.umask(_umask)
    os.chmod(stage, 0o777 & ~_umask)  # mkdtemp makes 0700; the data is shared like any output
    try:
        meta = _build(cfg, config_name, base, units, stage, fingerprint, workers, progress)
        _swap_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return _summary(out, meta, up_to_date=False, seconds=time.monotonic() - t0)


def _build(cfg, config_name, base, units, stage, fingerprint, workers, progress) -> dict[str, Any]:
    from llmctl.data.tokenizer import load_tokenizer, token_dtype, tokenizer_sha256, train_bpe

    tcfg = cfg.tokenizer

    def is_val(key: str) -> bool:
        return split_score(cfg.seed, key) < cfg.val_fraction

    chat = None
    if any(u.kind == "chat" for u in units):
        from llmctl.data.chat import ChatRenderer

        chat = ChatRenderer(*_chat_template(cfg, base))
    try:
        if tcfg.type == "bpe":
            # Trained on the training split only, so validation text stays unseen.
            texts = (t for k, t in _documents(units, cfg.max_documents, chat) if not is_val(k))
            tok = train_bpe(texts, tcfg.vocab_size, tcfg.eos_token)
        else:
            tok = load_tokenizer(str(_resolve(tcfg.path, base)), tcfg.eos_token,
                                 f"{config_name}: tokenizer.path")
    except ValueError as e:  # a malformed JSONL line
        raise LlmctlError(f"{config_name}: {e}") from None
    from llmctl.fsutil import writing

    with writing(stage / TOKENIZER, "data prepare"):
        tok.save(str(stage / TOKENIZER))
    vocab = tok.get_vocab_size()
    eos_id = tok.token_to_id(tcfg.eos_token)
    dtype = token_dtype(vocab)
    attrs = {"tokenizer_sha256": tokenizer_sha256(tok), "vocab_size": vocab, "eos_id": eos_id}
    writers = {s: ShardWriter(stage, s, dtype, cfg.output.shard_tokens, attrs) for s in ("train", "val")}
    per_source = [0] * len(cfg.sources)

    bar = _Progress(len(units), progress)
    done = tokens = docs = 0
    import numpy as np

    encoded_units = _encode_all(units, tok, eos_id, workers) if chat is None else \
        _encode_with_masks(units, tok, eos_id, chat)
    try:
        for unit, encoded in zip(units, encoded_units):
            for key, ids, *mask in encoded:
                if cfg.max_documents is not None and docs >= cfg.max_documents:
                    break
                docs += 1
                per_source[unit.source] += 1
                # With chat data every document carries a mask: plain text counts whole.
                m = (mask[0] if mask else np.ones(len(ids), dtype=np.uint8)) if chat is not None else None
                writers["val" if is_val(key) else "train"].add(ids, m)
                tokens += len(ids)
            done += 1
            bar.update(done, tokens)
            if cfg.max_documents is not None and docs >= cfg.max_documents:
                break
    except ValueError as e:
        raise LlmctlError(f"{config_name}: {e}") from None
    bar.update(done, tokens, final=True)
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"]["documents"] == 0:
        raise LlmctlError(f"{config_name}: no training documents (all {docs} went to validation)",
                          hint="lower val_fraction or add documents")
    if cfg.val_fraction > 0 and splits["val"]["documents"] == 0:
        raise LlmctlError(f"{config_name}: val_fraction {cfg.val_fraction} selected none of the "
                          f"{docs} documents for validation", hint="raise val_fraction or add documents")
    meta = {
        "format": FORMAT, "name": cfg.name, "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tokenizer": {"file": TOKENIZER, "type": tcfg.type, "sha256": attrs["tokenizer_sha256"],
                      "vocab_size": vocab, "eos_token": tcfg.eos_token, "eos_id": eos_id},
        "dtype": dtype, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
        "sources": [{**s.to_data(), "files": sum(1 for u in units if u.source == i),
                     "documents": per_source[i]} for i, s in enumerate(cfg.sources)],
        "splits": splits,
        **({"loss_mask": True} if chat is not None else {}),
    }
    from llmctl.fsutil import atomic_write_text

    atomic_write_text(stage / META, json.dumps(meta, indent=2) + "\n")
    return meta


def _encode_all(units, tok, eos_id, workers) -> Iterator[list]:
    """Encoded documents of each unit, in unit order, using `workers` processes."""
    workers = workers or os.cpu_count() or 1
    groups = [units[i:i + _GROUP] for i in range(0, len(units), _GROUP)]
    if workers <= 1 or len(groups) < 2:
        global _worker_tok, _worker_eos
        _worker_tok, _worker_eos = tok, eos_id
        try:
            for g in groups:
                yield from _encode_units(g)
        finally:
            _worker_tok = None
        return
    import multiprocessing

    # spawn, not fork: the parent has used the tokenizer's thread pool already.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(groups)), initializer=_init_worker,
                  initargs=(tok.to_str(), eos_id)) as pool:
        # imap keeps unit order (reproducible shards) while workers run ahead.
        for result in pool.imap(_encode_units, groups):
            yield from result


def _encode_with_masks(units, tok, eos_id, chat) -> Iterator[list]:
    """Encoded documents with loss masks (chat sources: answers only), in this process."""
    import numpy as np

    from llmctl.data.chat import encode_conversation
    from llmctl.data.sources import read_conversations

    for u in units:
        if u.kind == "chat":
            yield [(key, *encode_conversation(chat, tok, eos_id, msgs, key)) for key, msgs in read_conversations(u)]
        else:
            yield [(key, np.array(tok.encode(text, add_special_tokens=False).ids + [eos_id], dtype=np.uint32))
                   for key, text in read_documents(u)]


def _clean_stale(out: Path) -> None:
    """Remove temporary folders that an interrupted earlier run left next to `out`."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _swap_into_place(stage: Path, out: Path) -> None:
    """Put the complete `stage` folder at `out`; old data is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summary(out: Path, meta: dict[str, Any], up_to_date: bool, seconds: float) -> dict[str, Any]:
    splits = meta["splits"]
    total = sum(s["tokens"] for s in splits.values())
    return {
        "output": str(out), "up_to_date": up_to_date, "name": meta["name"],
        "tokens": {k: v["tokens"] for k, v in splits.items()},
        "documents": {k: v["documents"] for k, v in splits.items()},
        "shards": sum(len(v["shards"]) for v in splits.values()),
        "vocab_size": meta["tokenizer"]["vocab_size"], "dtype": meta["dtype"],
        "tokenizer_sha256": meta["tokenizer"]["sha256"],
        "seconds": round(seconds, 3),
        "tokens_per_s": None if up_to_date else round(total / max(seconds, 1e-9)),
    }


def load_data_config(path: str):
    """Read a data config file (errors name file, key path and problem)."""
    from llmctl.config.base import load_config
    from llmctl.config.data import DataConfig

    return load_config(path, DataConfig)
