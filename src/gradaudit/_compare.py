"""Judging pairs of sources element by element, and naming the odd one out.

The comparison sees only `Estimates` on `Probes`; it never asks which source is
hand-written, traced or differenced, except to pick the more trusted side of a pair
as the reference magnitude and to know which side may be unreliable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ._paths import LeafLayout
from ._report import (
    MAX_MAP_ELEMENTS,
    Element,
    ErrorMap,
    KinkNote,
    LeafReport,
    PairResult,
)
from ._sources import Estimates, Probes, Source
from ._tolerance import Tolerance

# Finite differences whose own error estimate exceeds this fraction of the value's
# scale are too rough to judge anything with.
_MAX_FD_ERROR_FRACTION = 0.1
# A kink is reported when the one-sided slopes depart from smooth behaviour by more
# than this many times the finite-difference error estimate (and the tolerance).
_KINK_NOISE_FACTOR = 3.0
_LISTED = 100


@dataclasses.dataclass(frozen=True)
class PairJudgement:
    """Per-probe outcome of comparing two sources on one probe set."""

    pair: str
    probes: Probes
    leaf: np.ndarray
    a: np.ndarray
    b: np.ndarray
    reference: np.ndarray
    diff: np.ndarray
    tol: np.ndarray
    unreliable: np.ndarray
    mismatch: np.ndarray
    excused: np.ndarray


# A leaf's gradient at most this fraction of the largest leaf's is zero up to the
# rounding of float64 sums that the two may share.
_ZERO_LEAF = 64 * float(np.finfo(np.float64).eps)


@dataclasses.dataclass(frozen=True)
class FdReliability:
    """Where finite differences can be trusted, on the finite-difference probes."""

    unreliable: np.ndarray
    kink: np.ndarray


def leaf_scales(
    layout: LeafLayout,
    sources: dict[str, Source],
    fd_probes: Probes,
    fd: Estimates | None,
) -> np.ndarray:
    """The magnitude of the gradient on each leaf, from the most trusted source."""
    scales = np.zeros(len(layout.paths))
    trusted = sources.get("autodiff")
    if trusted is not None and trusted.available and trusted.gradient is not None:
        for leaf, part in enumerate(layout.split(np.abs(trusted.gradient))):
            scales[leaf] = np.max(part[np.isfinite(part)], initial=0.0)
    elif fd is not None:
        leaf_of = fd_probes.leaf_numbers(layout)
        coordinate = np.arange(fd_probes.count) < fd_probes.coordinates.size
        for leaf in range(len(layout.paths)):
            values = np.abs(fd.values[(leaf_of == leaf) & coordinate])
            scales[leaf] = np.max(values[np.isfinite(values)], initial=0.0)
    # A leaf whose gradient is zero, to the rounding of the largest, borrows a
    # small share of the largest leaf's scale, so that rounding-level values there
    # are not judged as errors. Any other leaf keeps its own scale: a parameter of
    # size 1e6 beside one of 1e-6 has a gradient 1e12 times smaller, and errors in
    # it must count on its own scale.
    overall = scales.max(initial=0.0)
    zero = scales <= _ZERO_LEAF * overall
    return np.where(zero, np.maximum(scales, 1e-3 * overall), scales)


def probe_floor(
    probes: Probes, layout: LeafLayout, scales: np.ndarray, tolerance: Tolerance
) -> np.ndarray:
    """`floor_fraction * leaf_scale`, times `sum(|v|)` for a dense direction."""
    leaf = probes.leaf_numbers(layout)
    width = np.concatenate(
        [np.ones(probes.coordinates.size), np.abs(probes.vectors).sum(axis=1)]
    )
    return tolerance.floor_fraction * scales[leaf] * width


def fd_reliability(
    fd: Estimates, reference: np.ndarray, floor: np.ndarray, core_tol: np.ndarray
) -> FdReliability:
    """Mark finite differences that cannot be trusted: kinks and rough estimates."""
    finite = np.isfinite(fd.values) & np.isfinite(fd.noise)
    kink = finite & (fd.kink > np.maximum(_KINK_NOISE_FACTOR * fd.noise, core_tol))
    scale = np.maximum(np.abs(reference), floor)
    rough = finite & (fd.noise > _MAX_FD_ERROR_FRACTION * scale)
    unreliable = ~finite | kink | rough
    if fd.unstable is not None:
        unreliable |= fd.unstable
    return FdReliability(unreliable=unreliable, kink=kink)


def judge_pair(
    pair: str,
    probes: Probes,
    layout: LeafLayout,
    first: Estimates,
    second: Estimates,
    reference: np.ndarray,
    rtol: float | np.ndarray,
    tolerance: Tolerance,
    floor: np.ndarray,
    unreliable: np.ndarray,
    excused: np.ndarray | None = None,
) -> PairJudgement:
    """Apply the tolerance rule (see `_tolerance`) to every probe of one pair."""
    # A reference that is not finite (jax.grad's NaN where the pair does not
    # involve it) would make every tolerance nan, and nan tolerates anything.
    reference = np.where(np.isfinite(reference), reference, second.values)
    reference = np.where(np.isfinite(reference), reference, first.values)
    with np.errstate(invalid="ignore"):
        diff = np.abs(first.values - second.values)
        # A finite difference's departure from smoothness is also error it may
        # carry: a kink the kink test cannot see still shows there (`_finite_diff`).
        tol = (
            tolerance.atol
            + rtol * (np.abs(reference) + floor)
            + first.noise
            + second.noise
            + first.kink
            + second.kink
        )
        finite = np.isfinite(first.values) & np.isfinite(second.values)
        mismatch = ~unreliable & (~finite | (diff > tol))
    if excused is None:
        excused = np.zeros_like(mismatch)
    # Valid but different choices at a kink are left out, like unreliable ones.
    mismatch &= ~excused
    unreliable = unreliable | excused
    return PairJudgement(
        pair,
        probes,
        probes.leaf_numbers(layout),
        first.values,
        second.values,
        reference,
        diff,
        tol,
        unreliable,
        mismatch,
        excused,
    )


def kink_choice(value: float, left: float, right: float, slack: float) -> str:
    """Describe a gradient value at a kink relative to the one-sided slopes."""
    if not np.isfinite(value):
        return "not finite"
    if abs(value - left) <= slack and abs(value - right) <= slack:
        return "both slopes (they agree)"
    if abs(value - left) <= slack:
        return "the left slope"
    if abs(value - right) <= slack:
        return "the right slope"
    if min(left, right) - slack <= value <= max(left, right) + slack:
        return "between the slopes"
    return "outside the one-sided slopes: not a valid choice"


def is_valid_choice(
    value: np.ndarray, left: np.ndarray, right: np.ndarray, slack: np.ndarray
) -> np.ndarray:
    low, high = np.minimum(left, right), np.maximum(left, right)
    return np.isfinite(value) & (value >= low - slack) & (value <= high + slack)


def judged_at_kinks(
    gradient: Estimates, fd: Estimates, reliability: FdReliability
) -> tuple[Estimates, np.ndarray]:
    """Finite differences as a referee that also judges choices at kinks.

    Without a hand-written gradient, `jax.grad` (a custom rule, say) is what is
    under test, and at a kink its value must still be a valid choice. Where it is
    not, the element is judged against the nearest one-sided slope instead of
    being left out, so that an invalid custom rule fails.

    Returns:
        The referee's estimates and the mask of probes still left out.
    """
    slack = fd.noise
    invalid = reliability.kink & ~is_valid_choice(
        gradient.values, fd.left, fd.right, slack
    )
    if not invalid.any():
        return fd, reliability.unreliable
    low, high = np.minimum(fd.left, fd.right), np.maximum(fd.left, fd.right)
    nearest = np.clip(gradient.values, low, high)
    values = np.where(invalid, nearest, fd.values)
    kink = np.where(invalid, 0.0, fd.kink)
    referee = dataclasses.replace(fd, values=values, kink=kink)
    return referee, reliability.unreliable & ~invalid


OneSidedSlopes = Callable[[np.ndarray], tuple[float, float, float]]


def excuse_kinks(
    manual: Estimates,
    autodiff: Estimates,
    fd: Estimates,
    kink: np.ndarray,
    disagree: np.ndarray,
    slack: np.ndarray,
    coordinate_scale: np.ndarray,
    one_sided: OneSidedSlopes,
    size: int,
    coordinates: np.ndarray,
    leaf_of: np.ndarray,
) -> tuple[np.ndarray, dict[str, bool]]:
    """Decide where manual and autodiff may differ because both made a valid choice.

    At a kink there is no single derivative; any value between the one-sided
    slopes is a defensible choice for one coordinate. Coordinates can share a kink,
    though (tied maxima): routing the whole gradient to every tied input passes the
    per-coordinate test and is still wrong. So the coordinates where the two sources
    disagree are also tested together, along the direction that moves them all at
    once: a valid gradient's projection on that direction must lie between the
    one-sided slopes along it. That holds where the loss is convex (or concave)
    along the direction, so convex kinks (slope rising across the kink) and concave
    ones are tested as two groups: mixing them, say the ReLUs of two units whose
    downstream weights differ in sign, lets their bends cancel along the combined
    direction, and a valid choice would fail.

    Returns:
        A mask over the probes of the excused disagreements, and for each source
        whether its choices passed the joint test.
    """
    candidates = kink & disagree
    manual_valid = is_valid_choice(manual.values, fd.left, fd.right, slack)
    joint = {"manual": True, "autodiff": True}
    if not candidates.any():
        return np.zeros_like(candidates), joint

    # Each group holds every kink coordinate of a leaf where the two disagree, not
    # only the disagreeing ones: where jax.grad routes a tie to one input, the
    # hand-written gradient that routes it to all agrees with it there, and only
    # the whole group shows the excess.
    convex = fd.right >= fd.left
    groups = [
        kink & (leaf_of == leaf) & side
        for leaf in np.unique(leaf_of[candidates])
        for side in (convex, ~convex)
        if (candidates & (leaf_of == leaf) & side).any()
    ]
    for group in groups:
        positions = np.flatnonzero(group)
        weights = coordinate_scale[positions]
        direction = np.zeros(size)
        direction[coordinates[positions]] = weights
        left, right, noise = one_sided(direction)
        low, high = min(left, right), max(left, right)
        joint_slack = noise + float(weights @ slack[positions])
        for name, estimates in (("manual", manual), ("autodiff", autodiff)):
            projection = float(weights @ estimates.values[positions])
            joint[name] &= low - joint_slack <= projection <= high + joint_slack

    # The hand-written gradient is what is under test: a valid choice of its own
    # is excused even where jax.grad made none (JAX splits the gradient of
    # `jnp.maximum` at a tie in half, which is no one-sided slope of a composed
    # kink); the kink notes say which choice each source made.
    excused = candidates & manual_valid
    if not joint["manual"]:
        excused[:] = False
    return excused, joint


def summarise(
    judgement: PairJudgement,
    leaf_number: int,
    layout: LeafLayout,
    element_values: Callable[[int], tuple[float | None, ...]],
) -> PairResult:
    """Collapse one pair's per-probe outcome to the figures for one leaf."""
    on_leaf = judgement.leaf == leaf_number
    judged = on_leaf & ~judgement.unreliable
    mismatch = on_leaf & judgement.mismatch
    compared = int(judged.sum())
    kink_choices = int((on_leaf & judgement.excused).sum())
    if not compared:
        return PairResult(
            judgement.pair,
            True,
            0,
            0,
            int((on_leaf & judgement.unreliable).sum()),
            0.0,
            0.0,
            None,
            kink_choices=kink_choices,
        )
    diff = np.where(judged, judgement.diff, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(
            judgement.diff == 0, 0.0, judgement.diff / np.abs(judgement.reference)
        )
        ratio = np.where(judged, judgement.diff / judgement.tol, -np.inf)
    ratio = np.where(judged & ~np.isfinite(judgement.diff), np.inf, ratio)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    worst = int(np.argmax(ratio))
    finite_diff = np.where(np.isfinite(diff), diff, -np.inf)
    max_abs = float(np.max(finite_diff[judged], initial=0.0))
    finite_rel = relative[judged & np.isfinite(judgement.diff)]
    max_rel = float(np.max(finite_rel, initial=0.0))
    if (judged & ~np.isfinite(judgement.diff)).any():
        max_abs = max_rel = float("inf")
    return PairResult(
        pair=judgement.pair,
        ok=not mismatch.any(),
        compared=compared,
        mismatched=int(mismatch.sum()),
        unreliable=int((on_leaf & judgement.unreliable).sum()),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        worst=_element(judgement, worst, layout, element_values, relative),
        mismatched_indices=tuple(
            _leaf_index(judgement.probes, layout, p)
            for p in np.flatnonzero(mismatch)[:_LISTED]
            if p < judgement.probes.coordinates.size
        ),
        kink_choices=kink_choices,
    )


@dataclasses.dataclass(frozen=True)
class LeafElements:
    """One pair's judgement on one leaf, element by element, in C order.

    Elements no coordinate probe looked at (sampled modes) hold nan everywhere.

    Attributes:
        first: the first source's value.
        second: the second source's value.
        tolerance: the tolerance that applied; nan where not judged.
        unreliable: elements probed but left out of the verdict.
    """

    first: np.ndarray
    second: np.ndarray
    tolerance: np.ndarray
    unreliable: np.ndarray

    @property
    def judged(self) -> np.ndarray:
        return np.isfinite(self.tolerance)

    @property
    def over_tolerance(self) -> np.ndarray:
        """`|first - second| / tolerance`; nan where not judged."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(self.first - self.second) / self.tolerance
        finite = np.isfinite(self.first) & np.isfinite(self.second)
        ratio = np.where(self.judged & ~finite, np.inf, ratio)
        return np.where(self.judged & (self.first == self.second), 0.0, ratio)


def leaf_elements(
    judgement: PairJudgement, leaf_number: int, layout: LeafLayout
) -> LeafElements:
    """Spread a pair's per-probe judgement on one leaf back over its elements."""
    size = layout.sizes[leaf_number]
    coordinates = judgement.probes.coordinates
    on_leaf = np.flatnonzero(judgement.leaf[: coordinates.size] == leaf_number)
    local = coordinates[on_leaf] - layout.offsets[leaf_number]
    first, second, tolerance = (np.full(size, np.nan) for _ in range(3))
    unreliable = np.zeros(size, bool)
    first[local] = judgement.a[on_leaf]
    second[local] = judgement.b[on_leaf]
    left_out = judgement.unreliable[on_leaf]
    tolerance[local[~left_out]] = judgement.tol[on_leaf][~left_out]
    unreliable[local[left_out]] = True
    return LeafElements(first, second, tolerance, unreliable)


def error_map(elements: LeafElements) -> ErrorMap | None:
    """The per-element picture of one pair on one leaf, or None for a large leaf."""
    if elements.first.size > MAX_MAP_ELEMENTS:
        return None
    judged = elements.judged
    diff = np.abs(elements.first - elements.second)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(diff == 0, 0.0, diff / np.abs(elements.second))
    relative = np.where(judged, np.where(np.isnan(relative), np.inf, relative), np.nan)
    return ErrorMap(
        relative=tuple(float(v) for v in relative),
        over_tolerance=tuple(float(v) for v in elements.over_tolerance),
        unreliable=tuple(int(i) for i in np.flatnonzero(elements.unreliable)),
    )


def _leaf_index(probes: Probes, layout: LeafLayout, position: int) -> tuple[int, ...]:
    return layout.leaf_of(int(probes.coordinates[position]))[1]


def _element(
    judgement: PairJudgement,
    position: int,
    layout: LeafLayout,
    element_values: Callable[[int], tuple[float | None, ...]],
    relative: np.ndarray,
) -> Element:
    probes = judgement.probes
    leaf = int(judgement.leaf[position])
    if position < probes.coordinates.size:
        index: tuple[int, ...] | None = _leaf_index(probes, layout, position)
        direction = None
    else:
        index = None
        dense = position - probes.coordinates.size
        direction = int(np.sum(probes.vector_leaf[:dense] == leaf))
    manual, autodiff, fd = element_values(position)
    return Element(
        path=layout.paths[leaf],
        index=index,
        direction=direction,
        manual=manual,
        autodiff=autodiff,
        fd=fd,
        abs_error=_or_inf(float(judgement.diff[position])),
        rel_error=_or_inf(float(relative[position])),
        tolerance=float(judgement.tol[position]),
    )


def _or_inf(value: float) -> float:
    """A comparison with NaN on one side is infinitely wrong, not undefined."""
    return float("inf") if np.isnan(value) else value


_EXPLANATIONS = {
    "agree": "All available sources agree.",
    "manual_wrong": (
        "The hand-written gradient is wrong here: jax.grad and finite differences"
        " agree with each other and not with it."
    ),
    "manual_wrong_vs_fd": (
        "The hand-written gradient disagrees with finite differences (jax.grad is"
        " not available to break the tie, but finite differences passed their own"
        " reliability checks here)."
    ),
    "manual_or_autodiff": (
        "The hand-written gradient and jax.grad disagree; finite differences did not"
        " look at the disagreeing elements, or could not be trusted there."
    ),
    "fd_suspect": (
        "The hand-written gradient and jax.grad agree, but finite differences"
        " disagree with them: the loss may not be differentiable here, or a"
        " `stop_gradient` hides a dependence from jax.grad and the hand-written"
        " gradient alike."
    ),
    "autodiff_suspect": (
        "The hand-written gradient agrees with finite differences but jax.grad does"
        " not: look at the JAX side (a `custom_vjp`/`custom_jvp` rule or a"
        " `stop_gradient` in the loss)."
    ),
    "autodiff_vs_fd": (
        "jax.grad disagrees with finite differences: a `custom_vjp`/`custom_jvp`"
        " rule or a `stop_gradient` in the loss is the usual cause."
    ),
    "all_disagree": "All three sources disagree with each other.",
    "inconclusive": (
        "Nothing could be judged here: finite differences could not be trusted at"
        " any element they looked at (kinks, or a loss too noisy for the step), and"
        " there is no other source to compare with. Check at another point, or"
        " make the loss traceable by JAX."
    ),
    "manual_kink": (
        "The hand-written gradient makes a choice at a kink that is not a valid"
        " one-sided derivative (for example the full gradient routed to every tied"
        " maximum)."
    ),
    "nonfinite": "A source produced NaN or Inf.",
}


def leaf_verdict(pairs: dict[str, PairResult], kink_invalid: bool) -> tuple[str, str]:
    """Name the odd one out on a leaf from which pairs agree."""

    def status(name: str) -> bool | None:
        result = pairs.get(name)
        if result is None or not (result.compared or result.kink_choices):
            return None
        return result.ok

    ma, mf, af = status("manual-autodiff"), status("manual-fd"), status("autodiff-fd")
    manual_present = "manual-autodiff" in pairs or "manual-fd" in pairs
    judged = (ma, mf) if manual_present else (ma, mf, af)
    if any(
        r.worst is not None and not np.isfinite(r.max_abs_error) and not r.ok
        for r in pairs.values()
    ):
        code = "nonfinite"
    elif all(s is None for s in judged):
        code = "inconclusive"
    elif all(s in (True, None) for s in (ma, mf, af)):
        code = "agree"
    elif ma is False and kink_invalid and af in (True, None) and mf in (True, None):
        code = "manual_kink"
    elif ma is False and af in (True, None) and mf is False:
        code = "manual_wrong"
    elif ma is False and af is not False and mf is not False:
        code = "manual_or_autodiff"
    elif ma is None and mf is False:
        code = "manual_wrong_vs_fd"
    elif ma is True:
        code = "fd_suspect"
    elif ma is False and mf is True:
        code = "autodiff_suspect"
    elif ma is None and af is False:
        code = "autodiff_vs_fd"
    else:
        code = "all_disagree"
    return code, _EXPLANATIONS[code]


def build_leaf(
    leaf_number: int,
    layout: LeafLayout,
    dtype: str,
    results: dict[str, PairResult],
    coverage: str,
    unreliable_indices: tuple[tuple[int, ...], ...],
    kinks: tuple[KinkNote, ...],
    kink_invalid: bool,
    error_maps: dict[str, ErrorMap],
) -> LeafReport:
    verdict, explanation = leaf_verdict(results, kink_invalid)
    return LeafReport(
        path=layout.paths[leaf_number],
        shape=layout.shapes[leaf_number],
        dtype=dtype,
        ok=verdict != "inconclusive" and all(r.ok for r in results.values()),
        pairs=results,
        verdict=verdict,
        explanation=explanation,
        coverage=coverage,
        unreliable_indices=unreliable_indices[:_LISTED],
        kinks=kinks[:20],
        error_maps=error_maps,
    )


def total(pair: str, per_leaf: list[PairResult]) -> PairResult:
    """Combine one pair's leaf results into the figures over all leaves."""
    if not per_leaf:
        return PairResult(pair, True, 0, 0, 0, 0.0, 0.0, None)
    worst_candidates = [r.worst for r in per_leaf if r.worst is not None]
    worst = max(
        worst_candidates,
        key=lambda e: (
            e.abs_error / max(e.tolerance, 1e-300)
            if np.isfinite(e.abs_error)
            else np.inf
        ),
        default=None,
    )
    return PairResult(
        pair=pair,
        ok=all(r.ok for r in per_leaf),
        compared=sum(r.compared for r in per_leaf),
        mismatched=sum(r.mismatched for r in per_leaf),
        unreliable=sum(r.unreliable for r in per_leaf),
        kink_choices=sum(r.kink_choices for r in per_leaf),
        max_abs_error=max(r.max_abs_error for r in per_leaf),
        max_rel_error=max(r.max_rel_error for r in per_leaf),
        worst=worst,
    )
