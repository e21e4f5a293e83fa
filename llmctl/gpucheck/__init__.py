"""`make gpu-check`: one run that measures a GPU node against reference implementations.

Sections, each with its own time budget and its own try/except (one failure keeps the
rest): `probe` (llmctl's `hw probe` checked against nvidia-smi), `bench` (`hw benchmark`
compute and memory beside plain torch in the same run), `train_gpt2` (llmctl's training
step on the GPT-2 124M shape, eager and compiled, beside a nanoGPT-style reference in
llmctl.gpucheck.reference), `train_1b` (a ~1B Llama step beside the planner's prediction),
`serve` (decode tokens/s at 1 and 64 requests, llmctl's engine beside transformers'
`generate`), `nccl` (all-reduce bus bandwidth with two or more GPUs). `--cpu` runs the
same code with tiny shapes, so that the check cannot rot without a GPU.

    scripts/gpu-check.sh            # or: make gpu-check; python -m llmctl.gpucheck --out DIR
    scripts/gpu-check.sh --cpu      # tiny shapes on a CPU (what CI runs)
"""

SCHEMA = "llmctl-gpu-check/1"
