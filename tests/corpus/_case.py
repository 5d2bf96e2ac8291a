"""The record type that describes one hand-written backprop in the corpus."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

KINDS = ("correct", "buggy", "hard")

BUG_CLASSES = (
    "scale",
    "sign",
    "transpose",
    "swap",
    "zero",
    "missing_term",
    "region",
    "nonfinite",
    "subtle",
    "kink_invalid",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One loss, its hand-written gradient, and a label saying whether it is right.

    Attributes:
        name: Unique identifier of the form ``"family/variant"``.
        loss: ``loss(params, *args)`` returning a scalar, written with
            `jax.numpy` so that `jax.grad` can trace it.
        grad: The hand-written gradient, ``grad(params, *args)``, returning a
            pytree with the structure of ``params``.
        make_inputs: ``make_inputs(rng, dtype)`` returning ``(params, args)``,
            where ``rng`` is a `numpy.random.Generator` and ``dtype`` is
            `numpy.float32` or `numpy.float64`.
        kind: ``"correct"``, ``"buggy"`` or ``"hard"`` (numerically awkward
            but correct).
        buggy_leaves: Key paths, as printed by `jax.tree_util.keystr`, of the
            leaves whose hand-written gradient is wrong. Every other leaf is
            right.
        bug_class: For buggy cases, one of `BUG_CLASSES`.
        bug_detail: Extra facts about the bug or the numerical difficulty, such
            as ``{"factor": 0.5}`` (manual over reference) or
            ``{"region": "row", "axis": 0, "index": 3}``. Hard and
            ``"kink_invalid"`` cases list under ``"kink_leaves"`` the leaves
            whose gradient depends on the choice made at a kink (empty when the
            difficulty is not a kink). ``"kink_offset"``, when present, is how
            far the input sits from the kink; without it the input is exactly
            on the kink, where `jax.grad` may pick a different valid value.
    """

    name: str
    loss: Callable
    grad: Callable
    make_inputs: Callable
    kind: str
    buggy_leaves: frozenset[str] = frozenset()
    bug_class: str | None = None
    bug_detail: dict = dataclasses.field(default_factory=dict)
