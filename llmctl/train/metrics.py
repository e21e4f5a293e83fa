"""What the trainer records: a JSONL line per logged step, MFU, memory, GPU utilisation.

MFU (Chowdhery et al. 2022, PaLM, appendix B) = achieved model FLOP/s / peak
FLOP/s, with 6·N FLOPs per token for the matmul parameters N (forward and
backward, no recomputation counted) plus 12·L·H·Q·T for attention (L layers,
H heads, Q head width, T sequence length). The peak is the hardware profile's
(the plan's `inputs.hardware`), else the accelerator table's entry for this GPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional


def flops_per_token(model_cfg, seq_len: int) -> float:
    from llmctl.plan.params import count_parameters

    c = count_parameters(model_cfg)
    # Matmul parameters: everything but the lookup tables, plus the head (which is the
    # embedding matrix when tied).
    n = c.total - c.position - (c.embedding if c.head else 0)
    return 6.0 * n + 12.0 * model_cfg.layers * model_cfg.heads * model_cfg.head_dim * seq_len


def peak_flops(hardware_path: Optional[Path], device) -> tuple[Optional[float], str]:
    """Peak FLOP/s of one device and where the figure comes from (None when unknown)."""
    if hardware_path is not None and hardware_path.is_file():
        from llmctl.config.base import load_config
        from llmctl.config.hardware import HardwareProfile

        prof = load_config(hardware_path, HardwareProfile)
        node = prof.node_flops()
        if node:
            return node / max(prof.gpu.count, 1), f"hardware profile {hardware_path}"
    if device.type == "cuda":
        import torch

        try:
            from llmctl.hw.accelerators import lookup

            spec = lookup(torch.cuda.get_device_name(device))
        except ImportError:
            spec = None
        if spec is not None:
            return spec.training_tflops * 1e12, f"accelerator table ({spec.name})"
    return None, "unknown (no hardware profile)"


def memory_gb(device) -> float:
    """Peak memory of this process: device memory on a GPU, resident memory on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


class GpuMonitor:
    """GPU utilisation and memory through NVML, where there is a GPU and NVML loads."""

    def __init__(self, device):
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else 0
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception:  # NVML missing or refusing: the run goes on without it
            self.handle = None

    def read(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        try:
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            return {"gpu_util_pct": float(util.gpu), "gpu_mem_used_gb": mem.used / 1e9}
        except Exception:
            return {}


class MetricsLog:
    """Append-only JSONL; each line is flushed so `llmctl job status` sees it at once."""

    def __init__(self, path: Path, console: bool = True, tracker: Any = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", encoding="utf-8")
        self.console = console
        # llmctl.track.TrainingTracker: each record also goes to TensorBoard / MLflow / W&B.
        self.tracker = tracker

    def write(self, record: dict[str, Any]) -> None:
        from llmctl.fsutil import writing

        record = {"time": round(time.time(), 3), **record}
        with writing(self.path, "training metrics"):  # a full disk: one line, not a traceback
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()
        if self.console:
            line = console_line(record)
            if line:
                print(line, flush=True)
        if self.tracker is not None:
            self.tracker.record(record)

    def close(self) -> None:
        self.f.close()
        if self.tracker is not None:
            self.tracker.close()


def console_line(r: dict[str, Any]) -> str:
    kind = r.get("kind")
    if kind == "train":
        mfu = f" | mfu {r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else ""
        return (f"step {r['step']:>6}/{r['max_steps']} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | "
                f"gnorm {r['grad_norm']:.3f} | {r['tokens_per_s']:,.0f} tok/s{mfu} | "
                f"mem {r['memory_gb']:.2f} GB" + (" | not applied (not finite)" if r.get("skipped") else ""))
    if kind == "eval":
        return f"step {r['step']:>6} | validation loss {r['val_loss']:.4f}"
    if kind == "start":
        return (f"llmctl.train: {r['model']} ({r['params']:,} parameters) on {r['device']}, "
                f"{r['precision']}, {r['tokens_per_step']:,} tokens/step "
                f"(micro-batch {r['micro_batch']} x {r['grad_accum']} accumulation x seq {r['seq_len']}); "
                + (f"resuming at step {r['step']}" if r["step"] else "starting at step 0"))
    if kind == "end":
        if r["reason"] == "nonfinite":
            return f"llmctl.train: stopped at step {r['step']}: a value that is not finite"
        return f"llmctl.train: {r['reason']} at step {r['step']}"
    return ""


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line of a metrics file (a line cut by a kill is skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def warn(msg: str) -> None:
    print(f"llmctl.train: warning: {msg}", file=sys.stderr, flush=True)


