"""llmctl: take a large language model from "this model, this cluster" to trained,
evaluated and served.

This module stays import-light on purpose: `llmctl --help` on a login node must not
pay for torch, deepspeed or mpi4py.
"""

__version__ = "0.1.0"
