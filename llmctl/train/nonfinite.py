"""NaN and infinity in a run: never applied, never checkpointed.

A step whose loss or gradient norm is not finite is not applied (no optimizer step),
and then `training.nonfinite` decides:

- "stop" (the default): the run stops at that step with one line naming it, exit 2;
  no checkpoint is written, `latest` stays where it was and nothing is pruned;
- "skip": the step is skipped as a loss scaler skips an overflow (its batch is used
  up, weights and optimizer state stay as they were), up to
  `training.max_skipped_steps` times over the whole run (state.json carries the count
  across restarts); one more stops the run as "stop" does.

Under fp16 the gradient scaler already skips steps whose gradients overflowed, which
is its job: there only the loss counts. A NaN that reaches the weights some other way
(an optimizer state that holds NaN makes NaN weights out of a finite loss and
gradient) is caught before each checkpoint: non-finite weights stop the run the same
way, whatever the policy. In a distributed run every input to these decisions is
reduced over all ranks first, so that the ranks decide together.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from llmctl.errors import LlmctlError

STOP, SKIP = "stop", "skip"
HINT = ("a run that diverges: lower optimizer.lr or lengthen schedule.warmup_steps, or skip such "
        "steps (training.nonfinite = \"skip\"); a restart resumes from `latest`")


def step_is_finite(loss: float, grad_norm: float, scaled: bool = False) -> bool:
    """Whether a step may be applied; `scaled`: a gradient scaler handles the gradients."""
    return math.isfinite(loss) and (scaled or math.isfinite(grad_norm))


def _where(latest: Optional[str]) -> str:
    return f"`latest` still points at {latest}" if latest else "no checkpoint was written"


class NonFiniteGuard:
    """Counts the steps that were not applied and says when the run must stop."""

    def __init__(self, policy: str, max_skipped: int, skipped: int = 0):
        self.policy, self.max_skipped, self.skipped = policy, max_skipped, skipped

    def after(self, step: int, loss: float, grad_norm: float, latest: Optional[str],
              scaled: bool = False) -> Optional[LlmctlError]:
        """Count step `step`, which was not applied; the error that stops the run, or None
        when the policy skips it."""
        self.skipped += 1
        bad = [n for n, v, counts in (("loss", loss, True), ("gradient norm", grad_norm, not scaled))
               if counts and not math.isfinite(v)]
        what = f"the {' and the '.join(bad)} {'are' if len(bad) > 1 else 'is'} not finite"
        values = f"loss {loss:.4g}, gradient norm {grad_norm:.4g}"
        if self.policy == SKIP:
            if self.skipped <= self.max_skipped:
                return None
            why = (f", {self.skipped} steps so far with non-finite values, more than "
                   f"training.max_skipped_steps = {self.max_skipped}")
        else:
            why = ""
        return LlmctlError(f"step {step}: {what} ({values}){why}; stopped without writing a "
                           f"checkpoint; {_where(latest)}", hint=HINT)


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[tuple[str, int]]:
    """(name, number of NaN or infinite values) of every floating-point tensor holding any.

    One fused pass: the largest magnitude of each tensor (NaN and inf carry through a max,
    and unlike a sum of squares it cannot overflow for large finite values), then a count
    for the bad ones only.
    """
    import torch

    items = [(n, t.detach()) for n, t in named if t.is_floating_point() and t.numel()]
    if not items:
        return []
    maxes = torch._foreach_norm([t for _, t in items], float("inf"))
    dev = maxes[0].device
    finite = torch.isfinite(torch.stack([m.float().to(dev) for m in maxes])).tolist()
    return [(n, int((~torch.isfinite(t)).sum())) for (n, t), ok in zip(items, finite) if not ok]


def weights_error(step: int, bad: list[tuple[str, int]], latest: Optional[str],
                  where: str = "") -> LlmctlError:
    name, count = bad[0]
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    return LlmctlError(f"step {step}: weight {name}{where} holds {count} values that are not finite{more}; "
                       f"stopped without writing a checkpoint; {_where(latest)}", hint=HINT)
