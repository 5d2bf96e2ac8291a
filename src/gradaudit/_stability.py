"""A second look at disputed finite differences, at a smaller step.

A finite difference that disagrees with jax.grad (or, without it, with the
hand-written gradient) is either right, and the other source is wrong, or spoiled by
something its error estimate cannot see: a kink in the kink test's blind spot, or
several kinks whose effects cancel in it. The two cases part when the step shrinks.
A real derivative stays put, within the error bounds of both estimates; a kink moves
out of the smaller stencil and the estimate jumps. So before any source is blamed,
the disputed probes are differenced again at a sixteenth of the step, and those whose
estimate moves by more than both error bounds are left out as unstable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ._sources import Estimates, Probes

# How much smaller the second step is. Sixteen moves a kink anywhere beyond a
# quarter of the first step out of the smaller stencil (four steps wide at most),
# and costs four bits of the estimate's rounding, which its error bound includes.
STEP_DIVISOR = 16.0


def recheck_at_smaller_step(
    fd: Estimates,
    probes: Probes,
    disputed: np.ndarray,
    step: float,
    differenced: Callable[[Probes, float], Estimates],
) -> tuple[Estimates, int]:
    """Mark the disputed probes whose estimate does not survive a smaller step.

    Args:
        fd: the finite differences on `probes`.
        probes: the finite-difference probes.
        disputed: a mask over `probes` of the estimates to look at again.
        step: the relative step `fd` was computed with.
        differenced: computes finite differences on some probes at a given step,
            with the method and settings `fd` was computed with.

    Returns:
        `fd` with `unstable` set where the second look contradicts it, and how many
        probes that newly marks.
    """
    positions = np.flatnonzero(disputed)
    if positions.size == 0:
        return fd, 0
    second = differenced(probes.subset(disputed), step / STEP_DIVISOR)
    moved = np.abs(fd.values[positions] - second.values)
    allowed = fd.noise[positions] + fd.kink[positions] + second.noise + second.kink
    # A nan on either side is not evidence of stability either.
    contradicted = ~(moved <= allowed)
    unstable = (
        np.zeros(disputed.size, bool) if fd.unstable is None else fd.unstable.copy()
    )
    before = int(unstable.sum())
    unstable[positions[contradicted]] = True
    return dataclasses.replace(fd, unstable=unstable), int(unstable.sum()) - before
