"""Causes of a disagreement that lie outside the hand-written gradient.

When jax.grad or finite differences are the odd one out, or a source is not
finite, the loss itself holds the clues: a kink and which side jax.grad took,
a `stop_gradient` or a custom rule in its jaxpr, a dtype too narrow for finite
differences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._report import Diagnosis, KinkNote

_CUSTOM_RULES = ("custom_vjp_call", "custom_jvp_call")


@dataclasses.dataclass(frozen=True)
class CheckFacts:
    """What the whole check knows that bears on a cause.

    Attributes:
        data_sizes: every axis length in the loss's data (and their products),
            to recognise a mean taken where the loss sums.
        rules: where the loss uses `stop_gradient` and custom rules, per
            primitive (see `_loss.special_rules`).
        loss_precision: the dtype the loss computes in.
    """

    data_sizes: frozenset[int]
    rules: dict[str, tuple[str, ...]]
    loss_precision: str


def nonfinite(found: dict[str, tuple[tuple[int, ...], int]]) -> Diagnosis:
    parts = [
        f"{_SOURCE_TEXT[name]} has {count} non-finite value"
        f"{'s' if count > 1 else ''}, the first at index {index}"
        for name, (index, count) in found.items()
    ]
    name, (index, count) = next(iter(found.items()))
    return Diagnosis(
        "nonfinite",
        parts[0],
        _sentence("; ".join(parts)),
        {"source": name, "first_index": list(index), "count": count},
    )


_SOURCE_TEXT = {
    "manual": "the hand-written gradient",
    "autodiff": "jax.grad",
    "fd": "finite differences",
}


def kink(kinks: Sequence[KinkNote]) -> Diagnosis:
    counts = {
        side: sum(note.autodiff_choice.startswith(f"the {side}") for note in kinks)
        for side in ("left", "right")
    }
    counts["between"] = sum(
        note.autodiff_choice.startswith("between") for note in kinks
    )
    taken = {side: n for side, n in counts.items() if n}
    if not taken:
        took = "jax.grad's own choices are listed in the report's kinks"
    elif len(taken) == 1 and "between" in taken:
        took = "jax.grad took a value between the one-sided slopes"
    elif len(taken) == 1:
        took = f"jax.grad took the slope from the {next(iter(taken))}"
    else:
        took = "jax.grad took " + ", ".join(
            f"{'a value between the slopes' if side == 'between' else 'the ' + side}"
            f" at {n}"
            for side, n in taken.items()
        )
    where = ", ".join(str(note.index) for note in kinks[:5])
    return Diagnosis(
        "kink",
        took,
        f"{len(kinks)} element(s) sit within a step of a kink ({where}). At a kink"
        " any value between the one-sided slopes is valid, and the hand-written"
        " one is not.",
        {
            "elements": len(kinks),
            "autodiff_left": counts["left"],
            "autodiff_right": counts["right"],
            "autodiff_between": counts["between"],
        },
    )


def fd_cause(kinks: Sequence[KinkNote], check: CheckFacts) -> Diagnosis:
    stops = len(check.rules.get("stop_gradient", ()))
    if stops:
        return Diagnosis(
            "stop_gradient",
            "finite differences see through a stop_gradient that both gradients honour",
            f"The loss uses stop_gradient {stops} time(s): jax.grad and the"
            " hand-written gradient agree with each other, and finite differences"
            " of the loss cannot tell a stopped path from any other.",
            {"stop_gradient": stops},
        )
    if check.loss_precision != "float64":
        return Diagnosis(
            "loss_precision",
            f"the loss computes in {check.loss_precision}, too coarse for finite"
            " differences here",
            "jax.grad and the hand-written gradient agree; finite differences of a"
            f" loss rounded to {check.loss_precision} do not.",
            {"loss_precision": check.loss_precision},
        )
    return Diagnosis(
        "fd_step",
        "finite differences disagree with two gradients that agree: the loss may"
        " not be smooth here, or the step may not suit its curvature",
        f"{len(kinks)} kink(s) noted on this leaf. Try method='richardson' or a"
        " smaller step to confirm.",
    )


def autodiff_cause(check: CheckFacts) -> Diagnosis:
    custom = [label for name in _CUSTOM_RULES for label in check.rules.get(name, ())]
    if custom:
        used = ", ".join(custom)
        return Diagnosis(
            "custom_rule",
            f"jax.grad goes through a custom rule ({used}) that disagrees with the"
            " loss",
            "Finite differences of the loss, and the hand-written gradient where"
            " given, disagree with jax.grad, and the loss defines its own derivative"
            f" in {used}: the likeliest place for the error.",
            {"rules": custom},
        )
    stops = len(check.rules.get("stop_gradient", ()))
    if stops:
        return Diagnosis(
            "stop_gradient",
            "jax.grad stops at a stop_gradient that the loss's values do not show",
            f"The loss uses stop_gradient {stops} time(s); jax.grad honours it,"
            " finite differences of the loss cannot.",
            {"stop_gradient": stops},
        )
    return Diagnosis(
        "autodiff",
        "jax.grad disagrees with finite differences of the loss",
        "The loss has no custom rule of its own and no stop_gradient; a JAX"
        " primitive's derivative at a non-smooth point is the likeliest cause.",
    )


def _sentence(text: str) -> str:
    """`text` as a sentence; a name such as `jax.grad` keeps its lower case."""
    if not text.startswith("jax."):
        text = text[:1].upper() + text[1:]
    return text + "."
