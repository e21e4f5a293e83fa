"""The rendezvous layer reads each launcher's environment; the layout check names every factor."""

from __future__ import annotations

import pytest

from llmctl.config.model import ModelConfig
from llmctl.errors import LlmctlError
from llmctl.parallel.dims import ParallelDims, even_split
from llmctl.parallel.rendezvous import discover, first_host

MODEL = ModelConfig(name="m", template="llama", layers=4, hidden=32, ffn=64, heads=4, kv_heads=2,
                    vocab_size=128, max_seq_len=16, tie_embeddings=False)


def test_torchrun_environment():
    r = discover({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1",
                  "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    # torchrun inside an srun step: torchrun's variables are the ranks
    assert (r.rank, r.local_rank, r.world_size, r.master_addr, r.master_port, r.source) == \
        (3, 1, 4, "n1", 1234, "torchrun")


def test_slurm_environment_takes_master_from_the_node_list():
    r = discover({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
                  "SLURM_JOB_NODELIST": "gpu[007-010,12]", "SLURM_JOB_ID": "20123"})
    assert (r.rank, r.local_rank, r.world_size, r.master_addr, r.source) == (5, 1, 8, "gpu007", "slurm")
    other = discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu007",
                      "SLURM_JOB_ID": "20124"})
    assert other.master_port != r.master_port  # two jobs on one node do not collide


def test_mpi_environments():
    o = discover({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                  "OMPI_COMM_WORLD_SIZE": "4"})
    assert (o.rank, o.local_rank, o.world_size, o.source) == (2, 0, 4, "openmpi")
    p = discover({"PMI_RANK": "5", "PMI_SIZE": "8", "LLMCTL_RANKS_PER_NODE": "4"})
    assert (p.rank, p.local_rank, p.world_size, p.source) == (5, 1, 8, "pmi")
    assert discover({}).world_size == 1


def test_bad_rank_variable_is_a_clean_error():
    with pytest.raises(LlmctlError, match="SLURM_PROCID='x'"):
        discover({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


@pytest.mark.parametrize("nodes,first", [("a1", "a1"), ("a[1-3]", "a1"), ("x[09,11]", "x09"),
                                         ("c[2-3],d1", "c2"), ("n-01", "n-01")])
def test_first_host(nodes, first):
    assert first_host(nodes) == first


def test_layout_errors_spell_out_every_factor():
    with pytest.raises(LlmctlError) as e:
        ParallelDims(dp=2, tp=3, pp=1).validate(4, MODEL, where="plan.toml")
    msg = str(e.value)
    assert "plan.toml" in msg and "dp (2) x tp (3) x pp (1) = 6, but 4 ranks" in msg
    assert "tp (3) must divide heads (4)" in msg
    with pytest.raises(LlmctlError, match="untied"):
        ParallelDims(pp=2).validate(2, ModelConfig(**{**MODEL.to_data(), "tie_embeddings": True}))
    with pytest.raises(LlmctlError, match=r"layers_per_stage \[1, 1\]"):
        ParallelDims(pp=2, layers_per_stage=[1, 1]).validate(2, MODEL)
    ParallelDims(dp=2, tp=2, dp_mode="fsdp").validate(4, MODEL)  # a valid layout passes
    with pytest.raises(LlmctlError, match="needs FSDP2"):
        ParallelDims(dp=2, tp=2).validate(4, MODEL)


def test_even_split_sums_and_balances():
    for layers in range(2, 40):
        for stages in range(1, min(layers, 8) + 1):
            s = even_split(layers, stages)
            assert sum(s) == layers and len(s) == stages and max(s) - min(s) <= 1
    assert even_split(5, 4) == [1, 2, 1, 1] or even_split(5, 4) == [1, 1, 2, 1]


def test_plan_maps_to_the_data_parallel_engine():
    from llmctl.config.plan import Parallelism

    assert ParallelDims.from_plan(Parallelism(dp=2)).dp_mode == "ddp"
    assert ParallelDims.from_plan(Parallelism(dp=2, zero_stage=2)).dp_mode == "zero"
    assert ParallelDims.from_plan(Parallelism(dp=2, tp=2)).dp_mode == "fsdp"
    assert ParallelDims.from_plan(Parallelism(dp=2, tp=2, zero_stage=3)).dp_mode == "fsdp"
    with pytest.raises(LlmctlError, match="DeepSpeed ZeRO runs with tp = pp = 1"):
        ParallelDims.from_plan(Parallelism(dp=2, tp=2, zero_stage=1)).validate(4, MODEL)


def test_sequence_parallelism_needs_the_sequence_split_evenly():
    from llmctl.config.plan import Parallelism

    dims = ParallelDims.from_plan(Parallelism(tp=2))
    assert dims.sequence_parallel  # on by default with tp > 1
    with pytest.raises(LlmctlError, match=r"sequence length \(15\) divisible by tp \(2\)"):
        dims.validate(2, MODEL, where="plan.toml", seq_len=15)
    dims.validate(2, MODEL, seq_len=16)
    dims.sequence_parallel = False  # parallel.sequence_parallel = false: any length
    dims.validate(2, MODEL, seq_len=15)
    assert not ParallelDims.from_plan(Parallelism(dp=2)).sequence_parallel


def test_fp16_with_tensor_parallelism_is_a_clean_error():
    torch = pytest.importorskip("torch")
    from llmctl.parallel.runner import Runner

    with pytest.raises(LlmctlError, match="fp16 with tp = 2 is not supported") as e:
        Runner(torch.nn.Linear(2, 2), ParallelDims(tp=2, sequence_parallel=True), None, torch.device("cpu"),
               lambda m: None, micro_batch=1, grad_accum=1, precision="fp16")
    assert "bf16" in e.value.hint
