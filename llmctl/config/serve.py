"""Serve config (TOML): the OpenAI-compatible server's settings."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from llmctl.config.base import StrictModel


class ServeConfig(StrictModel):
    """Server settings; every key can also be given as a flag of `llmctl serve start`."""

    artifact: Optional[str] = None
    """Model artifact folder (from `llmctl export`)."""
    host: str = "127.0.0.1"
    """Address to bind (loopback unless told otherwise)."""
    port: int = Field(8080, ge=1, le=65535)
    """Port to bind."""
    scheduler: str = "vllm-like"
    """Batching scheduler: vllm-like, fcfs, or a plugin name."""
    max_batch_tokens: int = Field(8192, gt=0)
    """Token budget of one engine step."""
    max_tokens_limit: int = Field(2048, gt=0)
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = Field(4096, gt=0)
    """Longest prompt accepted."""
    max_queue: int = Field(256, gt=0)
    """Waiting requests before answering 429."""
    kv_block_size: int = Field(16, gt=0)
    """Tokens per KV-cache block."""
    kv_blocks: Optional[int] = Field(None, gt=0)
    """KV-cache blocks (default: sized from free memory)."""
    prefix_caching: bool = True
    """Keep the KV blocks of computed prompts, keyed by a hash of the whole prefix, and reuse them
    for later requests that start with the same tokens (evicted least recently used first)."""
    api_key_env: Optional[str] = None
    """Environment variable holding the bearer key (no auth when unset)."""
    compile: bool = False
    """torch.compile each step's dense parts (norms, q/k/v and output projections, RoPE, MLP) with
    dynamic batch sizes; attention over the paged KV cache stays eager. One rank, or MPI data-parallel
    replicas; refused with tensor-parallel ranks. Slower start (a compile at the first steps)."""
    paged_attention: Literal["auto", "gather", "blockwise"] = "auto"
    """How a decode step attends over the paged KV cache: gather (copy each sequence's keys into
    one padded tensor, then SDPA), blockwise (read the cache a few blocks at a time with an online
    softmax, no copy that grows with the context), auto (what measured faster: on a CPU blockwise
    from 1,024-token contexts and a 4 MiB copy on, gather below; gather on a GPU; docs/performance.md).
    Prompt chunks always gather."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on a GPU, fp32 on a CPU), bf16, fp16, fp32."""
    threads: Optional[int] = Field(None, ge=1, le=4096)
    """torch intra-op threads (default: OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else the CPU
    affinity mask shared by this node's ranks, capped by the cgroup quota; never all cores;
    llmctl/hw/threads.py)."""
    mpi_mode: Literal["tp", "dp"] = "tp"
    """Under MPI: tp (each rank a tensor-parallel shard) or dp (whole replicas; rank 0 routes)."""
