"""The promises of the verdict, as properties over random MLPs with numpy backprop.

On correct hand-written gradients there are no false alarms in float64 or float32;
one element wrong by a relative 1e-6 (float64) or 1e-3 (float32) is always caught,
on its own leaf and no other. `bench/targets.py` measures the same over many more
models and prints the rates.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_mlp import random_mlp, with_one_wrong_element

import gradaudit

CASES = [(np.float64, 1e-6), (np.float32, 1e-3)]
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize(("dtype", "relative"), CASES, ids=["float64", "float32"])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=seeds)
def test_correct_backprop_is_never_flagged(dtype, relative, seed):
    rng = np.random.default_rng(seed)
    mlp = random_mlp(rng)
    params, x, target = mlp.point(rng, int(rng.integers(1, 9)), dtype)
    report = gradaudit.check(mlp.loss, params, x, target, grad=mlp.grad)
    assert report.ok, f"{mlp}\n{report.summary()}"


@pytest.mark.parametrize(("dtype", "relative"), CASES, ids=["float64", "float32"])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=seeds)
def test_one_wrong_element_is_always_caught_on_its_leaf(dtype, relative, seed):
    rng = np.random.default_rng(seed)
    mlp = random_mlp(rng)
    params, x, target = mlp.point(rng, int(rng.integers(1, 9)), dtype)
    wrong, path, index = with_one_wrong_element(mlp, params, x, target, rng, relative)
    report = gradaudit.check(mlp.loss, params, x, target, grad=wrong)
    assert [leaf.path for leaf in report.failing_leaves] == [path], report.summary()
    leaf = report.leaf(path)
    assert leaf.pairs["manual-autodiff"].mismatched_indices == (index,)
    assert leaf.verdict in ("manual_wrong", "manual_or_autodiff")
