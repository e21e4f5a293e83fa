"""Serving: paged-KV engine, batching schedulers, OpenAI-compatible HTTP, batch jobs (issue #9)."""
