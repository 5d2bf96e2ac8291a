"""The result of a check: plain data, and renderers for people and machines.

The JSON schema is versioned by `SCHEMA_VERSION`; `docs/report-schema.md` describes
every field. Renderers return strings and never print.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ._taylor import TaylorResult

SCHEMA_VERSION = 1
# Leaves larger than this get no per-element error map, to keep reports small.
MAX_MAP_ELEMENTS = 16384
PAIRS = ("manual-autodiff", "manual-fd", "autodiff-fd")

SOURCE_TITLES = {
    "manual": "the hand-written gradient",
    "autodiff": "jax.grad",
    "fd": "finite differences",
}


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}g}"


def _value(value: float | None) -> str:
    """A gradient value, with enough digits to show a relative 1e-8 difference."""
    return _number(value, digits=10)


def _index_text(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else "[()]"


@dataclasses.dataclass(frozen=True)
class Element:
    """One compared value, with what every source said about it.

    Attributes:
        path: the leaf, in `jax.tree_util.keystr` form.
        index: the element's index within the leaf, or None for a direction.
        direction: for a random direction, its number within the leaf.
        manual: the hand-written gradient's value (a projection for a direction).
        autodiff: `jax.grad`'s value.
        fd: the finite-difference value, None where it was not computed.
        abs_error: `|a - b|` for the pair this element belongs to.
        rel_error: `abs_error / |reference|` (inf when the reference is 0).
        tolerance: the absolute tolerance that applied.
    """

    path: str
    index: tuple[int, ...] | None
    direction: int | None
    manual: float | None
    autodiff: float | None
    fd: float | None
    abs_error: float
    rel_error: float
    tolerance: float

    def location(self) -> str:
        """Where the element is, e.g. "['W1'] at index [2, 3]"."""
        if self.index is not None:
            return f"{self.path} at index {_index_text(self.index)}"
        return f"{self.path} along random direction {self.direction}"

    def values_text(self) -> str:
        """The three sources' values, e.g. "manual=1, autodiff=0.5, fd=0.5"."""
        return (
            f"manual={_value(self.manual)}, autodiff={_value(self.autodiff)},"
            f" fd={_value(self.fd)}"
        )


@dataclasses.dataclass(frozen=True)
class PairResult:
    """How two sources compared, on one leaf or over all leaves.

    Attributes:
        pair: e.g. `"manual-fd"`.
        ok: no element disagreed beyond its tolerance.
        compared: elements and directions judged.
        mismatched: how many of those disagreed.
        unreliable: elements left out of the verdict: where finite differences
            cannot be trusted (a kink, or an error estimate as large as the
            value), and, for `manual-autodiff`, disagreements at a kink where both
            made a valid choice.
        max_abs_error: the largest `|a - b|` among judged elements.
        max_rel_error: the largest relative error among judged elements.
        worst: the element furthest beyond (or closest to) its tolerance.
        mismatched_indices: element indices that disagreed (the first 100); only
            on per-leaf results, since an index means nothing without its leaf.
        kink_choices: for `manual-autodiff`, disagreements at a kink where both
            sources made a valid choice (counted in `unreliable` as well).
    """

    pair: str
    ok: bool
    compared: int
    mismatched: int
    unreliable: int
    max_abs_error: float
    max_rel_error: float
    worst: Element | None
    mismatched_indices: tuple[tuple[int, ...], ...] = ()
    kink_choices: int = 0


@dataclasses.dataclass(frozen=True)
class KinkNote:
    """An element where the loss has a kink, and what each source chose there.

    Attributes:
        index: the element's index within its leaf.
        left: the slope from the left.
        right: the slope from the right.
        manual: the hand-written value, and `manual_choice` describes it.
        autodiff: `jax.grad`'s value, and `autodiff_choice` describes it.
    """

    index: tuple[int, ...]
    left: float
    right: float
    manual: float | None
    manual_choice: str
    autodiff: float | None
    autodiff_choice: str


@dataclasses.dataclass(frozen=True)
class ErrorMap:
    """Where on a leaf one pair disagrees, element by element, for heat maps.

    Attributes:
        relative: per element in C order, `|a - b| / |reference|` (inf where the
            reference is 0 and the values differ); nan where not compared.
        over_tolerance: per element, `|a - b| / tolerance`; above 1 is a mismatch;
            nan where not compared.
        unreliable: flat indices left out of the verdict (finite differences not
            trusted there, or a valid choice at a kink).
    """

    relative: tuple[float, ...]
    over_tolerance: tuple[float, ...]
    unreliable: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The likely cause of a leaf's disagreement, and the evidence for it.

    Attributes:
        kind: the pattern or cause found. For a hand-written gradient judged
            wrong: `scale`, `sign`, `transpose`, `swap`, `zero`, `missing_term`,
            `region`, `nonfinite`, or `no_pattern` when nothing simple fits.
            Otherwise: `kink`, `stop_gradient`, `custom_rule`, `loss_precision`,
            `fd_step` or `autodiff`. See `docs/reading-a-report.md`.
        summary: one line naming it, e.g. "half the reference: a 1/2 too many
            (the 1/2 of a squared loss?)".
        evidence: the numbers behind it.
        detail: the pattern's parameters, e.g. `{"factor": 0.5}`.
    """

    kind: str
    summary: str
    evidence: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """Everything about one leaf of `params`.

    Attributes:
        path: the leaf, in `jax.tree_util.keystr` form.
        shape: its shape.
        dtype: its dtype as passed.
        ok: every pair agrees on it.
        pairs: one `PairResult` per pair of available sources.
        verdict: a short code, one of `"agree"`, `"manual_wrong"`,
            `"manual_wrong_vs_fd"`, `"manual_kink"`, `"manual_or_autodiff"`,
            `"fd_suspect"`, `"autodiff_suspect"`, `"autodiff_vs_fd"`,
            `"all_disagree"`, `"nonfinite"` or `"inconclusive"`; see
            `docs/concepts.md` for the decision table.
        explanation: one sentence on what the verdict means here.
        coverage: which elements finite differences looked at.
        unreliable_indices: elements where finite differences could not be
            trusted (the first 100).
        kinks: elements at a kink, with each source's choice (the first 20).
        error_maps: per pair, an `ErrorMap` of the leaf, for leaves of at most
            `MAX_MAP_ELEMENTS` elements (empty otherwise).
        diagnosis: for a leaf whose hand-written gradient is judged wrong, the
            likely mistake (see `Diagnosis`); None otherwise.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    ok: bool
    pairs: dict[str, PairResult]
    verdict: str
    explanation: str
    coverage: str
    unreliable_indices: tuple[tuple[int, ...], ...] = ()
    kinks: tuple[KinkNote, ...] = ()
    error_maps: dict[str, ErrorMap] = dataclasses.field(default_factory=dict)
    diagnosis: Diagnosis | None = None


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """Whether a source ran, in what precision, and why not if it did not."""

    name: str
    available: bool
    dtype: str | None
    note: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings a check actually used.

    Attributes:
        mode: the mode that ran; "(auto)" marks one chosen by `mode="auto"`.
        method: the finite-difference stencil the verdict used ("richardson" when
            central differences could not settle a disagreement and were redone).
        step: the relative finite-difference step.
        rtol: the `rtol` passed (None: chosen per pair, see `rtol_used`).
        rtol_used: the relative tolerance applied to each pair (the loosest over
            its leaves, when leaves of the hand-written gradient differ in dtype).
        atol: the absolute tolerance.
        floor_fraction: the per-leaf floor, as a fraction of the leaf's scale.
        noise_ulps: rounding units allowed per source.
        seed: the seed of sampled coordinates and random directions.
        reference_precision: how jax.grad and finite differences ran.
        loss_precision: the narrowest dtype the loss computes in under float64.
        loss_noise: the loss's rounding noise at `params`, relative to its value.
        samples_per_leaf: coordinates per leaf, in sampled mode.
        directions_per_leaf: random directions per leaf, in directional mode.
        batch_size: directions evaluated side by side.
        device: where the check ran.
        versions: gradaudit, jax, jaxlib, numpy and Python versions.
    """

    mode: str
    method: str
    step: float | None
    rtol: float | None
    rtol_used: dict[str, float]
    atol: float
    floor_fraction: float
    noise_ulps: float
    seed: int
    reference_precision: str
    loss_precision: str
    loss_noise: float
    samples_per_leaf: int | None
    directions_per_leaf: int | None
    batch_size: int | None
    device: str
    versions: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of `gradaudit.check`.

    Attributes:
        ok: True when every compared pair agrees on every leaf (elements where
            finite differences are unreliable are left out, and say so).
        leaves: one `LeafReport` per leaf of `params`, in tree order.
        pairs: one `PairResult` per pair of available sources, over all leaves.
        sources: one `SourceInfo` per source.
        settings: what was run.
        findings: sentences about the check as a whole (precision, kinks, ...).
        taylor: the Taylor-remainder test per source and leaf, when requested with
            `taylor=True` (see `TaylorResult`); it informs but does not change `ok`.
    """

    ok: bool
    leaves: tuple[LeafReport, ...]
    pairs: dict[str, PairResult]
    sources: dict[str, SourceInfo]
    settings: Settings
    findings: tuple[str, ...] = ()
    taylor: tuple[TaylorResult, ...] = ()

    def leaf(self, path: str) -> LeafReport:
        """The `LeafReport` for a `keystr` path such as `"['W1']"`."""
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        known = ", ".join(leaf.path for leaf in self.leaves)
        raise KeyError(f"No leaf {path!r} in this report; its leaves are {known}.")

    @property
    def failing_leaves(self) -> tuple[LeafReport, ...]:
        """The leaves on which some pair disagrees."""
        return tuple(leaf for leaf in self.leaves if not leaf.ok)

    def summary(self) -> str:
        """A few lines: the verdict, one line per failing leaf, what was covered."""
        return _render_summary(self)

    def table(self) -> str:
        """A per-leaf, per-pair table of errors and counts."""
        return _render_table(self)

    def __str__(self) -> str:
        return self.summary() + "\n\n" + self.table()

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data; see `docs/report-schema.md`."""
        data = dataclasses.asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return _clean(data)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string (non-finite numbers become strings)."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_html(self, title: str = "gradaudit report") -> str:
        """The report as one self-contained HTML page with per-leaf heat maps."""
        from ._html import render_html

        return render_html({"check": self}, title)


def _clean(value: Any) -> Any:
    """Make data JSON-safe: tuples to lists, nan/inf to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _render_summary(report: Report) -> str:
    lines = []
    failing = report.failing_leaves
    total = len(report.leaves)
    if report.ok:
        compared = ", ".join(
            f"{name} ({result.compared} compared)"
            for name, result in report.pairs.items()
        )
        noun = "the only leaf" if total == 1 else f"all {total} leaves"
        lines.append(f"gradaudit: OK on {noun}: {compared}.")
    else:
        lines.append(f"gradaudit: MISMATCH at {len(failing)} of {total} leaves.")
        for leaf in failing:
            lines.append(f"  {leaf.path}: {_headline(leaf)}")
        for leaf in failing:
            lines.append(f"{leaf.path}: {leaf.explanation}")
            if leaf.diagnosis is not None:
                lines.append(f"    Evidence: {leaf.diagnosis.evidence}")
            worst = _worst_failure(leaf)
            if worst is not None:
                pair, result = worst
                element = result.worst
                assert element is not None
                counts = "; ".join(
                    f"{name}: {r.mismatched} of {r.compared} disagree"
                    for name, r in leaf.pairs.items()
                    if not r.ok
                )
                lines.append(f"    {counts}.")
                if math.isfinite(element.abs_error):
                    measure = (
                        f"|diff| {_number(element.abs_error)} (relative"
                        f" {_number(element.rel_error)}) against a tolerance of"
                        f" {_number(element.tolerance)}"
                    )
                else:
                    measure = "a value is not finite, which no tolerance allows"
                lines.append(
                    f"    Worst ({pair}) {element.location()}:"
                    f" {element.values_text()}; {measure}."
                )
    for finding in report.findings:
        lines.append(f"Note: {finding}")
    settings = report.settings
    unavailable = [
        f"{name} unavailable ({info.note})"
        for name, info in report.sources.items()
        if not info.available
    ]
    lines.append(
        f"Checked in {settings.mode} mode with {settings.method} differences,"
        f" {settings.reference_precision} reference, loss computed in"
        f" {settings.loss_precision}, seed {settings.seed}."
        + (" " + "; ".join(unavailable) + "." if unavailable else "")
    )
    return "\n".join(lines)


_VERDICT_HEADLINES = {
    "manual_wrong": "hand-written gradient wrong",
    "manual_wrong_vs_fd": "hand-written gradient wrong (against finite differences)",
    "manual_or_autodiff": "hand-written gradient and jax.grad disagree",
    "manual_kink": "hand-written gradient not a valid choice at a kink",
    "fd_suspect": "finite differences disagree with both gradients",
    "autodiff_suspect": "jax.grad disagrees with the hand-written gradient and fd",
    "autodiff_vs_fd": "jax.grad and finite differences disagree",
    "all_disagree": "all three sources disagree",
    "nonfinite": "non-finite values",
}


def _headline(leaf: LeafReport) -> str:
    """One line naming what is wrong on a failing leaf."""
    verdict = _VERDICT_HEADLINES.get(leaf.verdict, leaf.verdict)
    if leaf.diagnosis is None:
        return verdict + "."
    return f"{verdict}: {leaf.diagnosis.summary}."


def _worst_failure(leaf: LeafReport) -> tuple[str, PairResult] | None:
    """The failing pair whose worst element is furthest beyond its tolerance."""
    failing = [
        (name, result, result.worst)
        for name, result in leaf.pairs.items()
        if not result.ok and result.worst is not None
    ]
    if not failing:
        return None
    name, result, _ = max(
        failing, key=lambda item: item[2].abs_error / max(item[2].tolerance, 1e-300)
    )
    return name, result


def _render_table(report: Report) -> str:
    header = (
        "leaf",
        "pair",
        "verdict",
        "compared",
        "bad",
        "unreliable",
        "max abs",
        "max rel",
    )
    rows = [header]
    for leaf in report.leaves:
        for name, result in leaf.pairs.items():
            rows.append(
                (
                    leaf.path,
                    name,
                    "ok" if result.ok else "MISMATCH",
                    str(result.compared),
                    str(result.mismatched),
                    str(result.unreliable),
                    _number(result.max_abs_error),
                    _number(result.max_rel_error),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for leaf in report.leaves:
        if leaf.unreliable_indices or leaf.kinks:
            lines.append(
                f"{leaf.path}: finite differences unreliable at"
                f" {len(leaf.unreliable_indices)} element(s), e.g."
                f" {', '.join(_index_text(i) for i in leaf.unreliable_indices[:5])}."
            )
        for kink in leaf.kinks[:5]:
            lines.append(
                f"{leaf.path}{_index_text(kink.index)}: kink, left slope"
                f" {_number(kink.left)}, right slope {_number(kink.right)};"
                f" manual {_number(kink.manual)} ({kink.manual_choice}), autodiff"
                f" {_number(kink.autodiff)} ({kink.autodiff_choice})."
            )
        lines.append(f"{leaf.path}: finite differences covered {leaf.coverage}.")
    for taylor in report.taylor:
        verdict = "consistent" if taylor.ok else "INCONSISTENT (expected order 2)"
        lines.append(
            f"Taylor test, {taylor.source} on {taylor.path}: remainder order"
            f" {_number(taylor.order)} over {taylor.directions} directions: {verdict}."
        )
    return "\n".join(line.rstrip() for line in lines)
