"""Flattening pytrees into named leaves, and back.

Paths are printed with `jax.tree_util.keystr`, e.g. `['W1']` or `[0].bias`, the
form users see in every report and error message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class LeafLayout:
    """Where each leaf of a pytree lives inside one flat vector."""

    treedef: Any
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)

    @property
    def total_size(self) -> int:
        return sum(self.sizes)

    def split(self, flat: Any) -> list[Any]:
        """Cut a flat vector (numpy or JAX) into leaves with their shapes."""
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(
                self.offsets, self.sizes, self.shapes, strict=True
            )
        ]

    def unflatten(self, flat: Any) -> Any:
        """Rebuild the pytree from a flat vector; works inside `jax.jit`."""
        return jax.tree_util.tree_unflatten(self.treedef, self.split(flat))

    def leaf_of(self, flat_index: int) -> tuple[int, tuple[int, ...]]:
        """Map a flat position to `(leaf number, index within that leaf)`."""
        leaf = int(np.searchsorted(self.offsets, flat_index, side="right") - 1)
        local = flat_index - self.offsets[leaf]
        return leaf, tuple(int(i) for i in np.unravel_index(local, self.shapes[leaf]))


def path_string(path: Sequence[Any]) -> str:
    """The `keystr` form of a key path; the empty path (a bare array) is `<root>`."""
    return jax.tree_util.keystr(tuple(path)) if path else "<root>"


def leaves_with_paths(
    tree: Any, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[tuple[str, Any]], Any]:
    """Flatten `tree` into `(path string, leaf)` pairs and its treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_string(path), leaf) for path, leaf in pairs], treedef


def layout_of(tree: Any) -> LeafLayout:
    """The flat layout of a pytree whose leaves are arrays."""
    pairs, treedef = leaves_with_paths(tree)
    shapes = tuple(tuple(int(d) for d in np.shape(leaf)) for _, leaf in pairs)
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    return LeafLayout(treedef, tuple(p for p, _ in pairs), shapes, offsets)


def format_paths(paths: Sequence[str], limit: int = 10) -> str:
    """A comma-separated list of paths, capped with "and N more"."""
    shown = ", ".join(paths[:limit])
    if len(paths) > limit:
        shown += f", and {len(paths) - limit} more"
    return shown
