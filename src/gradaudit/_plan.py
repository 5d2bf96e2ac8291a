"""Choosing what finite differences look at: the check's mode and its probes.

- `full`: every coordinate. Exact and complete; cost grows with the parameter count.
- `sampled`: `samples_per_leaf` exact coordinates per leaf, so a small bias is never
  drowned by a large weight matrix. Half of them are the elements where the
  hand-written gradient and jax.grad disagree most (so a disagreement is always
  refereed), the rest are drawn at random.
- `directional`: `directions_per_leaf` random Gaussian directions per leaf; each
  compares a projection of the whole leaf, at a cost independent of its size.
- `auto`: `full` when the model is small enough to difference completely within
  the time budget, otherwise `sampled` and `directional` together.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._finite_diff import default_step, points_per_probe
from ._paths import LeafLayout
from ._sources import Probes

MODES = ("auto", "full", "sampled", "directional")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The probes finite differences will answer, and how to describe them."""

    mode: str
    probes: Probes
    coverage: tuple[str, ...]


def measure_evaluation_seconds(function: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of a few timed calls of an already-compiled evaluation."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def resolve_mode(
    mode: str,
    size: int,
    evaluations_per_coordinate: int,
    seconds_per_evaluation: float,
    time_budget: float,
) -> str:
    if mode != "auto":
        return mode
    estimated = size * evaluations_per_coordinate * seconds_per_evaluation
    return "full" if estimated <= time_budget else "sampled+directional"


def plan_probes(
    mode: str,
    layout: LeafLayout,
    scales: np.ndarray,
    rng: np.random.Generator,
    samples_per_leaf: int,
    directions_per_leaf: int,
    disagreement: np.ndarray | None,
) -> Plan:
    """Pick coordinates and directions for finite differences.

    Args:
        mode: a resolved mode: `full`, `sampled`, `directional` or
            `sampled+directional`.
        layout: the flat layout of the parameters.
        scales: the step scale of every coordinate; random directions are drawn
            as `scale * N(0, 1)` so that each element moves in proportion to its
            own magnitude.
        rng: the generator for sampled coordinates and directions.
        samples_per_leaf: exact coordinates per leaf in sampled mode.
        directions_per_leaf: random directions per leaf in directional mode.
        disagreement: per coordinate, how far the hand-written gradient is from
            jax.grad in units of the rounding both can explain, or None when
            either is missing.
    """
    size = layout.total_size
    coordinates: list[np.ndarray] = []
    vectors, vector_leaf, coverage = [], [], []
    for leaf, (offset, leaf_size) in enumerate(
        zip(layout.offsets, layout.sizes, strict=True)
    ):
        parts = []
        if mode == "full" or leaf_size <= samples_per_leaf and "sampled" in mode:
            coordinates.append(np.arange(offset, offset + leaf_size))
            parts.append(_plural(leaf_size, "element", every=True))
        elif "sampled" in mode:
            chosen = _sample(offset, leaf_size, samples_per_leaf, rng, disagreement)
            coordinates.append(chosen)
            parts.append(f"{chosen.size} of {_plural(leaf_size, 'element')}")
        if "directional" in mode and not (
            leaf_size <= samples_per_leaf and "sampled" in mode
        ):
            for _ in range(directions_per_leaf):
                v = np.zeros(size)
                part = slice(offset, offset + leaf_size)
                v[part] = scales[part] * rng.standard_normal(leaf_size)
                vectors.append(v)
                vector_leaf.append(leaf)
            parts.append(_plural(directions_per_leaf, "random direction"))
        coverage.append(" and ".join(parts))

    return Plan(
        mode=mode,
        probes=Probes(
            coordinates=np.concatenate(coordinates or [np.zeros(0, np.int64)]).astype(
                np.int64
            ),
            vectors=np.asarray(vectors, np.float64).reshape(len(vectors), size),
            vector_leaf=np.asarray(vector_leaf, np.int64),
        ),
        coverage=tuple(coverage),
    )


def _plural(count: int, noun: str, every: bool = False) -> str:
    if count == 1:
        return f"the only {noun}" if every else f"1 {noun}"
    return f"{'all ' if every else ''}{count} {noun}s"


def _sample(
    offset: int,
    leaf_size: int,
    count: int,
    rng: np.random.Generator,
    disagreement: np.ndarray | None,
) -> np.ndarray:
    chosen: list[int] = []
    if disagreement is not None:
        part = disagreement[offset : offset + leaf_size]
        order = np.argsort(-np.nan_to_num(part, nan=np.inf, posinf=np.inf))
        chosen = [
            int(i)
            for i in order[: count // 2]
            if part[i] > 1 or not np.isfinite(part[i])
        ]
    rest = np.setdiff1d(np.arange(leaf_size), chosen)
    chosen += list(rng.choice(rest, size=count - len(chosen), replace=False))
    return offset + np.sort(np.asarray(chosen, np.int64))


def full_probes(layout: LeafLayout) -> Probes:
    """Every coordinate: what two full gradients are compared on.

    Random directions add nothing there, since every element is judged already,
    and counting them would make "7 of 131076 compared" of 3 wrong elements.
    """
    return Probes(
        coordinates=np.arange(layout.total_size, dtype=np.int64),
        vectors=np.zeros((0, layout.total_size)),
        vector_leaf=np.zeros(0, np.int64),
    )


def resolve_mode_and_batch(
    mode: str,
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    method: str,
    traceable: bool,
    time_budget: float,
    memory_budget: int,
) -> tuple[str, int, float]:
    """The concrete mode, the most directions memory lets run side by side, and the
    seconds one evaluation of the loss takes."""
    per_direction = points_per_probe(method)
    if traceable:
        compiled = jax.jit(flat_loss).lower(jnp.asarray(x)).compile()
        point = jnp.asarray(x)
        seconds = measure_evaluation_seconds(
            lambda: compiled(point).block_until_ready()
        )
        batch_size = _batch_size(compiled, x, per_direction, memory_budget)
    else:
        seconds = measure_evaluation_seconds(lambda: flat_loss(x.copy()), repeats=1)
        batch_size = 1
    resolved = resolve_mode(mode, x.size, per_direction, seconds, time_budget)
    return resolved, batch_size, seconds


def _batch_size(compiled: Any, x: np.ndarray, per_direction: int, budget: int) -> int:
    """The most directions the memory budget lets run side by side.

    Each direction in flight holds its own copies of the parameter vector and the
    loss's intermediates at every stencil point. The batch actually used is
    measured within this bound (see `_batching`).
    """
    try:
        analysis = compiled.memory_analysis()
        temporary = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    except Exception:  # not every backend reports it; fall back to the vector size
        temporary = 0
    per_point = temporary + 3 * x.nbytes
    return int(max(1, budget // max(1, per_point * per_direction)))


def step_for(method: str, fd_epsilon: float) -> float:
    return default_step(method, fd_epsilon)
