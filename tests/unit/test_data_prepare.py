"""`llmctl data prepare`: real tokenizer training, real HDF5 shards, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("h5py")

from trainkit import make_project, prepare_data, quiet_env  # noqa: E402

from llmctl.errors import LlmctlError  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"))
    summary = prepare_data(root)
    return root, summary


def _shard_tokens(folder, split):
    import h5py
    import numpy as np

    meta = json.loads((folder / "meta.json").read_text())
    parts = []
    for s in meta["splits"][split]["shards"]:
        with h5py.File(folder / s["file"], "r") as f:
            parts.append(f["tokens"][:])
    return np.concatenate(parts)


def test_shards_round_trip_to_the_source_documents(prepared):
    # Decoding the training split gives back the real stdlib files, joined by eos.
    from tokenizers import Tokenizer

    from llmctl.data.sources import split_score, stdlib_files

    root, summary = prepared
    out = root / "data" / "tiny"
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = _shard_tokens(out, "train")
    eos = meta["tokenizer"]["eos_id"]
    docs = []
    start = 0
    for i, t in enumerate(ids.tolist()):
        if t == eos:
            docs.append(tok.decode(ids[start:i].tolist()))
            start = i + 1
    files = stdlib_files()[:40]
    train_files = [p for p in files if split_score(7, str(p)) >= 0.1]
    assert len(docs) == len(train_files) == summary["documents"]["train"]
    for text, path in zip(docs, train_files):
        assert text == path.read_bytes().decode("utf-8", errors="replace")
    assert ids.dtype.name == "uint16"
    assert int(ids.max()) < 512


def test_meta_counts_and_document_index_agree_with_the_shards(prepared):
    import h5py

    root, summary = prepared
    out = root / "data" / "tiny"
    meta = json.loads((out / "meta.json").read_text())
    eos = meta["tokenizer"]["eos_id"]
    for split in ("train", "val"):
        info = meta["splits"][split]
        assert len(_shard_tokens(out, split)) == info["tokens"] == summary["tokens"][split]
        starts_total = 0
        for s in info["shards"]:
            with h5py.File(out / s["file"], "r") as f:
                toks, starts = f["tokens"][:], f["doc_starts"][:]
                assert f.attrs["tokenizer_sha256"] == meta["tokenizer"]["sha256"]
            assert len(toks) <= 20000
            # every document start follows an eos (or opens the split)
            for st in starts:
                assert st == 0 or toks[st - 1] == eos
            starts_total += len(starts)
        assert starts_total == info["documents"]
    assert summary["documents"]["train"] + summary["documents"]["val"] == 40
    assert summary["documents"]["val"] > 0
    assert meta["sources"][0]["documents"] == 40


def test_unchanged_config_does_nothing(prepared):
    root, _ = prepared
    out = root / "data" / "tiny"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = prepare_data(root)
    assert again["up_to_date"] is True
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_workers_give_the_same_shards_as_one_process(prepared, tmp_path):
    import numpy as np

    root, _ = prepared
    other = make_project(tmp_path / "p2")
    s2 = prepare_data(other, workers=2)
    for split in ("train", "val"):
        assert np.array_equal(_shard_tokens(root / "data" / "tiny", split),
                              _shard_tokens(other / "data" / "tiny", split))
    assert s2["tokenizer_sha256"] == prepared[1]["tokenizer_sha256"]


def test_a_changed_config_prepares_again(tmp_path):
    root = make_project(tmp_path, docs=12)
    first = prepare_data(root)
    cfg = root / "configs" / "data" / "tiny.toml"
    cfg.write_text(cfg.read_text().replace("vocab_size = 512", "vocab_size = 300"))
    second = prepare_data(root)
    assert second["up_to_date"] is False and second["vocab_size"] == 300
    assert second["tokenizer_sha256"] != first["tokenizer_sha256"]
    assert not list(tmp_path.glob("data/.tiny.*"))  # no temporary folders left behind


def test_jsonl_and_glob_sources_and_a_given_tokenizer(prepared, tmp_path):
    root, summary = prepared
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"body": f"document number {i}: " + "lorem ipsum " * (i + 3)}) for i in range(30)]
    (corpus / "a.jsonl").write_text("\n".join(lines) + "\n")
    (corpus / "b.txt").write_text("a plain text file\n" * 20)
    tok = root / "data" / "tiny" / "tokenizer.json"
    (tmp_path / "d.toml").write_text(
        'val_fraction = 0.2\n[[sources]]\ntype = "jsonl"\npaths = ["corpus/*.jsonl"]\ntext_field = "body"\n'
        '[[sources]]\ntype = "glob"\npaths = ["corpus/*.txt"]\n'
        f'[tokenizer]\ntype = "file"\npath = "{tok}"\n[output]\ndir = "out"\n')
    r = subprocess.run([sys.executable, "-m", "llmctl", "data", "prepare", "--config", "d.toml", "--json"],
                       cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["documents"]["train"] + s["documents"]["val"] == 31
    assert s["tokenizer_sha256"] == summary["tokenizer_sha256"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert [src["documents"] for src in meta["sources"]] == [30, 1]


@pytest.mark.parametrize("case", ["no-match", "bad-jsonl", "tokenizer-without-eos"])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, case):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    (tmp_path / "tok.json").write_text("{}")
    body = {
        "no-match": ('[[sources]]\ntype = "glob"\npaths = ["nowhere/*.txt"]\n', "sources[0].paths[0]"),
        "bad-jsonl": ('[[sources]]\ntype = "jsonl"\npaths = ["c.jsonl"]\n', "c.jsonl:2: not valid JSON"),
        "tokenizer-without-eos": ('[[sources]]\ntype = "jsonl"\npaths = ["c.jsonl"]\n'
                                  '[tokenizer]\ntype = "file"\npath = "tok.json"\n', "tok.json"),
    }[case]
    (tmp_path / "d.toml").write_text(body[0] + '[output]\ndir = "out"\n')
    r = subprocess.run([sys.executable, "-m", "llmctl", "data", "prepare", "--config", "d.toml"],
                       cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "d.toml" in r.stderr and body[1] in r.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    root = make_project(tmp_path, docs=5)
    keep = root / "data" / "tiny" / "precious.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    r = subprocess.run([sys.executable, "-m", "llmctl", "data", "prepare", "--config", "configs/data/tiny.toml"],
                       cwd=root, env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not overwriting" in r.stderr
    assert keep.read_text() == "mine"


# `llmctl data prepare`, held after its 30th input file (tokenizer saved, shards being
# written) until it is killed: the kill lands mid-way however fast the machine is.
HELD_PREPARE = """
import sys, time
import llmctl.data.prepare as prepare
from llmctl.cli import main

_update = prepare._Progress.update

def update(self, done, tokens, final=False):
    _update(self, done, tokens, final)
    if done == 30 and not final:
        print("held", flush=True)
        time.sleep(3600)

prepare._Progress.update = update
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_leaves_nothing_a_later_run_trusts(tmp_path):
    from llmctl.data.shards import TokenStore

    root = make_project(tmp_path, docs=60)
    p = subprocess.Popen([sys.executable, "-c", HELD_PREPARE, "data", "prepare", "--config",
                          "configs/data/tiny.toml", "--workers", "1"], cwd=root, env=quiet_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "held", "prepare ended before its 30th file"
        assert list((root / "data").glob(".tiny.tmp-*"))  # the stage exists, half-filled
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert list((root / "data").glob(".tiny.tmp-*"))  # it died mid-way
    with pytest.raises(LlmctlError, match="no prepared data"):
        TokenStore(root / "data" / "tiny", "train")
    s = prepare_data(root)
    assert s["up_to_date"] is False
    assert not list((root / "data").glob(".tiny.tmp-*"))
    assert TokenStore(root / "data" / "tiny", "train").tokens == s["tokens"]["train"]


@pytest.mark.parametrize("damage", ["truncate", "missing", "foreign"])
def test_a_corrupt_shard_is_named(prepared, tmp_path, damage):
    import shutil

    from llmctl.data.shards import TokenStore

    root, _ = prepared
    out = tmp_path / "copy"
    shutil.copytree(root / "data" / "tiny", out)
    shard = out / "train-00001.h5"
    if damage == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "missing":
        shard.unlink()
    else:  # same size, another tokenizer's tokens
        import h5py

        with h5py.File(shard, "r+") as f:
            f.attrs["tokenizer_sha256"] = "0" * 64
    with pytest.raises(LlmctlError) as e:
        TokenStore(out, "train")
    assert "train-00001.h5" in e.value.message


def test_reading_across_shard_boundaries(prepared):
    from llmctl.data.shards import TokenStore

    root, _ = prepared
    store = TokenStore(root / "data" / "tiny", "train")
    whole = _shard_tokens(root / "data" / "tiny", "train")
    for start in (0, 19990, 20000, 39_999, store.tokens - 50):
        assert store.read(start, 50).tolist() == whole[start:start + 50].tolist()
    with pytest.raises(IndexError):
        store.read(store.tokens - 10, 11)


def test_token_dtype_follows_the_vocabulary():
    from llmctl.data.tokenizer import token_dtype

    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"


def test_data_prepare_imports_no_torch(prepared):
    root, _ = prepared
    code = ("import sys, json\nfrom llmctl.cli import main\nrc = main(['data', 'prepare', '--config', "
            "'configs/data/tiny.toml'])\nprint(json.dumps([rc, 'torch' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=quiet_env(), capture_output=True,
                       text=True, timeout=60)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, False], r.stderr
