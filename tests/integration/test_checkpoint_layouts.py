"""One checkpoint format story, on real gloo ranks: every layout the equivalence tests train
(one process, DDP, FSDP2, ZeRO 1/2/3, tp=2 with and without sequence parallelism, pp=2 in
three schedules, and the 4-rank meshes) writes a checkpoint that

- exports: consolidated tensor by tensor, written as a Hugging Face folder, loaded by
  transformers, whose fp32 logits equal the single-process model's within 1e-5;
- resumes under another layout and rank count (dp=2 -> tp=2, pp=2 -> one process,
  4 ranks -> 2, ZeRO <-> DDP/FSDP2/pp, one process -> ZeRO or FSDP2) with losses equal
  to an uninterrupted single-process run's within the equivalence tests' 1e-5.

And through the real trainer and CLI: a dp=2 run's sharded checkpoint exports with
`llmctl export`, and `llmctl eval run --checkpoint` on it scores exactly as `eval run
--artifact` on its export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from parallel_worker import MODEL, SEQ  # noqa: E402
from test_parallel_equivalence import FOUR_RANKS, LOSS_TOL, TWO_RANKS, WORKER, free_port, worker_env  # noqa: E402

LOGIT_TOL = 1e-5
# (resumed layout, checkpoint it starts from): another layout and, for some, another rank count.
RESUME_TWO = {
    "ddp_to_tp2": ({"tp": 2}, "ddp"),
    "zero2_to_ddp": ({"dp": 2}, "zero2"),
    "ddp_to_zero3": ({"dp": 2, "dp_mode": "zero", "zero_stage": 3}, "ddp"),
    "tp2_to_zero1": ({"dp": 2, "dp_mode": "zero", "zero_stage": 1}, "tp2"),
    "single_to_fsdp2": ({"dp": 2, "dp_mode": "fsdp"}, "single"),
    "single_to_zero2": ({"dp": 2, "dp_mode": "zero", "zero_stage": 2}, "single"),
    "dp2_tp2_to_pp2": ({"pp": 2}, "dp2_tp2"),              # 4 ranks -> 2
    "pp2_dp2_to_fsdp2": ({"dp": 2, "dp_mode": "fsdp"}, "pp2_dp2"),  # 4 ranks -> 2
    "zero3_to_pp2_interleaved": ({"pp": 2, "vpp": 2, "schedule": "interleaved"}, "zero3"),
}
RESUME_FOUR = {
    "ddp_to_dp2_tp2": ({"dp": 2, "tp": 2, "dp_mode": "fsdp"}, "ddp"),  # 2 ranks -> 4
    "single_to_pp2_tp2_sp": ({"pp": 2, "tp": 2, "sequence_parallel": True}, "single"),
}
RESUME_ONE = {"pp2_1f1b_to_single": "pp2_1f1b", "zero3_to_single": "zero3", "dp2_tp2_sp_to_single": "dp2_tp2_sp"}


def _launch(out: Path, ranks: int, layouts: dict) -> None:
    if ranks == 1:
        cmd = [sys.executable, str(WORKER), str(out), json.dumps(layouts), "--single"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(out),
               json.dumps(layouts)]
    r = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]


def _resumes(table: dict) -> dict:
    return {f"r_{name}": {**layout, "resume": src, "start": 3, "val": False}
            for name, (layout, src) in table.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    _launch(out, 1, {"single": {"save": True}, "single6": {"steps": 6, "val": False}})
    _launch(out, 2, {k: {**v, "save": True, "val": False} for k, v in TWO_RANKS.items()})
    _launch(out, 4, {**{k: {**v, "save": True, "val": False} for k, v in FOUR_RANKS.items()},
                     **_resumes(RESUME_FOUR)})
    _launch(out, 2, _resumes(RESUME_TWO))
    _launch(out, 1, {f"r_{n}": {"resume": src, "start": 3, "val": False} for n, src in RESUME_ONE.items()})
    return out


def _params(out: Path, name: str) -> dict:
    params = {}
    for f in sorted(out.glob(f"{name}.rank*.pt")):
        params.update(torch.load(f)["params"])
    return params


def _llmctl_logits(params: dict, x):
    from llmctl.config.model import ModelConfig
    from llmctl.model.transformer import Transformer

    model = Transformer(ModelConfig(**MODEL)).eval()
    model.load_state_dict(params)
    with torch.no_grad():
        return model(x)


TOKENS = torch.randint(0, MODEL["vocab_size"], (3, SEQ), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", ["single", *TWO_RANKS, *FOUR_RANKS])
def test_every_layouts_checkpoint_exports_with_the_single_process_logits(runs, name, tmp_path):
    from llmctl.config.model import ModelConfig
    from llmctl.export.hf import _source_reader, _write
    from llmctl.parallel.checkpoint import Source

    cfg = ModelConfig(**MODEL)
    src = Source(runs / f"ckpt-{name}")
    assert src.kind == ("safetensors" if name == "single" else "dcp")
    art = _write(cfg, _source_reader(src, set(src.model_names()), cfg, name), tmp_path / "art", "fp32",
                 None, None, {"source_checkpoint": name})
    hf = transformers.AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(TOKENS).logits
    # the export is exactly the layout's own weights, and those are the single process's
    own = _llmctl_logits(_params(runs, name), TOKENS)
    ref = _llmctl_logits(_params(runs, "single"), TOKENS)
    assert (got - own).abs().max().item() <= LOGIT_TOL, name
    assert (got - ref).abs().max().item() <= LOGIT_TOL, name


@pytest.mark.parametrize("name", [*RESUME_TWO, *RESUME_FOUR, *RESUME_ONE])
def test_resume_under_another_layout_continues_the_uninterrupted_run(runs, name):
    ref = torch.load(runs / "single6.rank0.pt")["losses"][3:]
    got = torch.load(runs / f"r_{name}.rank0.pt")["losses"]
    assert len(got) == 3
    for step, (a, b) in enumerate(zip(got, ref), start=4):
        assert abs(a - b) <= LOSS_TOL, f"{name}: step {step} loss {a} vs uninterrupted {b}"


def test_consolidation_reads_one_tensor_at_a_time(runs, monkeypatch):
    """Export asks DCP for one weight per read (never the whole model)."""
    import torch.distributed.checkpoint as dcp

    from llmctl.parallel.checkpoint import Source

    sizes = []
    real = dcp.load

    def spy(state, **kw):
        sizes.append(len(state))
        return real(state, **kw)

    monkeypatch.setattr(dcp, "load", spy)
    src = Source(runs / "ckpt-dp2_tp2")
    names = src.model_names()
    assert len(dict(src.model_tensors())) == len(names) > 10
    assert sizes == [1] * len(names)


# --- the real trainer and CLI ------------------------------------------------------------

@pytest.fixture(scope="module")
def dp2_run(tmp_path_factory):
    import trainkit as T

    root = T.make_project(tmp_path_factory.mktemp("dp2"), docs=20, model={**T.TINY_MODEL, "tie_embeddings": False})
    T.prepare_data(root)
    run = T.make_run(root, "dp2", steps=4, interval=4, eval_interval=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "llmctl.train", "--run-dir", str(run)]
    r = subprocess.run(cmd, cwd=root, env=T.quiet_env(DS_ACCELERATOR="cpu"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    ckpt = run / "checkpoints" / "step-00000004"
    assert (ckpt / "dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    return root, run


def test_sharded_run_exports_and_evaluates_like_its_export(dp2_run, cli):
    root, run = dp2_run
    r = cli("export", "--checkpoint", str(run), "--out", "artifacts/dp2", "--dtype", "fp32", cwd=root)
    assert r.returncode == 0, r.stderr
    art = root / "artifacts" / "dp2"
    manifest = json.loads((art / "llmctl-manifest.json").read_text())
    assert manifest["source_format"] == "dcp"
    tasks = ["--tasks", "stdlib_perplexity,code_completion", "--limit", "8"]
    a = cli("eval", "run", "--checkpoint", str(run), "--output", str(root / "ev-ckpt.json"), *tasks, cwd=root)
    assert a.returncode == 0, a.stderr
    b = cli("eval", "run", "--artifact", str(art), "--output", str(root / "ev-art.json"), *tasks, cwd=root)
    assert b.returncode == 0, b.stderr
    ra = json.loads((root / "ev-ckpt.json").read_text())["results"]
    rb = json.loads((root / "ev-art.json").read_text())["results"]
    assert ra.keys() == rb.keys() and ra
    for task in ra:
        for metric, value in ra[task].items():
            if isinstance(value, float):
                assert value == pytest.approx(rb[task][metric], rel=1e-6, abs=1e-7), (task, metric)


def test_serving_loads_the_sharded_run_as_its_export(dp2_run, cli):
    """`serve start --artifact RUN` reads the run's sharded checkpoint in place (the loader the
    server uses), with the export's weights and tokenizer."""
    from llmctl.export.hf import load_artifact

    root, run = dp2_run
    art = root / "artifacts" / "dp2-serve"
    assert cli("export", "--checkpoint", str(run), "--out", str(art), "--dtype", "fp32", cwd=root).returncode == 0
    a, b = load_artifact(run), load_artifact(art)
    x = torch.tensor([a.tokenizer.encode("def f(x):\n    return x").ids])
    with torch.no_grad():
        assert (a.model(x) - b.model(x)).abs().max().item() <= 1e-6
    assert a.eos_id == b.eos_id is not None


def test_eval_watch_scores_the_sharded_checkpoint(dp2_run, cli):
    root, run = dp2_run
    r = cli("eval", "watch", "--run-dir", str(run), "--tasks", "code_completion", "--limit", "4", cwd=root)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "eval" / "results.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [4]
