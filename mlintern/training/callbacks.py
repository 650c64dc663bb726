from __future__ import annotations

import math
import statistics

from transformers import TrainerCallback

from mlintern.schemas import LossTail


class DivergenceError(RuntimeError):
    """Training loss went NaN/inf or diverged; the message says at which step."""


# A continuation of a trained model starts near zero loss, where 4x the first loss is ordinary
# noise (measured: a scale-up from a 0.88-dev champion was stopped as "diverged" at loss 0.02). A
# divergence is a loss well above this floor, whatever the first loss was.
LOSS_FLOOR = 0.5


class DivergenceGuard(TrainerCallback):
    """Stop training as soon as the loss is NaN/inf, or stays above `factor` x max(its first value,
    LOSS_FLOOR) for `patience` logs."""

    def __init__(self, factor: float = 4.0, patience: int = 3):
        self.factor = factor
        self.patience = patience
        self.first: float | None = None
        self.bad = 0
        self.reason: str | None = None
        self.last_loss: float | None = None
        self.losses: list[float] = []  # every finite logged loss, in order

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isnan(loss) or math.isinf(loss):
            self.reason = f"loss is {loss} at step {state.global_step}"
        else:
            self.last_loss = loss
            self.losses.append(loss)
            if self.first is None:
                self.first = loss
            elif loss > self.factor * max(self.first, LOSS_FLOOR):
                self.bad += 1
                if self.bad >= self.patience:
                    self.reason = (f"loss diverged to {loss:.3f} at step {state.global_step} "
                                   f"(first logged loss {self.first:.3f})")
            else:
                self.bad = 0
        if self.reason:
            control.should_training_stop = True


def loss_tail(losses: list[float], share: float = 0.25, min_n: int = 3) -> LossTail | None:
    """The mean of the last `share` of the logged losses (at least `min_n` of them) with its standard
    error; None when fewer than `min_n` losses were logged."""
    if len(losses) < min_n:
        return None
    tail = losses[-max(min_n, math.ceil(share * len(losses))):]
    return LossTail(value=statistics.fmean(tail), stderr=statistics.stdev(tail) / math.sqrt(len(tail)), n=len(tail))
