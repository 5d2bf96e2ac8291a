"""Choosing how many finite-difference directions run side by side, by measuring.

Within the one compiled program, directions go through `jax.lax.map` in batches,
each batch `jax.vmap`ped. Which batch size is fastest depends on the backend: on a
two-core CPU a loop over single directions beat wide batches by 1.2-2.3x (every
direction in flight copies the parameters), while a GPU wants batches wide enough
to fill it. Rather than guess, a check with many directions times a few candidate
sizes on a slice of its own directions and keeps the fastest. The answer is
remembered per backend, device kind, problem size (to a power of two) and stencil,
so later checks of similar problems reuse it.

Measuring costs a compilation per candidate, a few tenths of a second each on a CPU,
so a check whose finite differences are expected to finish in a few seconds anyway
skips it and runs with a small fixed batch: on a 6,000-parameter MLP, measuring
took 6 s to save half a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

# Candidates are powers of four: fine enough to find the knee, few enough to keep
# the compilations cheap.
_CANDIDATES = (1, 4, 16, 64, 256, 1024, 4096)
# Measure only when the check has at least this many times the slice's directions,
# so that the measurement costs a small part of the run it speeds up.
_WORTHWHILE = 4
# Measure only when the finite differences are expected to take at least this long
# one direction at a time; shorter runs cannot win back the compilations.
_MEASURE_FROM_SECONDS = 10.0
# The batch for checks not worth measuring.
_UNMEASURED = 4
_chosen: dict[tuple[str, str, int, str], int] = {}


def candidates_within(memory_bound: int, directions: int) -> list[int]:
    """Batch sizes worth timing: within the memory bound and the work to do."""
    return [
        size
        for size in _CANDIDATES
        if size <= memory_bound and 2 * size * _WORTHWHILE <= directions
    ]


def measured_batch_size(
    run: Callable[[int, int], object],
    memory_bound: int,
    directions: int,
    size: int,
    method: str,
    expected_seconds: float,
) -> int:
    """The fastest batch size for this kind of problem on this backend.

    Args:
        run: `run(batch_size, count)` evaluates finite differences along the first
            `count` directions with that batch size and blocks until done.
        memory_bound: the largest batch the memory budget allows.
        directions: how many directions the check will evaluate.
        size: the number of parameters.
        method: the stencil.
        expected_seconds: how long the finite differences would take one
            direction at a time, from a timed evaluation of the loss.

    Returns:
        The chosen batch size; `min(memory_bound, 4)` when there is too little
        work to be worth measuring.
    """
    device = jax.devices()[0]
    key = (device.platform, device.device_kind, max(size, 1).bit_length(), method)
    if key in _chosen:
        return min(_chosen[key], memory_bound)
    sizes = candidates_within(memory_bound, directions)
    if len(sizes) < 2 or expected_seconds < _MEASURE_FROM_SECONDS:
        return max(1, min(memory_bound, _UNMEASURED))
    count = 2 * sizes[-1]
    timings = {}
    for batch in sizes:
        run(batch, count)  # compiles
        start = time.perf_counter()
        run(batch, count)
        timings[batch] = time.perf_counter() - start
    best = min(timings, key=timings.__getitem__)
    _chosen[key] = best
    return best
