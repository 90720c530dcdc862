"""Training metrics as pure arithmetic: token-weighted loss, perplexity, ETA, exact match.

Losses are aggregated as (sum of token losses, token count) pairs and divided once at the end,
so a worker or batch with few completion tokens weighs exactly as much as its tokens, not as
much as a full batch (averaging per-batch means would bias toward short batches).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LOG_PERPLEXITY = 700.0  # exp() overflows a float just above 709


@dataclass
class TokenLoss:
    """Running sum of per-token losses and the number of tokens they cover."""

    loss_sum: float = 0.0
    tokens: int = 0

    def add(self, loss_sum: float, tokens: int) -> None:
        self.loss_sum += float(loss_sum)
        self.tokens += int(tokens)

    def merge(self, others: Iterable[TokenLoss]) -> TokenLoss:
        total = TokenLoss(self.loss_sum, self.tokens)
        for other in others:
            total.add(other.loss_sum, other.tokens)
        return total

    @property
    def mean(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else math.nan


# The sums a step window keeps on each worker; summed across workers in one collective.
WINDOW_FIELDS = ("loss_sum", "useful_tokens", "tokens", "slots", "grad_norm_sum", "norms")


@dataclass
class StepWindow:
    """What happened since the last step point on one worker: losses and token counts of its
    micro-batches, the gradient norms of its optimizer steps, and the last learning rate."""

    started: float = 0.0  # monotonic clock when the window opened
    # Numbers, or device tensors summed without a host sync until the point is recorded.
    loss_sum: Any = 0.0
    useful_tokens: int = 0  # tokens that carry loss (completion tokens)
    tokens: int = 0  # non-padding tokens fed to the model
    slots: int = 0  # rows x contextLength: what packing fills
    grad_norm_sum: Any = 0.0
    norms: int = 0
    learning_rate: float = 0.0

    def add_batch(self, loss_sum: Any, useful: int, tokens: int, slots: int) -> None:
        self.loss_sum += loss_sum
        self.useful_tokens += useful
        self.tokens += tokens
        self.slots += slots

    def add_step(self, learning_rate: float, grad_norm: Any) -> None:
        self.learning_rate = learning_rate
        if grad_norm is not None:
            self.grad_norm_sum += grad_norm
            self.norms += 1

    def sums(self) -> list[float]:
        return [float(getattr(self, name)) for name in WINDOW_FIELDS]


def step_point(
    sums: Sequence[float], learning_rate: float, elapsed_s: float
) -> dict[str, float | None]:
    """A step point's numbers from the window sums of all workers (`WINDOW_FIELDS` order):
    token-weighted loss, rates over the window's wall time, fill of the context slots, and the
    gradient norm averaged over the steps and workers (all see the same all-reduced norm)."""
    totals = dict(zip(WINDOW_FIELDS, sums, strict=True))
    seconds = max(elapsed_s, 1e-9)
    norms = totals["norms"]
    return {
        "train_loss": TokenLoss(totals["loss_sum"], int(totals["useful_tokens"])).mean,
        "learning_rate": learning_rate,
        "grad_norm": totals["grad_norm_sum"] / norms if norms else None,
        "tokens_per_second": totals["tokens"] / seconds,
        "useful_tokens_per_second": totals["useful_tokens"] / seconds,
        "packing_fill": min(1.0, totals["tokens"] / totals["slots"]) if totals["slots"] else 0.0,
    }


def perplexity(mean_loss: float) -> float:
    """exp(loss); inf instead of an OverflowError for a diverged run."""
    if math.isnan(mean_loss):
        return math.nan
    return math.exp(mean_loss) if mean_loss < MAX_LOG_PERPLEXITY else math.inf


def eta_seconds(elapsed_s: float, steps_done: int, total_steps: int) -> int | None:
    """Remaining seconds at the average pace so far; None before the first step."""
    if steps_done <= 0 or total_steps <= 0:
        return None
    remaining = max(total_steps - steps_done, 0)
    return round(elapsed_s / steps_done * remaining)


def optimizer_steps_per_epoch(micro_batches_per_worker: int, accumulation: int) -> int:
    """Optimizer steps in one epoch: a last partial accumulation window still steps."""
    return max(1, math.ceil(micro_batches_per_worker / accumulation))


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_multiplier(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear warmup, then linear or
    cosine decay to zero at `total_steps`, or constant. Counted in optimizer steps, not samples."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


_WS = re.compile(r"\s+")
_ANSWER_LETTER = re.compile(r"answer\s*[:]?\s*\(?([a-e])\)?\s*\.?\s*$", re.I)


def normalize_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


def mathqa_letter(text: str) -> str | None:
    """The answer letter from 'Answer: c' at the end of a MathQA completion."""
    match = _ANSWER_LETTER.search(text.strip())
    return match.group(1).lower() if match else None
