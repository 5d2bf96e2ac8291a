"""Naming the likely cause of a disagreement, from the evidence the sources hold.

Most wrong hand-written gradients fall into a few patterns: a constant factor, a
flipped sign, a transposed or swapped leaf, a missing term, or an error confined
to one row, channel or border. Each pattern predicts the hand-written gradient
from the reference (jax.grad, or finite differences without it); a pattern is
named only when its prediction matches the hand-written gradient within the same
tolerance the check itself applied, so a diagnosis is evidence, not a guess.
Disagreements that are not the hand-written gradient's fault get a cause drawn
from the loss itself: a kink, a `stop_gradient` or custom rule, a narrow dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ._causes import CheckFacts, autodiff_cause, fd_cause, kink, nonfinite
from ._report import Diagnosis, LeafReport

# A prediction explains the hand-written gradient when every judged element is
# within this many tolerances of it: the pattern's parameter is itself estimated
# from the data, so it carries a little of the data's rounding.
_SLACK = 4.0
# A region is only named when this share of the leaf's elements was judged.
_REGION_COVERAGE = 0.9
# A difference this many times the estimated rounding is called "not rounding";
# a smaller one only "unlikely" to be.
_CLEARLY_NOT_ROUNDING = 10.0
# A border is named only when the wrong elements fill this share of its band.
_BORDER_FILL = 0.5
# Factors are recognised as simple fractions with denominators up to this.
_MAX_DENOMINATOR = 16
_FACTOR_RTOL = 1e-4
# A factor is written as a fraction only when it is one this closely; 1.0001 is
# not 1, even though a factor that close to 1 is named a scaling.
_TEXT_RTOL = 1e-6
_MANUAL_VERDICTS = ("manual_wrong", "manual_wrong_vs_fd", "manual_or_autodiff")


@dataclasses.dataclass(frozen=True)
class LeafFacts:
    """What the sources say about one leaf, shaped like the leaf.

    Attributes:
        param: the leaf's value.
        manual: the hand-written gradient, or None.
        reference: jax.grad's gradient, or finite differences (nan where not
            probed) without it; None when neither is there.
        reference_name: which of the two `reference` is.
        tolerance: the tolerance applied between `manual` and `reference`; nan
            where an element was not judged.
        noise: the rounding allowance of `manual`.
        manual_dtype: the precision the hand-written gradient computed in.
        first_nonfinite: per source, the index of its first non-finite value and
            how many there are.
    """

    param: np.ndarray
    manual: np.ndarray | None
    reference: np.ndarray | None
    reference_name: str
    tolerance: np.ndarray | None
    noise: np.ndarray | None
    manual_dtype: str
    first_nonfinite: dict[str, tuple[tuple[int, ...], int]]


def data_sizes(args: Sequence[Any]) -> frozenset[int]:
    """Axis lengths of every array in the data, and products of neighbours."""
    sizes: set[int] = set()
    for leaf in _array_leaves(args):
        shape = tuple(int(n) for n in np.shape(leaf))
        sizes.update(shape)
        sizes.update(a * b for a, b in zip(shape, shape[1:], strict=False))
        if shape:
            sizes.add(int(np.prod(shape)))
    return frozenset(n for n in sizes if n > 2)


def _array_leaves(tree: Any) -> list[Any]:
    import jax

    return [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape")]


def diagnose_leaves(
    leaves: Sequence[LeafReport], facts: Sequence[LeafFacts], check: CheckFacts
) -> list[LeafReport]:
    """Attach a `Diagnosis` to every failing leaf."""
    diagnoses = [
        diagnose(leaf, facts[number], _others(leaves, facts, number), check)
        if not leaf.ok
        else None
        for number, leaf in enumerate(leaves)
    ]
    shared = _shared_factor(leaves, facts, diagnoses)
    return [
        dataclasses.replace(leaf, diagnosis=shared.get(number, diagnosis))
        for number, (leaf, diagnosis) in enumerate(zip(leaves, diagnoses, strict=True))
    ]


def _shared_factor(
    leaves: Sequence[LeafReport],
    facts: Sequence[LeafFacts],
    diagnoses: Sequence[Diagnosis | None],
) -> dict[int, Diagnosis]:
    """One factor common to several leaves, named on the leaves too small to show
    it alone.

    A factor fitted to a single element explains it trivially, so a leaf with one
    informative element gets no `scale` diagnosis by itself. The same factor
    found on other leaves is evidence, though: a factor applied to a whole part
    of the backward pass, or to all of it (the loss's own derivative left out).
    """
    factors: dict[int, float] = {}
    informative: dict[int, int] = {}
    for number, (leaf, fact, diagnosis) in enumerate(
        zip(leaves, facts, diagnoses, strict=True)
    ):
        if diagnosis is None or leaf.verdict not in _MANUAL_VERDICTS:
            continue
        if not _complete(fact):
            continue
        fit = _Fit(fact)
        if diagnosis.kind in ("scale", "sign"):
            factors[number] = float(diagnosis.detail["factor"])
        elif diagnosis.kind in ("no_pattern", "region"):
            factor = fit.factor()
            if factor is None or not fit.explains(factor * fit.reference, factor):
                continue
            factors[number] = factor
        else:
            continue
        informative[number] = fit.informative
    groups = [
        [n for n, other in factors.items() if _close(other, factor, 1e-6)]
        for factor in factors.values()
    ]
    members = max(groups, key=len, default=[])
    if len(members) < 2 or sum(informative[n] for n in members) < 2:
        return {}
    factor = factors[members[0]]
    paths = ", ".join(leaves[number].path for number in members)
    if _close(factor, -1.0):
        summary = "the sign is flipped"
    else:
        summary = f"scaled by {_factor_text(factor)}"
    summary += f", the same factor on {paths}"
    if len(members) == len(leaves):
        summary += (
            ": a factor of the whole backward pass (the loss's own derivative left"
            " out, as when differencing the output instead of the loss?)"
        )
    shared = Diagnosis(
        "sign" if _close(factor, -1.0) else "scale",
        summary,
        f"Each of {paths} equals {_factor_text(factor)} times the reference on"
        " every judged element.",
        {"factor": factor, "leaves": [leaves[number].path for number in members]},
    )
    # A leaf that shows the factor alone keeps its own diagnosis, which may name
    # what the factor means (a size in the data, the 1/2 of a squared loss).
    return {
        number: shared
        for number in members
        if getattr(diagnoses[number], "kind", None) in ("no_pattern", "region")
    }


def _others(
    leaves: Sequence[LeafReport], facts: Sequence[LeafFacts], number: int
) -> list[tuple[str, LeafFacts]]:
    return [
        (leaf.path, fact)
        for i, (leaf, fact) in enumerate(zip(leaves, facts, strict=True))
        if i != number
    ]


def diagnose(
    leaf: LeafReport,
    facts: LeafFacts,
    others: Sequence[tuple[str, LeafFacts]],
    check: CheckFacts,
) -> Diagnosis | None:
    """The likely cause of one failing leaf's disagreement, or None."""
    if facts.first_nonfinite:
        return nonfinite(facts.first_nonfinite)
    if leaf.verdict == "manual_kink":
        return kink(leaf.kinks)
    if leaf.verdict in _MANUAL_VERDICTS:
        return _manual_mistake(facts, others, check)
    if leaf.verdict == "fd_suspect":
        return fd_cause(leaf.kinks, check)
    if leaf.verdict in ("autodiff_suspect", "autodiff_vs_fd"):
        return autodiff_cause(check)
    return None


def _manual_mistake(
    facts: LeafFacts, others: Sequence[tuple[str, LeafFacts]], check: CheckFacts
) -> Diagnosis | None:
    if not _complete(facts):
        return None
    fit = _Fit(facts)
    if not fit.judged.any():
        return None
    if fit.explains(fit.reference):
        # Every difference is within a few tolerances: too close to call a pattern.
        return _with_noise_note(_region(fit) or _no_pattern(fit), facts)
    diagnosis = (
        _zero(fit)
        or _scale(fit, check.data_sizes)
        or _transpose(fit)
        or _swap(fit, others)
        or _missing_term(fit)
        or _region(fit)
        or _no_pattern(fit)
    )
    return _with_noise_note(diagnosis, facts)


def _complete(facts: LeafFacts) -> bool:
    """Whether there is a hand-written gradient and a reference to fit it to."""
    return not (
        facts.manual is None or facts.reference is None or facts.tolerance is None
    )


class _Fit:
    """The hand-written gradient and its reference on the judged elements."""

    def __init__(self, facts: LeafFacts) -> None:
        assert facts.manual is not None and facts.reference is not None
        assert facts.tolerance is not None
        self.facts = facts
        self.manual = facts.manual
        self.reference = facts.reference
        self.tolerance = facts.tolerance
        self.judged = (
            np.isfinite(self.tolerance)
            & np.isfinite(self.manual)
            & np.isfinite(self.reference)
        )
        self.m = self.manual[self.judged]
        self.r = self.reference[self.judged]
        self.tol = self.tolerance[self.judged]
        self.over = np.abs(self.m - self.r) > self.tol
        self.name = facts.reference_name
        # Elements whose reference is clearly not zero: the ones a fitted factor
        # has to explain. One alone is explained by any factor.
        self.informative = int(np.sum(np.abs(self.r) > self.tol))

    def factor(self) -> float | None:
        """The least-squares c with manual ~ c * reference, or None."""
        norm = float(self.r @ self.r)
        if norm == 0:
            return None
        return float(self.m @ self.r / norm)

    def explains(self, prediction: np.ndarray, factor: float = 1.0) -> bool:
        """Whether `prediction` (leaf-shaped) matches the hand-written gradient."""
        predicted = prediction[self.judged]
        if not np.all(np.isfinite(predicted)):
            return False
        allowed = _SLACK * self.tol * max(1.0, abs(factor))
        return bool(np.all(np.abs(self.m - predicted) <= allowed))

    def factor_against(self, basis: np.ndarray) -> float | None:
        """The least-squares c with manual - reference ~ c * basis, or None."""
        b = basis[self.judged]
        norm = float(b @ b)
        if norm == 0 or not np.isfinite(norm):
            return None
        return float((self.m - self.r) @ b / norm)


def _zero(fit: _Fit) -> Diagnosis | None:
    if np.any(fit.m != 0) or not np.any(fit.over):
        return None
    return Diagnosis(
        "zero",
        "zero everywhere: the gradient never reaches this leaf",
        f"The hand-written gradient is 0 on all {fit.m.size} judged elements;"
        f" {fit.name} is not (largest |value| {_fmt(np.max(np.abs(fit.r)))}).",
    )


def _scale(fit: _Fit, sizes: frozenset[int]) -> Diagnosis | None:
    factor = fit.factor()
    if factor is None or factor == 0 or fit.informative < 1:
        return None
    if not fit.explains(factor * fit.reference, factor):
        return None
    # Any factor fits one element, so one alone is evidence only of a factor that
    # a mistake would produce exactly: -1, 2, 1/2, a size in the data.
    if fit.informative < 2 and not (
        _close(factor, -1.0) or _named_factor(abs(factor), sizes)
    ):
        return None
    evidence = (
        f"The hand-written gradient equals {_factor_text(factor)} times {fit.name}"
        f" on all"
        f" {fit.m.size} judged elements, within the check's tolerance."
    )
    detail: dict[str, Any] = {"factor": factor}
    if _close(factor, -1.0):
        return Diagnosis("sign", "the sign is flipped", evidence, detail)
    named = _named_factor(abs(factor), sizes)
    summary = named or f"scaled by {_factor_text(abs(factor))}"
    if named:
        detail["meaning"] = named
    if factor < 0:
        summary += ", and the sign is flipped"
    return Diagnosis("scale", summary, evidence, detail)


def _named_factor(magnitude: float, sizes: frozenset[int]) -> str | None:
    if _close(magnitude, 2.0):
        return "twice the reference (the 1/2 of a squared loss dropped?)"
    if _close(magnitude, 0.5):
        return "half the reference (a 1/2 too many, as in the 1/2 of a squared loss?)"
    for size in sorted(sizes):
        if _close(magnitude, float(size)):
            return (
                f"{size} times the reference, and {size} is a size in the data"
                " (a sum where the loss takes a mean?)"
            )
        if _close(magnitude, 1.0 / size):
            return (
                f"1/{size} of the reference, and {size} is a size in the data"
                " (a mean where the loss sums?)"
            )
    return None


def _transpose(fit: _Fit) -> Diagnosis | None:
    shape = fit.reference.shape
    if len(shape) < 2 or shape[-1] != shape[-2]:
        return None
    transposed = np.swapaxes(fit.reference, -1, -2)
    if not fit.explains(transposed):
        return None
    return Diagnosis(
        "transpose",
        "transposed: it holds the transpose of the reference",
        f"With its last two axes swapped, {fit.name}'s gradient matches the"
        f" hand-written one on all {fit.m.size} judged elements.",
    )


def _swap(fit: _Fit, others: Sequence[tuple[str, LeafFacts]]) -> Diagnosis | None:
    for path, other in others:
        if other.reference is None or other.reference.shape != fit.reference.shape:
            continue
        if not fit.explains(other.reference):
            continue
        mutual = _complete(other) and _Fit(other).explains(fit.reference)
        summary = f"holds the gradient of {path}"
        if mutual:
            summary += f", and {path} holds this one's: the two are swapped"
        return Diagnosis(
            "swap",
            summary,
            f"The hand-written gradient matches {fit.name}'s gradient of {path} on"
            f" all {fit.m.size} judged elements.",
            {"other": path, "mutual": bool(mutual)},
        )
    return None


def _missing_term(fit: _Fit) -> Diagnosis | None:
    # A one-parameter fit to fewer than three elements is no evidence.
    if fit.m.size < 3:
        return None
    param = fit.facts.param
    candidates: list[tuple[str, np.ndarray, Callable[[float], str]]] = [
        ("l2", param, _l2_text),
        ("l1", np.sign(param), _l1_text),
        ("constant", np.ones_like(param), _constant_text),
    ]
    for name, basis, text in candidates:
        if name == "l1" and np.unique(basis).size == 1:
            continue  # every sign alike: the constant term says the same, plainly
        factor = fit.factor_against(basis)
        if factor is None or factor == 0:
            continue
        if fit.explains(fit.reference + factor * basis):
            return Diagnosis(
                "missing_term",
                text(factor),
                f"The hand-written gradient minus {fit.name}'s is {_fmt(factor)}"
                f" times {_BASIS_TEXT[name]} on all {fit.m.size} judged elements.",
                {"term": name, "factor": factor},
            )
    return None


_BASIS_TEXT = {
    "l2": "the parameter itself",
    "l1": "the parameter's sign",
    "constant": "one",
}


def _presence(factor: float) -> str:
    return "a missing" if factor < 0 else "an extra"


def _l2_text(factor: float) -> str:
    return (
        f"{_presence(factor)} L2 regularisation term: the difference is"
        f" {_fmt(factor)} times the parameter"
    )


def _l1_text(factor: float) -> str:
    return (
        f"{_presence(factor)} L1 regularisation term: the difference is"
        f" {_fmt(factor)} times the parameter's sign"
    )


def _constant_text(factor: float) -> str:
    return f"off by the same {_fmt(factor)} on every element: a constant term"


def _region(fit: _Fit) -> Diagnosis | None:
    shape = fit.reference.shape
    if fit.judged.size < 2 or fit.judged.mean() < _REGION_COVERAGE:
        return None
    bad = np.zeros(fit.judged.shape, bool)
    bad[fit.judged] = fit.over
    bad_indices = np.argwhere(bad.reshape(shape) if shape else bad.reshape(1))
    if len(bad_indices) == 0:
        return None
    what = _region_contents(fit, bad)
    total = bad.size
    if len(bad_indices) == 1:
        index = tuple(int(i) for i in bad_indices[0]) if shape else ()
        return Diagnosis(
            "region",
            f"only one element is wrong, at index {index}{what}",
            f"1 of {total} elements disagrees.",
            {"region": "element", "index": list(index)},
        )
    for axis in range(len(shape)):
        values = np.unique(bad_indices[:, axis])
        if values.size == 1 and shape[axis] > 1:
            return _slice_diagnosis(shape, axis, int(values[0]), len(bad_indices), what)
    return _border(shape, bad_indices, bad, what)


def _slice_diagnosis(
    shape: tuple[int, ...], axis: int, index: int, count: int, what: str
) -> Diagnosis:
    # The last index along the first axis of a sequence is its last time step;
    # the leaf's shape cannot tell a sequence from a weight, so it is a question.
    # A 4-D leaf is a convolution's weight far more often than a sequence.
    last_step = axis == 0 and len(shape) in (2, 3) and index == shape[0] - 1
    if len(shape) == 1:
        region, summary = "slice", f"wrong only at index {index}"
    elif len(shape) == 2:
        region = "row" if axis == 0 else "column"
        summary = f"wrong only in {region} {index}"
        if last_step:
            summary += " (the last row: the last time step of a sequence?)"
    else:
        region = "channel"
        summary = f"wrong only at index {index} along axis {axis} (one channel)"
        if last_step:
            summary += ", the last (the last time step of a sequence?)"
    if last_step:
        region = "last_timestep"
    return Diagnosis(
        "region",
        summary + what,
        f"All {count} disagreeing elements have index {index} along axis {axis}.",
        {"region": region, "axis": axis, "index": index},
    )


def _border(
    shape: tuple[int, ...], bad_indices: np.ndarray, bad: np.ndarray, what: str
) -> Diagnosis | None:
    """Name a mismatch confined to the edges of some axes: a padding mistake.

    The spatial axes are not known from the leaf (NCHW, NHWC, a sequence's length
    axis), so each axis and each pair of axes is tried, and the tightest band that
    the wrong elements fill is named.
    """
    best: tuple[int, tuple[int, ...], int, list[str]] | None = None
    for axes in _border_axes(shape):
        found = _border_band(shape, axes, bad_indices, bad)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:
        return None
    _, axes, width, sides = best
    if len(axes) == 1 and len(sides) == 1:
        place = "first" if sides[0].endswith("start") else "last"
        summary = f"wrong only in the {place} {width} positions along axis {axes[0]}"
    else:
        summary = (
            f"wrong only on a border {width} element(s) wide over"
            f" {_axes_text(axes, len(shape))} (a convolution's padding?)"
        )
    return Diagnosis(
        "region",
        summary + what,
        f"All {len(bad_indices)} disagreeing elements lie within {width} of an edge"
        f" ({', '.join(sides)}); the interior agrees.",
        {"region": "border", "width": width, "axes": list(axes), "sides": sides},
    )


def _border_axes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Single axes and pairs of axes long enough to have an interior."""
    long = [axis for axis, size in enumerate(shape) if size >= 3]
    pairs = [(a, b) for i, a in enumerate(long) for b in long[i + 1 :]]
    singles: list[tuple[int, ...]] = [(axis,) for axis in long]
    return singles + pairs


def _border_band(
    shape: tuple[int, ...],
    axes: tuple[int, ...],
    bad_indices: np.ndarray,
    bad: np.ndarray,
) -> tuple[int, tuple[int, ...], int, list[str]] | None:
    """The band along `axes` that holds every wrong element, if they fill it.

    Returns the band's size, the axes, its width and the edges it touches.
    """
    grid = np.indices(shape)
    edges = [
        (f"axis {axis} {side}", axis, side)
        for axis in axes
        for side in ("start", "end")
    ]

    def distance(index: np.ndarray, axis: int, side: str) -> np.ndarray:
        return index[axis] if side == "start" else shape[axis] - 1 - index[axis]

    depth = np.min([distance(bad_indices.T, a, s) for _, a, s in edges], axis=0)
    width = int(depth.max()) + 1
    if 2 * width >= min(shape[axis] for axis in axes):
        return None
    hit = [
        (name, a, s)
        for name, a, s in edges
        if np.any(distance(bad_indices.T, a, s) < width)
    ]
    band = np.zeros(shape, bool)
    for _, a, s in hit:
        band |= distance(grid, a, s) < width
    # A few scattered elements near the edges of a large leaf are no border: the
    # wrong elements must fill most of the band they lie in.
    if bad.reshape(shape).sum() < _BORDER_FILL * band.sum():
        return None
    return int(band.sum()), axes, width, [name for name, _, _ in hit]


def _axes_text(axes: tuple[int, ...], rank: int) -> str:
    if axes == (rank - 2, rank - 1):
        return "the last two axes"
    if len(axes) == 1:
        return f"axis {axes[0]}"
    return f"axes {axes[0]} and {axes[1]}"


def _region_contents(fit: _Fit, bad: np.ndarray) -> str:
    manual = fit.manual.reshape(-1)[bad.reshape(-1)]
    reference = fit.reference.reshape(-1)[bad.reshape(-1)]
    if np.all(manual == 0):
        return " (zero there)"
    if manual.size == 1:
        return ""
    norm = float(reference @ reference)
    if norm > 0:
        factor = float(manual @ reference / norm)
        if np.allclose(manual, factor * reference, rtol=1e-4, atol=0.0):
            return f" (scaled by {_factor_text(factor)} there)"
    return ""


def _no_pattern(fit: _Fit) -> Diagnosis:
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.abs(fit.m - fit.r) / np.abs(fit.r)
    relative = relative[fit.over]
    count = int(fit.over.sum())
    if fit.informative < 2:
        evidence = (
            f"Relative error {_fmt(np.nanmax(relative))}. With one informative"
            " element there is no pattern to tell: any factor explains one value."
        )
        if fit.m.size == 1 and fit.r[0] != 0:
            evidence += (
                f" The hand-written value is {_factor_text(fit.m[0] / fit.r[0])}"
                f" times {fit.name}'s (a chain factor left out, as for a parameter"
                " kept in log space?)."
            )
    else:
        evidence = (
            f"Relative error among them: median {_fmt(np.nanmedian(relative))},"
            f" largest {_fmt(np.nanmax(relative))}. No constant factor, transpose,"
            " swap with another leaf, regularisation term or region explains the"
            " difference."
        )
    return Diagnosis(
        "no_pattern",
        f"no simple pattern: {count} of {fit.m.size} judged elements disagree",
        evidence,
        {"mismatched": count},
    )


def _with_noise_note(diagnosis: Diagnosis, facts: LeafFacts) -> Diagnosis:
    if facts.manual_dtype == "float64" or facts.noise is None:
        return diagnosis
    assert facts.manual is not None and facts.reference is not None
    judged = np.isfinite(facts.manual) & np.isfinite(facts.reference)
    if not judged.any():
        return diagnosis
    difference = float(np.max(np.abs(facts.manual - facts.reference)[judged]))
    noise = float(np.max(facts.noise[judged]))
    if noise <= 0 or difference <= 0:
        return diagnosis
    note = (
        f" The {facts.manual_dtype} rounding of the hand-written gradient is"
        f" estimated at up to {_fmt(noise)} here, against a difference of"
        f" {_fmt(difference)} ({_fmt(difference / noise)} times larger), so"
        + (
            " this is not rounding."
            if difference >= _CLEARLY_NOT_ROUNDING * noise
            else " rounding alone is unlikely to explain it, though the margin is"
            " small."
        )
    )
    return dataclasses.replace(diagnosis, evidence=diagnosis.evidence + note)


def _close(value: float, target: float, rtol: float = _FACTOR_RTOL) -> bool:
    return abs(value - target) <= rtol * abs(target)


def _factor_text(factor: float) -> str:
    """A factor as a simple fraction where it is one, else with enough digits to
    tell it from the nearest whole number (1.0001, not 1)."""
    fraction = Fraction(factor).limit_denominator(_MAX_DENOMINATOR)
    if _close(factor, float(fraction), _TEXT_RTOL):
        if fraction.denominator == 1:
            return f"{fraction.numerator}"
        return f"{fraction.numerator}/{fraction.denominator}"
    whole = round(factor)
    for digits in range(4, 12):
        text = f"{float(factor):.{digits}g}"
        if abs(float(text) - factor) <= 0.1 * abs(factor - whole):
            return text
    return repr(float(factor))


def _fmt(value: float) -> str:
    return f"{float(value):.4g}"
