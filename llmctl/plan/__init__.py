"""The planner: parameter counts, the cost model and the parallelism ILP (pure Python, no torch)."""
