"""Checks the corpus labels against `jax.grad`, independently of gradaudit.

Each case's hand-written gradient is compared leaf by leaf with `jax.grad` of the
same loss in float64. A correct case must agree everywhere; a buggy case must
disagree on exactly the leaves it names, in the way its ``bug_class`` says.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from corpus import CASES, Case
from corpus._case import BUG_CLASSES, KINDS

# Relative tolerance for "the two gradients agree" in float64. The absolute
# floor scales with the leaf so that entries that cancel to almost zero do not
# fail on rounding noise.
RTOL_64 = 1e-7
ATOL_FRACTION_64 = 1e-9
RTOL_32 = 1e-3
ATOL_FRACTION_32 = 1e-4


def _flatten(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _close(manual, reference, rtol, atol_fraction):
    scale = float(np.max(np.abs(reference), initial=0.0))
    atol = max(atol_fraction * scale, 1e-15)
    return manual.shape == reference.shape and np.allclose(
        manual, reference, rtol=rtol, atol=atol
    )


@functools.cache
def _value_and_grad(loss):
    # One compiled program per loss: eager dispatch of many small ops costs more
    # than compiling, and buggy variants of a family share the loss.
    return jax.jit(jax.value_and_grad(loss))


def _gradients(case: Case, dtype):
    params, args = case.make_inputs(np.random.default_rng(0), dtype)
    snapshot = jax.tree_util.tree_map(np.copy, (params, args))
    value, reference = _value_and_grad(case.loss)(params, *args)
    manual = case.grad(params, *args)

    # The hand-written gradient must leave its inputs untouched.
    for before, after in zip(
        jax.tree_util.tree_leaves(snapshot),
        jax.tree_util.tree_leaves((params, args)),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)

    assert jnp.shape(value) == ()
    reference, manual = _flatten(reference), _flatten(manual)
    assert set(manual) == set(reference) == set(_flatten(params))
    return _flatten(params), manual, reference


def _region_mask(shape, detail):
    """Marks the entries of a leaf that a ``region`` bug is allowed to touch."""
    mask = np.zeros(shape, dtype=bool)
    region = detail["region"]
    if region == "element":
        mask[tuple(detail["index"])] = True
    elif region in ("row", "column", "channel", "last_timestep"):
        index = [slice(None)] * len(shape)
        index[detail["axis"]] = detail["index"]
        mask[tuple(index)] = True
    elif region == "border":
        width = detail["width"]
        mask[..., :width, :] = True
        mask[..., -width:, :] = True
        mask[..., :, :width] = True
        mask[..., :, -width:] = True
    else:
        raise ValueError(f"Unknown region {region!r}.")
    return mask


def _check_buggy_leaf(case, path, manual, reference, references):
    detail = case.bug_detail
    bug = case.bug_class
    assert not _close(manual, reference, RTOL_64, ATOL_FRACTION_64), path
    if bug in ("scale", "sign"):
        expected = detail["factor"] * reference
        assert _close(manual, expected, RTOL_64, ATOL_FRACTION_64), path
    elif bug == "transpose":
        assert _close(manual, reference.T, RTOL_64, ATOL_FRACTION_64), path
    elif bug == "swap":
        (other,) = case.buggy_leaves - {path}
        assert _close(manual, references[other], RTOL_64, ATOL_FRACTION_64), path
    elif bug == "zero":
        assert np.all(manual == 0), path
    elif bug == "nonfinite":
        assert not np.all(np.isfinite(manual)), path
    elif bug == "region":
        scale = np.max(np.abs(reference))
        wrong = ~np.isclose(manual, reference, rtol=RTOL_64, atol=1e-9 * scale)
        allowed = _region_mask(reference.shape, detail)
        assert np.any(wrong & allowed), path
        assert not np.any(wrong & ~allowed), path
    elif bug == "subtle":
        # Around 1e-3 relative to the entry, with entries near zero measured
        # against a percent of the leaf's scale instead.
        floor = 1e-2 * np.max(np.abs(reference))
        error = np.abs(manual - reference) / np.maximum(np.abs(reference), floor)
        assert 1e-4 <= error.max() <= 2e-2, (path, error.max())


def test_names_are_unique():
    names = [case.name for case in CASES]
    duplicates = [n for n, c in collections.Counter(names).items() if c > 1]
    assert not duplicates


def test_corpus_is_large_and_covers_every_bug_class():
    kinds = collections.Counter(case.kind for case in CASES)
    assert set(kinds) <= set(KINDS)
    assert kinds["correct"] >= 30
    assert kinds["buggy"] >= 30
    assert kinds["hard"] >= 10
    assert {case.bug_class for case in CASES if case.kind == "buggy"} == set(
        BUG_CLASSES
    )
    kink_invalid = [case for case in CASES if case.bug_class == "kink_invalid"]
    assert len(kink_invalid) >= 2


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_labels_hold_in_float64(case):
    assert (case.kind == "buggy") == bool(case.buggy_leaves)
    assert (case.kind == "buggy") == (case.bug_class in BUG_CLASSES)

    with jax.enable_x64(True):
        params, manual, reference = _gradients(case, np.float64)
    assert case.buggy_leaves <= set(reference)

    kink_leaves = set(case.bug_detail.get("kink_leaves", ()))
    assert kink_leaves <= set(reference)
    if case.kind == "hard" or case.bug_class == "kink_invalid":
        # Hard cases say which leaves touch a kink, even when none does.
        assert "kink_leaves" in case.bug_detail
    if case.bug_class == "kink_invalid":
        assert kink_leaves
    for path in reference:
        assert manual[path].dtype == params[path].dtype, path
        assert np.all(np.isfinite(reference[path])), path
        if path in case.buggy_leaves:
            _check_buggy_leaf(case, path, manual[path], reference[path], reference)
        elif path in kink_leaves and case.bug_detail.get("kink_offset", 0.0) == 0.0:
            # Autodiff makes its own choice exactly at a kink; nothing to compare.
            assert np.all(np.isfinite(manual[path])), path
        else:
            close = _close(manual[path], reference[path], RTOL_64, ATOL_FRACTION_64)
            assert close, path


CORRECT = [case for case in CASES if case.kind == "correct"]


@pytest.mark.parametrize("case", CORRECT, ids=lambda case: case.name)
def test_correct_cases_hold_in_float32(case):
    params, manual, reference = _gradients(case, np.float32)
    for path in reference:
        assert manual[path].dtype == np.float32, path
        close = _close(manual[path], reference[path], RTOL_32, ATOL_FRACTION_32)
        assert close, path
