"""Parallel training: apply a plan's layout to the one Transformer from outside it.

- `rendezvous`: who am I (rank, local rank, world size, master address) under
  torchrun, SLURM's srun or an MPI launcher; starts and ends the process group.
- `dims`: the plan's degrees checked against the world size, and the device mesh.
- `transformer`: the parallelize function of our model family (gpt and llama
  share one module): tensor/sequence parallel, then FSDP2 or DDP.
- `pipeline`: splits the model into pipeline stages and builds the schedule.
- `zero`: DeepSpeed ZeRO 1-3 around the model.
- `runner`: one training step over any of these layouts, so the trainer and the
  equivalence tests drive the same code.
"""
