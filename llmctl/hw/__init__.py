"""Reading the node (`hw probe`) and measuring its ceilings (`hw benchmark`).

One module per concept: `nvml` (GPUs through NVML), `recorded` (replays recorded
NVML readings through the same interface), `smi` (nvidia-smi output), `cpu`,
`infiniband`, `netif`, `links` (link bandwidths), `accelerators` (the datasheet
table), `profile` (assembling a profile; clusters), `allnodes` (probing every node
of an allocation) and `bench/` (one module per benchmark). Nothing here imports
torch at module level: the probe runs on login nodes.
"""
