"""Budgeted layer-wise bit allocation (README eq. 9): the top layers by score get the high precision.

A plan maps every decoder Linear to a bit width (``{"model.layers.0.mlp.down_proj": 2, ...}``),
the format ``python -m methods.quant.apply --plan`` reads. All sub-layers of a layer share its bit
width; embeddings and lm_head stay unquantized.
"""

from __future__ import annotations

import math

import numpy as np

from methods.nsds.scores import PROJECTIONS

ALLOWED_BITS = (2, 3, 4, 8)


class BudgetError(ValueError):
    """A bit width or budget the allocation cannot serve (the message names the value)."""


def check_bits(bits: int) -> int:
    if bits not in ALLOWED_BITS:
        raise BudgetError(f"bit width {bits!r} is not one of {list(ALLOWED_BITS)}")
    return bits


def n_high_layers(n_layers: int, budget: float, low: int = 2, high: int = 4) -> int:
    """Number of high-precision layers: floor(L * (B - low) / (high - low)) (README eq. 9).

    Floor (not round) so the average never exceeds the budget (README, "Choices").
    """
    check_bits(low)
    check_bits(high)
    if not low < high:
        raise BudgetError(f"precisions low={low}, high={high}: need low < high")
    if not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise BudgetError(f"budget {budget!r} is not a number")
    if not low <= budget <= high:
        raise BudgetError(
            f"budget {budget} bits cannot be met with precisions {{{low}, {high}}}: "
            f"it must lie in [{low}, {high}]"
        )
    if n_layers < 1:
        raise BudgetError(f"n_layers={n_layers}: nothing to allocate")
    return int(math.floor(n_layers * (budget - low) / (high - low) + 1e-9))


def layer_bits(scores, budget: float, low: int = 2, high: int = 4) -> list[int]:
    """Top-n_high layers by score (descending, ties to the earlier layer: README defect 3 fixed) get ``high``."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise BudgetError(f"non-finite layer scores {scores.tolist()}")
    n_high = n_high_layers(len(scores), budget, low, high)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    bits = [low] * len(scores)
    for i in order[:n_high]:
        bits[i] = high
    return bits


def uniform_bits(n_layers: int, budget: float) -> list[int]:
    """Every layer at the budget itself; only integer budgets in the allowed set have one."""
    if float(budget) != int(budget) or int(budget) not in ALLOWED_BITS:
        raise BudgetError(
            f"uniform allocation needs a budget in {list(ALLOWED_BITS)}, got {budget}"
        )
    return [int(budget)] * n_layers


def plan_from_bits(bits: list[int], projections=PROJECTIONS) -> dict[str, int]:
    return {
        f"model.layers.{i}.{p}": check_bits(int(b)) for i, b in enumerate(bits) for p in projections
    }


def average_bits(bits: list[int]) -> float:
    """Nominal average bits over layers (every layer holds the same number of weights)."""
    return float(np.mean(bits))
