"""Naming the likely mistake in a hand-written gradient judged wrong."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The likely mistake on one leaf, and the evidence for it.

    Attributes:
        kind: a short code for the pattern found (see `docs/reading-a-report.md`).
        summary: one line naming the mistake, e.g. "scaled by 0.5 (the 1/2 of a
            squared loss?)".
        evidence: the numbers behind it.
        detail: the pattern's parameters, e.g. `{"factor": 0.5}`.
    """

    kind: str
    summary: str
    evidence: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
