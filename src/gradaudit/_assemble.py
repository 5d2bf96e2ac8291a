"""Turning per-probe judgements into the per-leaf and per-pair results of a report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _compare as compare
from ._causes import CheckFacts
from ._diagnose import LeafFacts, diagnose_leaves
from ._paths import LeafLayout
from ._plan import full_probes
from ._report import PAIRS, KinkNote, LeafReport, PairResult
from ._sources import Estimates, Probes, Source
from ._tolerance import Tolerance
from ._validate import Params


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The judged check: per-leaf and per-pair results, and what to look at again.

    Attributes:
        leaves: one `LeafReport` per leaf, diagnosed.
        pairs: one `PairResult` per pair over all leaves.
        fd_disputed: over the finite-difference probes, where finite differences
            disagree with the most trusted other source (jax.grad, else the
            hand-written gradient); worth a second look at another step before
            anyone is blamed.
    """

    leaves: list[LeafReport]
    pairs: dict[str, PairResult]
    fd_disputed: np.ndarray


def compare_all(
    layout: LeafLayout,
    checked: Params,
    found: dict[str, Source],
    fd: Estimates | None,
    plan: Any,
    tolerance: Tolerance,
    one_sided: compare.OneSidedSlopes,
    scales: np.ndarray,
    check_facts: CheckFacts,
) -> Comparison:
    """Judge every available pair, assemble per-leaf results, diagnose failures."""
    fd_probes: Probes = plan.probes
    every = full_probes(layout)
    manual, autodiff = found["manual"], found["autodiff"]
    leaf_scale = compare.leaf_scales(layout, found, fd_probes, fd)
    floor_fd = compare.probe_floor(fd_probes, layout, leaf_scale, tolerance)
    floor_all = compare.probe_floor(every, layout, leaf_scale, tolerance)
    n_fd = fd_probes.count

    def rtol_on(probes: Probes, first: str, second: str) -> np.ndarray:
        """The default rtol of a pair on each probe, from its leaf's precisions."""
        per_leaf = np.array(
            [
                tolerance.rtol_for(
                    found[first].dtype_of_leaf(leaf), found[second].dtype_of_leaf(leaf)
                )
                for leaf in range(len(layout.paths))
            ]
        )
        return per_leaf[probes.leaf_numbers(layout)]

    estimates_fd = {
        name: found[name].estimates(fd_probes)
        for name in ("manual", "autodiff")
        if found[name].available
    }
    if fd is not None:
        estimates_fd["fd"] = fd

    # Where finite differences can be trusted.
    reliability = None
    if fd is not None:
        reference = (
            estimates_fd["autodiff"].values if "autodiff" in estimates_fd else fd.values
        )
        rtol_fd = tolerance.rtol_for(found["fd"].dtype)
        core = tolerance.atol + rtol_fd * (np.abs(reference) + floor_fd)
        reliability = compare.fd_reliability(fd, reference, floor_fd, core)

    judgements: dict[str, compare.PairJudgement] = {}
    kink_invalid_leaves: set[int] = set()
    kink_notes: dict[int, list[KinkNote]] = {}

    # manual vs autodiff: every element, with valid choices at kinks excused.
    if manual.available and autodiff.available:
        excused_all = np.zeros(every.count, bool)
        if fd is not None and reliability is not None:
            on_fd = compare.judge_pair(
                "manual-autodiff",
                fd_probes,
                layout,
                estimates_fd["manual"],
                estimates_fd["autodiff"],
                estimates_fd["autodiff"].values,
                rtol_on(fd_probes, "manual", "autodiff"),
                tolerance,
                floor_fd,
                np.zeros(n_fd, bool),
            )
            coordinate = np.arange(n_fd) < fd_probes.coordinates.size
            kink = reliability.kink & coordinate
            slack = on_fd.tol + fd.noise
            excused, joint = compare.excuse_kinks(
                estimates_fd["manual"],
                estimates_fd["autodiff"],
                fd,
                kink,
                on_fd.mismatch,
                slack,
                np.concatenate(
                    [scales[fd_probes.coordinates], np.zeros(n_fd - coordinate.sum())]
                ),
                one_sided,
                layout.total_size,
                np.concatenate(
                    [fd_probes.coordinates, np.zeros(n_fd - coordinate.sum(), np.int64)]
                ),
                fd_probes.leaf_numbers(layout),
            )
            excused_all[fd_probes.coordinates[excused[coordinate]]] = True
            manual_valid = compare.is_valid_choice(
                estimates_fd["manual"].values, fd.left, fd.right, slack
            )
            leaf_of = fd_probes.leaf_numbers(layout)
            for p in map(int, np.flatnonzero(kink)):
                leaf = int(leaf_of[p])
                if (
                    on_fd.mismatch[p]
                    and not excused[p]
                    and (not manual_valid[p] or not joint["manual"])
                ):
                    kink_invalid_leaves.add(leaf)
                kink_notes.setdefault(leaf, []).append(
                    KinkNote(
                        index=layout.leaf_of(int(fd_probes.coordinates[p]))[1],
                        left=float(fd.left[p]),
                        right=float(fd.right[p]),
                        manual=float(estimates_fd["manual"].values[p]),
                        manual_choice=_choice(
                            estimates_fd["manual"].values[p],
                            fd,
                            p,
                            slack,
                            joint["manual"],
                        ),
                        autodiff=float(estimates_fd["autodiff"].values[p]),
                        autodiff_choice=_choice(
                            estimates_fd["autodiff"].values[p],
                            fd,
                            p,
                            slack,
                            joint["autodiff"],
                        ),
                    )
                )
        judgements["manual-autodiff"] = compare.judge_pair(
            "manual-autodiff",
            every,
            layout,
            manual.estimates(every),
            autodiff.estimates(every),
            autodiff.estimates(every).values,
            rtol_on(every, "manual", "autodiff"),
            tolerance,
            floor_all,
            np.zeros(every.count, bool),
            excused_all,
        )
    elif fd is not None and reliability is not None:
        # Without both gradients, kinks are still worth listing.
        leaf_of = fd_probes.leaf_numbers(layout)
        for p in map(
            int, np.flatnonzero(reliability.kink[: fd_probes.coordinates.size])
        ):
            leaf = int(leaf_of[p])
            values = {
                n: float(e.values[p]) for n, e in estimates_fd.items() if n != "fd"
            }
            left, right, slack = (
                float(fd.left[p]),
                float(fd.right[p]),
                float(fd.noise[p]),
            )
            described = {
                name: compare.kink_choice(value, left, right, slack)
                for name, value in values.items()
            }
            kink_notes.setdefault(leaf, []).append(
                KinkNote(
                    layout.leaf_of(int(fd_probes.coordinates[p]))[1],
                    float(fd.left[p]),
                    float(fd.right[p]),
                    values.get("manual"),
                    described.get("manual", "not available"),
                    values.get("autodiff"),
                    described.get("autodiff", "not available"),
                )
            )

    for first in ("manual", "autodiff"):
        if fd is None or reliability is None or first not in estimates_fd:
            continue
        name = f"{first}-fd"
        reference = (
            estimates_fd["autodiff"].values if "autodiff" in estimates_fd else fd.values
        )
        # A gradient's own nan or inf is judged even where finite differences are
        # left out: it is a failure of that gradient, whatever the referee.
        fd_referee = fd
        unreliable = reliability.unreliable & np.isfinite(estimates_fd[first].values)
        if first == "autodiff" and not manual.available:
            fd_referee, at_kinks = compare.judged_at_kinks(
                estimates_fd["autodiff"], fd, reliability
            )
            unreliable &= at_kinks
        judgements[name] = compare.judge_pair(
            name,
            fd_probes,
            layout,
            estimates_fd[first],
            fd_referee,
            reference,
            rtol_on(fd_probes, first, "fd"),
            tolerance,
            floor_fd,
            unreliable,
        )

    fd_position = {int(c): i for i, c in enumerate(fd_probes.coordinates)}

    def values_for(probes: Probes) -> Callable[[int], tuple[float | None, ...]]:
        def lookup(position: int) -> tuple[float | None, ...]:
            if position < probes.coordinates.size:
                coordinate = int(probes.coordinates[position])
                fd_at = fd_position.get(coordinate)
                m = manual.gradient[coordinate] if manual.gradient is not None else None
                a = (
                    autodiff.gradient[coordinate]
                    if autodiff.gradient is not None
                    else None
                )
            else:
                dense = position - probes.coordinates.size
                fd_at = fd_probes.coordinates.size + dense
                v = probes.vectors[dense]
                m = float(v @ manual.gradient) if manual.gradient is not None else None
                a = (
                    float(v @ autodiff.gradient)
                    if autodiff.gradient is not None
                    else None
                )
            f = (
                float(fd.values[fd_at])
                if fd is not None and fd_at is not None
                else None
            )
            return (
                None if m is None else float(m),
                None if a is None else float(a),
                f,
            )

        return lookup

    leaves: list[LeafReport] = []
    facts: list[LeafFacts] = []
    per_pair: dict[str, list[PairResult]] = {n: [] for n in PAIRS if n in judgements}
    for leaf in range(len(layout.paths)):
        results = {}
        for name in PAIRS:
            if name in judgements:
                j = judgements[name]
                results[name] = compare.summarise(j, leaf, layout, values_for(j.probes))
                per_pair[name].append(results[name])
        elements = {
            name: compare.leaf_elements(judgement, leaf, layout)
            for name, judgement in judgements.items()
        }
        unreliable_indices: tuple[tuple[int, ...], ...] = ()
        if reliability is not None:
            leaf_of = fd_probes.leaf_numbers(layout)
            marked = np.flatnonzero(
                reliability.unreliable[: fd_probes.coordinates.size]
                & (leaf_of[: fd_probes.coordinates.size] == leaf)
            )
            unreliable_indices = tuple(
                layout.leaf_of(int(fd_probes.coordinates[p]))[1] for p in marked
            )
        leaves.append(
            compare.build_leaf(
                leaf,
                layout,
                checked.dtypes[leaf].name,
                results,
                plan.coverage[leaf],
                unreliable_indices,
                tuple(kink_notes.get(leaf, ())),
                leaf in kink_invalid_leaves,
                {
                    name: error_map
                    for name, part in elements.items()
                    if (error_map := compare.error_map(part)) is not None
                },
            )
        )
        facts.append(_leaf_facts(leaf, layout, checked, found, elements))
    leaves = diagnose_leaves(leaves, facts, check_facts)
    pairs = {name: compare.total(name, results) for name, results in per_pair.items()}
    referee = next(
        (judgements[n] for n in ("autodiff-fd", "manual-fd") if n in judgements), None
    )
    disputed = np.zeros(n_fd, bool) if referee is None else referee.mismatch.copy()
    return Comparison(leaves, pairs, disputed)


def _choice(
    value: float, fd: Estimates, p: int, slack: np.ndarray, joint_ok: bool
) -> str:
    text = compare.kink_choice(
        float(value), float(fd.left[p]), float(fd.right[p]), float(slack[p])
    )
    if not joint_ok and "not a valid" not in text:
        text += ", but jointly with the other tied elements it is not a valid choice"
    return text


def _leaf_facts(
    leaf: int,
    layout: LeafLayout,
    checked: Params,
    found: dict[str, Source],
    elements: dict[str, compare.LeafElements],
) -> LeafFacts:
    """The evidence a diagnosis of one leaf draws on, shaped like the leaf."""
    shape = layout.shapes[leaf]

    def shaped(flat: np.ndarray | None) -> np.ndarray | None:
        return None if flat is None else np.asarray(flat, np.float64).reshape(shape)

    def on_leaf(source: Source, values: np.ndarray | None) -> np.ndarray | None:
        if not source.available or values is None:
            return None
        return shaped(layout.split(values)[leaf])

    manual, autodiff = found["manual"], found["autodiff"]
    manual_values = on_leaf(manual, manual.gradient)
    reference, name, tolerance = None, "jax.grad", None
    if "manual-autodiff" in elements:
        reference = on_leaf(autodiff, autodiff.gradient)
        tolerance = shaped(elements["manual-autodiff"].tolerance)
    elif "manual-fd" in elements:
        reference = shaped(elements["manual-fd"].second)
        tolerance = shaped(elements["manual-fd"].tolerance)
        name = "finite differences"

    nonfinite: dict[str, tuple[tuple[int, ...], int]] = {}
    fd_values = next(
        (part.second for key, part in elements.items() if key.endswith("-fd")), None
    )
    for source, values in (
        ("manual", manual_values),
        ("autodiff", on_leaf(autodiff, autodiff.gradient)),
        ("fd", shaped(fd_values)),
    ):
        if values is None:
            continue
        flat = values.reshape(-1)
        # Unprobed elements are nan by construction, not by the source.
        probed = ~np.isnan(flat) if source == "fd" else np.ones(flat.size, bool)
        bad = np.flatnonzero(~np.isfinite(flat) & probed)
        if bad.size:
            index = tuple(int(i) for i in np.unravel_index(bad[0], shape))
            nonfinite[source] = (index, int(bad.size))
    return LeafFacts(
        param=checked.leaves[leaf].astype(np.float64),
        manual=manual_values,
        reference=reference,
        reference_name=name,
        tolerance=tolerance,
        noise=on_leaf(manual, manual.noise),
        manual_dtype=manual.dtype_of_leaf(leaf),
        first_nonfinite=nonfinite,
    )
