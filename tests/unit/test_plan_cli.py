"""`llmctl plan compute/explain` through the real CLI: output, files, and bad input (exit 2)."""

from __future__ import annotations

import json
import sys

import pytest

from llmctl.presets import model_fields

from conftest import run_cli


def _model(tmp_path, template="llama", size="7b", **over):
    data = model_fields(template, size)
    data.update(over)
    p = tmp_path / f"{template}-{size}.json"
    p.write_text(json.dumps(data))
    return str(p)


def _profile(tmp_path, count=8, mem=80.0):
    p = tmp_path / "hw.toml"
    dev = f'[[gpu.devices]]\nid = 0\nname = "NVIDIA H100 80GB HBM3"\nmemory_gb = {mem}\n' if count else ""
    p.write_text(f"[gpu]\ncount = {count}\n{dev}\n[limits]\nestimated_flops = 7.9e15\nmemory_bw_gbps = 26800\n"
                 "intra_node_bw_gbps = 450\ninter_node_bw_gbps = 400\n")
    return str(p)


def test_compute_writes_a_valid_plan_and_explain_draws_it(tmp_path):
    out = tmp_path / "plans" / "x.toml"
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="1b"), "--hardware", _profile(tmp_path),
                "--global-batch", "64", "--seq-len", "2048", "--top", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    par = data["parallelism"]
    assert par["tp"] * par["pp"] * par["dp"] * par["cp"] == 8
    assert par["micro_batch"] * par["grad_accum"] * par["dp"] == 64
    assert sum(par["layers_per_stage"]) == 22
    assert data["predicted"]["memory_gb_per_gpu"] <= 80
    assert len(data["alternatives"]) == 2
    assert data["solver"]["status"] == "optimal" and data["solver"]["variables"] > 0
    assert len(data["inputs"]["model_sha256"]) == 64
    e = run_cli("plan", "explain", str(out), "--png", str(tmp_path / "p.png"))
    assert e.returncode == 0, e.stderr
    assert "where the step time goes" in e.stdout
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_manual_layout_is_costed(tmp_path):
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="1b"), "--hardware", _profile(tmp_path),
                "--global-batch", "64", "--strategy", "manual", "--tp", "2", "--pp", "2", "--dp", "2", "--json")
    assert r.returncode == 0, r.stderr
    par = json.loads(r.stdout)["parallelism"]
    assert (par["tp"], par["pp"], par["dp"], par["zero_stage"], par["recompute"]) == (2, 2, 2, 0, "none")


def _bad(tmp_path, *args):
    r = run_cli("plan", "compute", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stderr


def test_tp_not_dividing_heads(tmp_path):
    err = _bad(tmp_path, "--model", _model(tmp_path), "--hardware", _profile(tmp_path), "--tp", "3")
    assert "--tp 3 does not divide" in err


def test_zero_gpus(tmp_path):
    err = _bad(tmp_path, "--model", _model(tmp_path), "--hardware", _profile(tmp_path), "--gpus-per-node", "0")
    assert "--gpus-per-node" in err and "0" in err


def _cpu_profile(tmp_path):
    """What `llmctl hw probe` writes on a node without GPUs (trimmed to what the planner reads)."""
    p = tmp_path / "cpu.toml"
    p.write_text('[gpu]\ncount = 0\n\n[limits]\nestimated_flops = 256e9\nsource = "estimate"\n\n'
                 '[node]\ncpus = 2\nmemory_gb = 25.3\n')
    return str(p)


def test_cpu_only_profile_plans_a_tiny_model(tmp_path):
    out = tmp_path / "plans" / "local.toml"
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="tiny"), "--hardware", _cpu_profile(tmp_path),
                "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["inputs"]["gpus_per_node"] == 1 and data["inputs"]["memory_gb"] == 25.3
    # the node's estimated 256 GFLOP/s is the peak the MFU is measured against
    pr = data["predicted"]
    assert pr["tflops_per_gpu"] == pytest.approx(pr["mfu"] * 0.256, rel=0.02)
    assert out.is_file()
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="tiny"), "--hardware", _cpu_profile(tmp_path),
                "--gpus-per-node", "2", "--global-batch", "4", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["inputs"]["memory_gb"] == pytest.approx(25.3 / 2)
    par = data["parallelism"]
    assert par["tp"] * par["pp"] * par["dp"] * par["cp"] == 2
    assert data["inputs"]["device"] == "cpu"
    # The text report calls the devices CPU processes and gives a rate with digits that show.
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="tiny"), "--hardware", _cpu_profile(tmp_path),
                "--gpus-per-node", "2", "--global-batch", "4")
    assert r.returncode == 0, r.stderr
    first, _, _, step = r.stdout.splitlines()[:4]
    assert " on 1 node x 2 CPU processes (" in first and "GPU" not in r.stdout.split("alternatives")[0]
    assert "GFLOP/s per CPU process" in step and "0.0 TFLOP/s" not in step


def test_unknown_gpu_asks_for_peak_tflops(tmp_path):
    p = tmp_path / "odd.toml"
    p.write_text('[gpu]\ncount = 4\n[[gpu.devices]]\nid = 0\nname = "Acme Matrix 9000"\nmemory_gb = 64\n')
    err = _bad(tmp_path, "--model", _model(tmp_path, size="1b"), "--hardware", str(p))
    assert str(p) in err and "limits.estimated_flops" in err and "--peak-tflops" in err
    r = run_cli("plan", "compute", "--model", _model(tmp_path, size="1b"), "--hardware", str(p),
                "--peak-tflops", "100", "--global-batch", "16", "--json")
    assert r.returncode == 0, r.stderr
    pr = json.loads(r.stdout)["predicted"]
    assert pr["tflops_per_gpu"] == pytest.approx(pr["mfu"] * 100, rel=0.02)


def test_model_that_fits_nowhere_says_what_would(tmp_path):
    err = _bad(tmp_path, "--model", _model(tmp_path, size="70b"), "--hardware", _profile(tmp_path, count=1, mem=24),
               "--global-batch", "8", "--seq-len", "2048")
    assert "do not fit" in err and "hint: smallest change" in err


def test_contradictory_manual_degrees(tmp_path):
    err = _bad(tmp_path, "--model", _model(tmp_path), "--hardware", _profile(tmp_path), "--strategy", "manual",
               "--tp", "2", "--pp", "2", "--dp", "4")
    assert "tp*pp*dp*cp" in err and "16" in err and "8" in err


def test_plan_path_imports_no_torch(tmp_path):
    code = ("import sys; from llmctl.cli import main; "
            f"rc = main(['plan', 'compute', '--model', {_model(tmp_path, size='tiny')!r}, '--hardware', "
            f"{_profile(tmp_path)!r}, '--global-batch', '8', '--json']); "
            "bad = [m for m in ('torch', 'deepspeed', 'mpi4py', 'transformers', 'matplotlib') if m in sys.modules]; "
            "print('BAD', bad, file=sys.stderr); sys.exit(rc or (3 if bad else 0))")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_train_config_supplies_batch_and_sequence(tmp_path):
    """--train: the run's global batch and sequence length, unless a flag overrides them."""
    train = tmp_path / "train.toml"
    train.write_text('[model]\nname = "m"\nconfig_file = "m.json"\n\n[parallel]\nmicro_batch_size = 2\nglobal_batch_size = 96\n\n'
                     '[data]\nseq_len = 1024\n')
    args = ["plan", "compute", "--model", _model(tmp_path, size="1b"), "--hardware", _profile(tmp_path),
            "--train", str(train), "--top", "0", "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    inputs = json.loads(r.stdout)["inputs"]
    assert (inputs["global_batch"], inputs["seq_len"]) == (96, 1024)
    assert inputs["train"] == str(train) and len(inputs["train_sha256"]) == 64
    r = run_cli(*args, "--global-batch", "32")
    assert json.loads(r.stdout)["inputs"]["global_batch"] == 32
    train.write_text('[model]\nname = "m"\nconfig_file = "m.json"\n\n[parallel]\nglobal_batch_size = 0\n')
    err = _bad(tmp_path, *args[2:])
    assert "parallel.global_batch_size" in err and str(train) in err


def test_tp_comm_overlap_flag_shortens_a_tensor_parallel_step(tmp_path):
    """--tp-comm-overlap costs the TP collectives as overlapped with the GEMMs; off by default."""
    args = ("plan", "compute", "--model", _model(tmp_path, size="1b"), "--hardware", _profile(tmp_path),
            "--global-batch", "64", "--strategy", "manual", "--tp", "4", "--pp", "1", "--dp", "2", "--json")
    off = run_cli(*args)
    on = run_cli(*args, "--tp-comm-overlap")
    assert off.returncode == 0 and on.returncode == 0, (off.stderr, on.stderr)
    t_off = json.loads(off.stdout)["predicted"]["step_time_s"]
    t_on = json.loads(on.stdout)["predicted"]["step_time_s"]
    assert t_on < t_off
    # the plan file records the assumption, so a reader knows which time model made it
    assert json.loads(off.stdout)["inputs"]["tp_overlap"] is False
    assert json.loads(on.stdout)["inputs"]["tp_overlap"] is True
