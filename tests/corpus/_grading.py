"""Grading gradaudit's verdicts and diagnoses against the corpus labels.

Shared by the corpus tests and `bench/corpus_peers.py`, so that the benchmark's
diagnosis accuracy and the tests' assertions apply the same rule.
"""

from __future__ import annotations

from ._case import Case

# The diagnosis each bug class should receive. Missing terms are only recognised
# when the difference has a simple form (a regularisation term); others may be
# left without a pattern, which is not a wrong diagnosis.
_KIND_FOR_CLASS = {
    "scale": "scale",
    "sign": "sign",
    "transpose": "transpose",
    "swap": "swap",
    "zero": "zero",
    "region": "region",
    "nonfinite": "nonfinite",
    "kink_invalid": "kink",
}
# Terms whose omission leaves a difference of a recognisable form.
RECOGNISABLE_TERMS = frozenset({"l2_regularisation"})
# Bug classes a diagnosis is promised for, and those it may leave unnamed.
UNCOVERED_KINDS = frozenset({"no_pattern", "region", "missing_term"})


def is_covered(case: Case) -> bool:
    """Whether gradaudit promises a specific diagnosis for this buggy case."""
    if case.bug_class == "missing_term":
        return case.bug_detail.get("term") in RECOGNISABLE_TERMS
    return case.bug_class in _KIND_FOR_CLASS


def diagnosis_is_right(case: Case, kind: str | None, detail: dict) -> bool:
    """Whether a diagnosis of one buggy leaf agrees with the case's label.

    For a covered class the kind must match (and a region must be the labelled
    one; a scale its factor); for an uncovered one, the diagnosis must not claim a
    pattern the bug does not have.
    """
    bug = case.bug_class
    if not is_covered(case):
        return kind in UNCOVERED_KINDS
    if bug == "missing_term":
        return kind == "missing_term"
    expected = _KIND_FOR_CLASS[bug]
    if bug == "kink_invalid" and "factor" in case.bug_detail:
        # A tie that no parameter can break leaves the loss smooth; the invalid
        # choice then shows as a plain factor.
        expected, bug = "scale", "scale"
    if bug == "scale" and kind == "sign":
        return case.bug_detail.get("factor") == -1.0
    if kind != expected:
        return False
    if bug in ("scale", "sign"):
        factor = case.bug_detail["factor"]
        return abs(detail.get("factor", 0.0) - factor) <= 1e-3 * abs(factor)
    if bug == "region":
        return detail.get("region") == case.bug_detail["region"]
    return True
