"""gpu-check's node sections: `hw probe` against nvidia-smi, `hw benchmark` beside plain
torch, and NCCL all-reduce bus bandwidth."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time

from llmctl.gpucheck.report import Section, Skip


def _smi() -> list[dict]:
    """Every GPU as nvidia-smi lists it (name, memory MiB, driver)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}")
    return parse_smi_csv(out.stdout)


def parse_smi_csv(text: str) -> list[dict]:
    """Rows of `--query-gpu=index,name,memory.total,driver_version --format=csv,noheader,nounits`."""
    rows = []
    for line in text.strip().splitlines():
        idx, name, mem, driver = (c.strip() for c in line.split(","))
        rows.append({"index": int(idx), "name": name, "memory_mib": float(mem), "driver": driver})
    return rows


def compare(data: dict, rows: list[dict]) -> dict[str, bool]:
    """Whether llmctl's probe (profile data) and nvidia-smi's rows name the same GPUs."""
    devices = (data.get("gpu") or {}).get("devices", [])
    checks = {"count": len(devices) == len(rows)}
    for d, r in zip(devices, rows):
        i = r["index"]
        checks[f"gpu{i}_name"] = d.get("name") == r["name"]
        if d.get("memory_mib") is not None:
            checks[f"gpu{i}_memory"] = abs(d["memory_mib"] - r["memory_mib"]) <= 0.01 * r["memory_mib"]
    driver = (data.get("gpu") or {}).get("driver")
    if driver and rows:
        checks["driver"] = driver == rows[0]["driver"]
    return checks


def probe(sec: Section) -> None:
    """llmctl's node probe, written out as a profile; its GPUs compared with nvidia-smi's."""
    from llmctl.hw.profile import probe_node, validate, write_profile

    data, _raw = probe_node()
    path = sec.ctx.out / "node-profile.toml"
    write_profile(data, path, "toml")
    prof = validate(data)
    sec.ctx.shared["profile_path"], sec.ctx.shared["profile_data"] = path, data
    devices = (data.get("gpu") or {}).get("devices", [])
    res = sec.results
    res["profile"] = str(path)
    res["gpu_source"] = (data.get("probe") or {}).get("gpu_source")
    res["gpus"] = len(devices)
    res["gpu_names"] = [d.get("name") for d in devices]
    res["accelerator"] = (data.get("accelerator") or {}).get("name")
    res["node_peak_tflops"] = (prof.node_flops() or 0) / 1e12 or None
    res["node_memory_bw_gbps"] = prof.node_memory_bw_gbps()
    if shutil.which("nvidia-smi") is None:
        sec.skipped["nvidia_smi"] = "nvidia-smi not found on this machine"
        return
    rows = _smi()
    res["nvidia_smi"] = rows
    checks = compare(data, rows)
    res["agrees_with_nvidia_smi"] = checks
    if not all(checks.values()):
        sec.notes.append(f"hw probe disagrees with nvidia-smi on {[k for k, v in checks.items() if not v]}")


def bench(sec: Section) -> None:
    """Matmul TFLOP/s (bf16, 8192³ on a GPU) and device copy GB/s: llmctl's `hw benchmark`
    functions, and the same measured with plain torch (CUDA events) in the same run."""
    import torch

    from llmctl.hw.bench.compute import rate
    from llmctl.hw.bench.memory import device_bandwidth

    dev, cpu = sec.ctx.device, sec.ctx.cpu
    n = 256 if cpu else 8192
    nbytes = 2**24 if cpu else 2**30
    share = max(sec.left(), 4) / 5
    torch.backends.cuda.matmul.allow_tf32 = False
    res = sec.results
    tflops, size, runs = rate(dev, torch.bfloat16, share, size=n)
    res["llmctl_matmul_bf16_tflops"], res["matmul_n"] = tflops, size
    res["torch_matmul_bf16_tflops"] = _plain_matmul(dev, n, share)
    res["matmul_ratio"] = res["llmctl_matmul_bf16_tflops"] / res["torch_matmul_bf16_tflops"]
    gbps, _ = device_bandwidth(dev, share, nbytes)
    res["llmctl_copy_gbps"], res["copy_bytes"] = gbps, nbytes
    res["torch_copy_gbps"] = _plain_copy(dev, nbytes, share)
    res["copy_ratio"] = res["llmctl_copy_gbps"] / res["torch_copy_gbps"]
    sec.ctx.shared["memory_bw_gbps"] = max(gbps, res["torch_copy_gbps"])
    sec.ctx.shared["matmul_tflops_bf16"] = max(tflops, res["torch_matmul_bf16_tflops"])


def _timer(dev):
    """(start, stop) -> seconds, with CUDA events on a GPU."""
    import torch

    if dev.type == "cuda":
        def run(fn, reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3 / reps
    else:
        def run(fn, reps):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - t0) / reps
    return run


def _plain_matmul(dev, n: int, budget: float) -> float:
    import torch

    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    timed = _timer(dev)
    timed(lambda: a @ b, 3)  # warm-up
    reps = 20 if dev.type == "cuda" else 3
    samples, deadline = [], time.perf_counter() + budget
    while not samples or (time.perf_counter() < deadline and len(samples) < 50):
        samples.append(timed(lambda: a @ b, reps))
    return 2 * n**3 / statistics.median(samples) / 1e12


def _plain_copy(dev, nbytes: int, budget: float) -> float:
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    timed = _timer(dev)
    timed(lambda: dst.copy_(src), 2)
    samples, deadline = [], time.perf_counter() + budget
    while not samples or (time.perf_counter() < deadline and len(samples) < 50):
        samples.append(timed(lambda: dst.copy_(src), 10 if dev.type == "cuda" else 2))
    return 2 * nbytes / statistics.median(samples) / 1e9


def nccl(sec: Section) -> None:
    """All-reduce bus bandwidth over NCCL (llmctl's `hw benchmark comm`), with >= 2 GPUs."""
    import torch

    if sec.ctx.cpu:
        raise Skip("CPU mode: no NCCL (gloo's all-reduce is `llmctl hw benchmark comm`'s CPU path)")
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise Skip(f"needs two or more GPUs; this node has {gpus}")
    from llmctl.hw.bench.comm import collectives

    out = collectives(max(sec.left() * 0.6, 5), lambda m: sec.log(m.strip()), nprocs=gpus, backend="nccl")
    sec.results["gpus"] = gpus
    sec.results["allreduce_busbw_gbps"] = out["measured"].get("allreduce_busbw_gbps")
    sec.results["allgather_busbw_gbps"] = out["measured"].get("allgather_busbw_gbps")
    sec.results["rows"] = out["details"]["rows"]
