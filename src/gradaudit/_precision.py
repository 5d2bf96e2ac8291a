"""Floating-point precision: machine epsilons, the float64 reference context, and
finding out what precision a loss really computes in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def is_float_dtype(dtype: Any) -> bool:
    return np.dtype(dtype).name in FLOAT_DTYPES


def is_floating(dtype: Any) -> bool:
    """Whether an array's dtype is a real float, without choking on PRNG key dtypes."""
    return bool(jax.dtypes.issubdtype(dtype, jnp.floating))


def epsilon(dtype: Any) -> float:
    """Machine epsilon of a floating dtype (bfloat16 included)."""
    return float(jnp.finfo(np.dtype(dtype)).eps)


def lowest_precision(*dtypes: Any) -> np.dtype:
    """The dtype with the largest epsilon among `dtypes`."""
    return max((np.dtype(d) for d in dtypes), key=epsilon)


REFERENCE_DTYPES = ("float64", "float32")


@contextlib.contextmanager
def reference_precision(dtype: str = "float64") -> Iterator[None]:
    """Run JAX in `dtype` with full-precision matmuls, restoring both on exit.

    float64 turns x64 on; float32, for devices without float64, turns it off so that
    arrays created inside default to float32. Forcing `highest` matmul precision
    keeps TF32 or bfloat16 passes on GPUs and TPUs from blurring a real difference
    into agreement.
    """
    with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
        yield


def narrowing_casts(jaxpr: Any, reference: str = "float64") -> set[str]:
    """Floating dtypes narrower than `reference` that a computation casts to.

    Walks the jaxpr, including sub-jaxprs of control flow and custom rules, looking
    for `convert_element_type` from the reference dtype to a narrower float: the
    mark of a loss that silently computes part of itself in float32 even under x64.
    """
    found: set[str] = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type":
            source = eqn.invars[0].aval.dtype
            target = eqn.params.get("new_dtype")
            if (
                target is not None
                and np.dtype(source) == np.dtype(reference)
                and is_float_dtype(target)
                and epsilon(target) > epsilon(reference)
            ):
                found.add(np.dtype(target).name)
        for sub in jaxprs_in_params(eqn.params):
            found |= narrowing_casts(sub, reference)
    return found
