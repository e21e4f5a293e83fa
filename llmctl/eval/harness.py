"""lm-evaluation-harness adapter: its tasks on llmctl models (optional: needs `lm_eval`).

`register()` adds a model named `llmctl` to lm_eval's model registry, answering
the harness's three request kinds with any llmctl LM backend (checkpoint,
artifact or endpoint, as in `llmctl eval run`). Two ways in:

    llmctl eval run --checkpoint runs/r --harness-tasks hellaswag --output out.json
    python -m llmctl.eval.harness run --model llmctl --model_args checkpoint=runs/r --tasks hellaswag

(the second is lm_eval's own command line with our model registered first;
lm_eval finds models by registry only, not by entry points). Rolling
loglikelihood uses llmctl's windows (`LM.rolling_windows`), which give every
token max_len-1 tokens of context at most and predict each token once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llmctl.errors import LlmctlError

MODEL_NAME = "llmctl"


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise LlmctlError("lm-evaluation-harness is not installed",
                          hint="pip install lm-eval (or install llmctl with the `dev` extra)") from None
    return lm_eval


def register():
    """Register (once) and return the `llmctl` model class with lm_eval."""
    require_lm_eval()
    from lm_eval.api.model import LM as HarnessBase
    from lm_eval.api.registry import get_model, register_model

    try:
        return get_model(MODEL_NAME)
    except (KeyError, ValueError):
        pass

    @register_model(MODEL_NAME)
    class LlmctlHarnessLM(HarnessBase):
        """lm_eval's view of an llmctl LM; model_args as `eval run`'s options."""

        def __init__(self, checkpoint: Optional[str] = None, artifact: Optional[str] = None,
                     endpoint: Optional[str] = None, tokenizer: Optional[str] = None,
                     served_model: Optional[str] = None, api_key_env: Optional[str] = None,
                     batch_size: Any = 8, lm=None, **_ignored: Any) -> None:
            super().__init__()
            if lm is None:
                from llmctl.eval.backends import open_model

                size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> our default
                lm = open_model(checkpoint, artifact, endpoint, tokenizer, served_model, api_key_env, size)
            self.lm = lm

        @property
        def tokenizer_name(self) -> str:
            return self.lm.name.replace("/", "__")

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return self.lm.loglikelihood([tuple(r.args) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                ids = self.lm.encode(r.args[0])
                out.append(-sum(nll for nll, _ in self.lm.token_nll(ids)) if ids else 0.0)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for r in requests:
                context, kwargs = r.args
                until = kwargs.get("until") or [self.lm.eos_token]
                until = [until] if isinstance(until, str) else list(until)
                out.append(self.lm.generate_until(context, until, int(kwargs.get("max_gen_toks", 256))))
            return out

    return LlmctlHarnessLM


def task_manager(names: list[str], include: Optional[str]):
    """lm_eval's TaskManager; only the local folder when it holds every task (indexing
    the harness's own thousands of task files takes seconds)."""
    from lm_eval.tasks import TaskManager

    if include:
        if not Path(include).is_dir():
            raise LlmctlError(f"--harness-include {include}: folder not found")
        local = TaskManager(include_path=str(include), include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    tm = TaskManager(include_path=str(include) if include else None)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise LlmctlError(f"--harness-tasks: unknown lm-evaluation-harness task(s) {', '.join(unknown)}",
                          hint="`lm_eval ls tasks` lists them; local task YAMLs go in --harness-include")
    return tm


def evaluate(lm, names: list[str], include: Optional[str] = None, limit: Optional[int] = None,
             log_samples: bool = False, bootstrap_iters: int = 1000, seed: int = 1234) -> dict:
    """Run harness tasks `names` on our `lm`; lm_eval's own results dict (JSON-safe)."""
    import json

    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    cls = register()
    tm = task_manager(names, include)
    results = simple_evaluate(model=cls(lm=lm), tasks=names, task_manager=tm, limit=limit,
                              log_samples=log_samples, bootstrap_iters=bootstrap_iters,
                              random_seed=seed, fewshot_random_seed=seed)
    if results is None:
        raise LlmctlError("lm-evaluation-harness returned no results")
    out = json.loads(json.dumps(dict(results), default=handle_non_serializable))
    out.setdefault("config", {}).update({"model": MODEL_NAME, **lm.describe()})
    return out


def table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


def main() -> None:
    """lm_eval's command line with the `llmctl` model registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
