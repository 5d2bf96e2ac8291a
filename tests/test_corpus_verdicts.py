"""gradaudit's verdicts and diagnoses on the corpus of hand-written backprops.

Every buggy case must be flagged on exactly its buggy leaves, every correct and
hard case must pass, and the diagnosis of each buggy leaf must agree with the
case's label, in float64 and in float32. Reports are cached per case and dtype, so
each check runs once.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from corpus import CASES, Case
from corpus._grading import diagnosis_is_right

import gradaudit


@functools.cache
def _report(name: str, dtype: type) -> gradaudit.Report:
    case = next(case for case in CASES if case.name == name)
    params, args = case.make_inputs(np.random.default_rng(0), dtype)
    # Hand-written gradients in jax.numpy need x64 to compute in float64, as their
    # authors would have it; float32 cases run in JAX's default setting.
    with jax.enable_x64(dtype is np.float64):
        return gradaudit.check(case.loss, params, *args, grad=case.grad)


def _assert_verdict_and_diagnosis(case: Case, dtype: type) -> None:
    report = _report(case.name, dtype)
    flagged = {leaf.path for leaf in report.failing_leaves}
    assert flagged == set(case.buggy_leaves), report.summary()
    for path in case.buggy_leaves:
        diagnosis = report.leaf(path).diagnosis
        assert diagnosis is not None, report.summary()
        assert diagnosis_is_right(case, diagnosis.kind, diagnosis.detail), (
            f"{path}: {diagnosis.kind} {diagnosis.detail}\n{report.summary()}"
        )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_float64(case):
    _assert_verdict_and_diagnosis(case, np.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_float32(case):
    _assert_verdict_and_diagnosis(case, np.float32)
