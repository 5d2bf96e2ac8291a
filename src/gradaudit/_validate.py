"""Checking what the user passed, with messages that name the leaf and the fix.

Nothing here modifies its input: leaves are copied before anything else sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._errors import InvalidInputError, InvalidTypeError, StructureMismatchError
from ._paths import LeafLayout, format_paths, layout_of, leaves_with_paths
from ._precision import is_float_dtype

_ARRAY_TYPES = (np.ndarray, np.generic, jax.Array)

_NOT_AN_ARRAY = (
    "Leaf {path} of `params` is a {kind}, not an array. gradaudit differentiates"
    " with respect to every leaf of `params`: wrap it with `jnp.asarray(...)` if it"
    " is a parameter, or pass it through `*args` if it is data or a setting."
)
_NOT_FLOAT = (
    "Leaf {path} of `params` has dtype {dtype}; only floating leaves (float16,"
    " bfloat16, float32, float64) can be differentiated. Pass integer or boolean"
    " data through `*args`, or cast the leaf with `.astype(jnp.float32)`."
)
_COMPLEX = (
    "Leaf {path} of `params` is complex ({dtype}); complex parameters are not"
    " supported. Conventions differ there (jax.grad of a real loss returns the"
    " conjugate of the gradient PyTorch returns), so a hand-written gradient could"
    " be right in one and wrong in the other. Split the leaf into real and"
    " imaginary float leaves, whose gradients have one meaning."
)
_EMPTY_LEAF = (
    "Leaf {path} of `params` has shape {shape} and no elements, so there is nothing"
    " to check; remove it from `params`."
)
_NON_FINITE = (
    "Leaf {path} of `params` holds {count} non-finite value(s), the first {value} at"
    " index {index}. Gradients are only defined at finite points: check the leaf at"
    " a finite value."
)
_EMPTY_PARAMS = (
    "`params` has no array leaves, so there is nothing to check. Pass the parameters"
    " to differentiate as the second argument: `check(loss, params, *args, ...)`."
)
_TREE_MISMATCH = (
    "The hand-written gradient `grad(params, *args)` must return a pytree with the"
    " structure of `params`, but {details}. Return one gradient leaf for each"
    " parameter leaf, in the same container types (dict keys, list positions,"
    " NamedTuple fields)."
)
_SHAPE_MISMATCH = (
    "The hand-written gradient has the wrong shape at {count} leaf/leaves: {details}."
    " Each gradient leaf must have the shape of its parameter; a transposed or"
    " unreduced (per-example) gradient is a common cause."
)


@dataclasses.dataclass(frozen=True)
class Params:
    """The validated parameters: copies of the leaves and their flat layout."""

    layout: LeafLayout
    leaves: tuple[np.ndarray, ...]
    dtypes: tuple[np.dtype, ...]
    is_jax: tuple[bool, ...]

    def flat64(self) -> np.ndarray:
        return np.concatenate([leaf.astype(np.float64).ravel() for leaf in self.leaves])

    def native_tree(self, dtype: Any = None) -> Any:
        """A fresh copy of the user's params, in their own array types.

        Each call returns new arrays, so a hand-written gradient that writes into
        its inputs cannot change what the next source sees, nor the user's arrays.

        Args:
            dtype: cast every leaf to this dtype; None keeps the user's dtypes.
        """
        import jax.numpy as jnp

        leaves = [
            jnp.asarray(leaf, dtype) if was_jax else leaf.astype(dtype or leaf.dtype)
            for leaf, was_jax in zip(self.leaves, self.is_jax, strict=True)
        ]
        return jax.tree_util.tree_unflatten(self.layout.treedef, leaves)


def validate_params(params: Any) -> Params:
    """Check every leaf of `params` and copy it; raise a precise error otherwise."""
    pairs, _ = leaves_with_paths(params)
    if not pairs:
        raise InvalidInputError(_EMPTY_PARAMS)

    copies, dtypes, is_jax = [], [], []
    for path, leaf in pairs:
        if not isinstance(leaf, _ARRAY_TYPES):
            kind = f"Python {type(leaf).__name__}"
            raise InvalidTypeError(_NOT_AN_ARRAY.format(path=path, kind=kind))
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise InvalidTypeError(_NOT_FLOAT.format(path=path, dtype=leaf.dtype))
        dtype = np.dtype(leaf.dtype)
        if np.issubdtype(dtype, np.complexfloating):
            raise InvalidTypeError(_COMPLEX.format(path=path, dtype=dtype.name))
        if not is_float_dtype(dtype):
            raise InvalidTypeError(_NOT_FLOAT.format(path=path, dtype=dtype.name))
        array = np.array(leaf, copy=True)
        if array.size == 0:
            raise InvalidInputError(_EMPTY_LEAF.format(path=path, shape=array.shape))
        finite = np.isfinite(array.astype(np.float32))
        if not finite.all():
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise InvalidInputError(
                _NON_FINITE.format(
                    path=path,
                    count=int((~finite).sum()),
                    value=array[first],
                    index=first,
                )
            )
        copies.append(array)
        dtypes.append(dtype)
        is_jax.append(isinstance(leaf, jax.Array))

    return Params(layout_of(params), tuple(copies), tuple(dtypes), tuple(is_jax))


def validate_gradient_tree(gradient: Any, layout: LeafLayout) -> list[np.ndarray]:
    """Check the hand-written gradient against the layout of `params`.

    Returns:
        The gradient's leaves as numpy arrays, in the order of `params`' leaves.
    """
    pairs, _ = leaves_with_paths(gradient)
    by_path = dict(pairs)
    missing = tuple(p for p in layout.paths if p not in by_path)
    extra = tuple(p for p in by_path if p not in set(layout.paths))
    if missing or extra:
        details = []
        if missing:
            details.append(f"these paths are missing: {format_paths(missing)}")
            with_none, _ = leaves_with_paths(gradient, is_leaf=lambda v: v is None)
            nones = tuple(p for p, v in with_none if v is None and p in missing)
            if nones:
                details[-1] += (
                    f" ({format_paths(nones)} returned as None; return zeros of the"
                    " parameter's shape for a leaf with no gradient)"
                )
        if extra:
            details.append(f"these paths are not in `params`: {format_paths(extra)}")
        container = _container_difference(gradient, layout.treedef)
        if container:
            details.append(container)
        raise StructureMismatchError(
            _TREE_MISMATCH.format(details="; ".join(details)),
            missing=missing,
            extra=extra,
        )

    leaves, wrong_shapes = [], []
    for path, shape in zip(layout.paths, layout.shapes, strict=True):
        leaf = by_path[path]
        try:
            array = np.asarray(leaf)
        except Exception as error:
            raise InvalidTypeError(
                f"Leaf {path} of the hand-written gradient is a"
                f" {type(leaf).__name__}, which cannot be read as an array."
            ) from error
        if np.issubdtype(array.dtype, np.complexfloating):
            raise InvalidTypeError(
                f"Leaf {path} of the hand-written gradient is complex"
                f" ({array.dtype}), but the parameters are real, so their gradient"
                " is real too. Return the real gradient; if the imaginary part is"
                " meant to carry a second parameter, make it a leaf of its own."
            )
        if not (
            np.issubdtype(array.dtype, np.number) or array.dtype.name == "bfloat16"
        ):
            raise InvalidTypeError(
                f"Leaf {path} of the hand-written gradient has dtype"
                f" {array.dtype}; return floating arrays."
            )
        if array.shape != shape:
            wrong_shapes.append((path, shape, array.shape))
        leaves.append(array)
    if wrong_shapes:
        shape_details = "; ".join(
            f"{path} should be {expected} but is {actual}"
            for path, expected, actual in wrong_shapes
        )
        raise StructureMismatchError(
            _SHAPE_MISMATCH.format(count=len(wrong_shapes), details=shape_details),
            shape_mismatches=tuple(wrong_shapes),
        )
    return leaves


def _container_difference(gradient: Any, expected: Any) -> str:
    """The first container whose type differs between two trees, in words."""

    def walk(got: Any, wanted: Any) -> str:
        got_type, wanted_type = _node_type(got), _node_type(wanted)
        if got_type is not wanted_type:
            return (
                f"it returns a {_type_name(got_type)} where `params` has a"
                f" {_type_name(wanted_type)}"
            )
        got_children, wanted_children = got.children(), wanted.children()
        if len(got_children) != len(wanted_children):
            return ""
        for got_child, wanted_child in zip(got_children, wanted_children, strict=True):
            found = walk(got_child, wanted_child)
            if found:
                return found
        return ""

    return walk(jax.tree_util.tree_structure(gradient), expected)


def _node_type(treedef: Any) -> type | None:
    data = treedef.node_data()
    return None if data is None else data[0]


def _type_name(node: type | None) -> str:
    if node is None:
        return "leaf"
    if issubclass(node, tuple) and hasattr(node, "_fields"):
        return f"NamedTuple {node.__name__}"
    return node.__name__


def check_loss_value(value: Any, where: str) -> float:
    """Check that the loss returned a finite real scalar, and return it."""
    try:
        array = np.asarray(value)
    except Exception as error:
        raise InvalidTypeError(
            f"The loss returned a {type(value).__name__} {where}; it must return a"
            " scalar float array."
        ) from error
    if array.shape != ():
        hint = (
            " Reduce it with `.sum()` or `.mean()`, or index it with `[0]` for a"
            " one-element array."
        )
        raise InvalidInputError(
            f"The loss returned an array of shape {array.shape} {where}; it must"
            f" return a scalar (shape `()`).{hint}"
        )
    if not (is_float_dtype(array.dtype) or array.dtype == np.float64):
        raise InvalidTypeError(
            f"The loss returned a value of dtype {array.dtype} {where}; it must"
            " return a real floating scalar, since an integer, boolean or complex"
            " loss has no real gradient."
        )
    result = float(array)
    if not np.isfinite(result):
        raise InvalidInputError(
            f"The loss is {result} {where}. A gradient is only defined where the"
            " loss is finite: check the parameters and data passed."
        )
    return result


def call_user_function(
    function: Callable[..., Any], arguments: tuple[Any, ...], source: str
) -> Any:
    """Call the loss or the hand-written gradient, naming it if it raises."""
    from ._errors import SourceFailedError

    names = {"loss": "The loss", "manual": "The hand-written gradient `grad`"}
    try:
        return function(*arguments)
    except Exception as error:
        # Only the first line: a JAX error can run to a page of tracer details.
        text = str(error).strip()
        detail = f": {text.splitlines()[0].rstrip('.')}" if text else ""
        called = "loss" if source == "loss" else "grad"
        hint = ""
        if any(callable(a) and not hasattr(a, "shape") for a in arguments[1:]):
            hint = (
                " One of `args` is a function: if it is the hand-written gradient,"
                " pass it by keyword, `check(loss, params, *args, grad=my_grad)`."
            )
        raise SourceFailedError(
            f"{names[source]} raised {type(error).__name__}{detail}. It is called"
            f" as `{called}(params, *args)` with the `params` and `args` given to"
            f" gradaudit; make sure it runs on its own with those.{hint}",
            source=source,
        ) from error
