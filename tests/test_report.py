"""The `Report`: its documented fields, its JSON form, its text, and its lookups."""

from __future__ import annotations

import json
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit
from gradaudit import (
    SCHEMA_VERSION,
    Element,
    GradientMismatchError,
    LeafReport,
    PairResult,
    Report,
    Settings,
    SourceInfo,
)

PAIRS = ("manual-autodiff", "manual-fd", "autodiff-fd")

# The first row of `W` is zero, so the true gradient of `sum(W**2)` is zero there
# and a wrong gradient gives an infinite relative error: a non-finite number the
# JSON form has to encode.
W0 = np.array([[0.0, 0.0], [0.5, -1.0], [1.5, 2.0]])
B0 = np.array([0.25, -0.75])


def _loss(params: dict[str, Any]) -> Any:
    return jnp.sum(params["W"] ** 2) + jnp.sum(jnp.sin(params["b"]))


def _grad(params: dict[str, Any]) -> dict[str, Any]:
    return {"W": 2 * params["W"], "b": jnp.cos(params["b"])}


def _wrong_grad(params: dict[str, Any]) -> dict[str, Any]:
    return {"W": 2 * params["W"] + 1.0, "b": jnp.cos(params["b"])}


def _params() -> dict[str, Any]:
    return {"W": W0.copy(), "b": B0.copy()}


@pytest.fixture(scope="module")
def passing() -> Report:
    return gradaudit.check(_loss, _params(), grad=_grad, seed=7)


@pytest.fixture(scope="module")
def failing() -> Report:
    return gradaudit.check(_loss, _params(), grad=_wrong_grad, seed=7)


# -- fields --------------------------------------------------------------------


def test_passing_report_is_ok_with_one_leaf_report_per_param(passing: Report) -> None:
    assert passing.ok is True
    assert passing.failing_leaves == ()
    assert [leaf.path for leaf in passing.leaves] == ["['W']", "['b']"]
    for leaf in passing.leaves:
        assert isinstance(leaf, LeafReport)
        assert leaf.ok is True
        assert leaf.verdict == "agree"
        assert leaf.dtype == "float64"
        assert tuple(leaf.pairs) == PAIRS
        assert "elements" in leaf.coverage
    assert passing.leaf("['W']").shape == (3, 2)
    assert passing.leaf("['b']").shape == (2,)


def test_pairs_are_keyed_by_the_two_sources_compared(passing: Report) -> None:
    assert tuple(passing.pairs) == PAIRS
    for name, result in passing.pairs.items():
        assert isinstance(result, PairResult)
        assert result.pair == name
        assert result.ok is True
        assert result.compared == 8
        assert result.mismatched == 0
        assert result.mismatched_indices == ()


def test_failing_report_marks_only_the_wrong_leaf(failing: Report) -> None:
    assert failing.ok is False
    assert [leaf.path for leaf in failing.failing_leaves] == ["['W']"]
    weights = failing.leaf("['W']")
    assert weights.ok is False
    assert weights.verdict == "manual_wrong"
    assert weights.explanation
    assert weights.pairs["manual-autodiff"].ok is False
    assert weights.pairs["manual-fd"].ok is False
    assert weights.pairs["autodiff-fd"].ok is True
    assert failing.leaf("['b']").ok is True


def test_worst_element_has_path_index_values_and_tolerance(failing: Report) -> None:
    result = failing.leaf("['W']").pairs["manual-autodiff"]
    assert result.mismatched == 6
    assert result.mismatched_indices == ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1))

    worst = result.worst
    assert isinstance(worst, Element)
    assert worst.path == "['W']"
    assert worst.index in result.mismatched_indices
    assert worst.direction is None
    assert worst.manual is not None and worst.autodiff is not None
    assert worst.manual == pytest.approx(worst.autodiff + 1.0)
    assert worst.fd == pytest.approx(worst.autodiff, abs=1e-6)
    assert worst.abs_error == pytest.approx(1.0)
    assert 0 < worst.tolerance < worst.abs_error


def test_settings_record_what_was_run(passing: Report) -> None:
    settings = passing.settings
    assert isinstance(settings, Settings)
    assert settings.seed == 7
    assert settings.method == "central"
    assert settings.mode == "full (auto)"
    assert settings.rtol is None
    assert settings.atol == 0.0
    assert settings.step is not None and 0 < settings.step < 1
    assert settings.device
    assert set(settings.versions) >= {"gradaudit", "jax", "jaxlib", "numpy", "python"}
    assert settings.versions["gradaudit"] == gradaudit.__version__


def test_settings_record_an_explicit_mode_and_method() -> None:
    report = gradaudit.check(
        _loss, _params(), grad=_grad, mode="sampled", method="fourth_order", seed=3
    )

    assert report.settings.mode == "sampled"
    assert report.settings.method == "fourth_order"
    assert report.settings.seed == 3
    assert report.settings.samples_per_leaf == 16


def test_sources_say_each_one_ran(passing: Report) -> None:
    assert set(passing.sources) == {"manual", "autodiff", "fd"}
    for name, info in passing.sources.items():
        assert isinstance(info, SourceInfo)
        assert info.name == name
        assert info.available is True
        # `_grad` is partly JAX code, run as written: with x64 off (the default)
        # it computes in float32. The two references always run in float64.
        assert info.dtype == ("float32" if name == "manual" else "float64")


# -- JSON ----------------------------------------------------------------------


def test_to_dict_round_trips_through_json(failing: Report) -> None:
    data = failing.to_dict()

    assert json.loads(failing.to_json()) == data
    assert json.loads(failing.to_json(indent=None)) == data
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["ok"] is False
    assert [leaf["path"] for leaf in data["leaves"]] == ["['W']", "['b']"]
    assert set(data["pairs"]) == set(PAIRS)
    assert data["settings"]["seed"] == 7
    assert data["sources"]["manual"]["available"] is True


def test_json_encodes_non_finite_numbers_as_strings(failing: Report) -> None:
    pair = failing.leaf("['W']").pairs["manual-autodiff"]
    assert math.isinf(pair.max_rel_error)

    data = failing.to_dict()
    json.dumps(data, allow_nan=False)  # strict JSON: no bare NaN or Infinity
    leaf = next(leaf for leaf in data["leaves"] if leaf["path"] == "['W']")
    assert leaf["pairs"]["manual-autodiff"]["max_rel_error"] == "inf"
    assert data["pairs"]["manual-autodiff"]["max_rel_error"] == "inf"


# -- text ----------------------------------------------------------------------


def test_str_of_a_failing_report_names_the_leaf_and_says_mismatch(
    failing: Report,
) -> None:
    text = str(failing)

    assert "MISMATCH" in text
    assert "['W']" in text
    assert text.startswith(failing.summary())
    assert failing.table() in text


def test_str_of_a_passing_report_says_ok(passing: Report) -> None:
    text = str(passing)

    assert "OK" in text
    assert "MISMATCH" not in text
    assert "['W']" in text and "['b']" in text


# -- lookups -------------------------------------------------------------------


def test_leaf_lookup_by_keystr_path(passing: Report) -> None:
    assert passing.leaf("['W']") is passing.leaves[0]
    assert passing.leaf("['b']") is passing.leaves[1]


def test_unknown_leaf_raises_key_error_naming_the_known_leaves(
    passing: Report,
) -> None:
    with pytest.raises(KeyError) as excinfo:
        passing.leaf("['W1']")

    message = excinfo.value.args[0]
    assert "['W1']" in message
    assert "['W'], ['b']" in message


# -- missing sources -----------------------------------------------------------


def test_without_grad_only_autodiff_and_fd_are_compared() -> None:
    report = gradaudit.check(_loss, _params())

    assert report.ok
    assert set(report.pairs) == {"autodiff-fd"}
    for leaf in report.leaves:
        assert set(leaf.pairs) == {"autodiff-fd"}
    manual = report.sources["manual"]
    assert manual.available is False
    assert manual.dtype is None
    assert "no `grad` given" in manual.note
    assert "manual unavailable (no `grad` given)" in report.summary()


def _numpy_loss(params: dict[str, Any]) -> float:
    return float(np.sum(params["W"] ** 2) + np.sum(np.sin(params["b"])))


def _numpy_grad(params: dict[str, Any]) -> dict[str, Any]:
    return {"W": 2 * params["W"], "b": np.cos(params["b"])}


def test_numpy_loss_reports_autodiff_unavailable_and_compares_manual_with_fd() -> None:
    report = gradaudit.check(_numpy_loss, _params(), grad=_numpy_grad)

    assert report.ok, report.summary()
    autodiff = report.sources["autodiff"]
    assert autodiff.available is False
    assert "not traceable" in autodiff.note
    assert report.sources["manual"].available is True
    assert report.sources["fd"].available is True
    assert set(report.pairs) == {"manual-fd"}
    assert report.pairs["manual-fd"].compared == 8
    assert any("not traceable by JAX" in finding for finding in report.findings)


def test_numpy_loss_with_a_wrong_gradient_still_fails_against_fd() -> None:
    def wrong(params: dict[str, Any]) -> dict[str, Any]:
        return {"W": 2 * params["W"], "b": -np.cos(params["b"])}

    report = gradaudit.check(_numpy_loss, _params(), grad=wrong)

    assert not report.ok
    assert [leaf.path for leaf in report.failing_leaves] == ["['b']"]
    assert report.leaf("['b']").pairs["manual-fd"].mismatched == 2


# -- GradientMismatchError -----------------------------------------------------


def test_assert_gradients_raises_an_assertion_error_carrying_the_report() -> None:
    with pytest.raises(GradientMismatchError) as excinfo:
        gradaudit.assert_gradients(_loss, _params(), grad=_wrong_grad)

    error = excinfo.value
    assert isinstance(error, AssertionError)
    assert isinstance(error, gradaudit.GradauditError)
    assert isinstance(error.report, Report)
    assert error.report.ok is False
    assert str(error) == error.report.summary()
    assert "MISMATCH" in str(error) and "['W']" in str(error)


def test_assert_gradients_returns_the_report_when_ok(passing: Report) -> None:
    report = gradaudit.assert_gradients(_loss, _params(), grad=_grad, seed=7)

    assert report.ok
    assert report.to_dict()["leaves"] == passing.to_dict()["leaves"]
