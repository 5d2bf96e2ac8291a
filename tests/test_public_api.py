"""The public API: the exact set of names, and a docstring on each of them.

`PUBLIC_NAMES` is checked in on purpose: adding, removing or renaming a public name
fails this test, so that every API change shows up in review.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import gradaudit

PUBLIC_NAMES = [
    "Diagnosis",
    "Element",
    "ErrorMap",
    "GradauditError",
    "GradientMismatchError",
    "InvalidInputError",
    "InvalidTypeError",
    "KinkNote",
    "LeafReport",
    "NondeterministicLossError",
    "PairResult",
    "Report",
    "SCHEMA_VERSION",
    "Settings",
    "SourceFailedError",
    "SourceInfo",
    "StructureMismatchError",
    "Target",
    "TaylorResult",
    "assert_gradients",
    "check",
    "target",
]

_DOCUMENTED = [
    name
    for name in PUBLIC_NAMES
    if inspect.isclass(getattr(gradaudit, name))
    or inspect.isfunction(getattr(gradaudit, name))
]


def _own_docstring(obj: Any) -> str:
    """The docstring written for `obj` itself, not inherited or generated."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        # dataclasses fill in a missing docstring with the class signature.
        if doc.startswith(f"{obj.__name__}("):
            return ""
        return doc
    if isinstance(obj, property):
        obj = obj.fget
    return getattr(obj, "__doc__", None) or ""


def test_public_names_match_the_checked_in_list() -> None:
    public = sorted(name for name in dir(gradaudit) if not name.startswith("_"))

    assert public == PUBLIC_NAMES


def test_version_is_a_string() -> None:
    assert isinstance(gradaudit.__version__, str)
    assert gradaudit.__version__.count(".") == 2


def test_schema_version_is_an_int() -> None:
    assert isinstance(gradaudit.SCHEMA_VERSION, int)


def test_every_public_name_is_reexported_from_a_private_module() -> None:
    for name in _DOCUMENTED:
        module = getattr(gradaudit, name).__module__
        assert module.startswith("gradaudit._"), (name, module)


@pytest.mark.parametrize("name", _DOCUMENTED)
def test_public_callable_has_a_docstring(name: str) -> None:
    doc = _own_docstring(getattr(gradaudit, name))

    assert doc.strip(), f"gradaudit.{name} has no docstring of its own"
    summary = doc.strip().splitlines()[0]
    assert summary.endswith("."), f"gradaudit.{name}: summary line {summary!r}"


def _public_members() -> list[tuple[str, str]]:
    members = []
    for name in _DOCUMENTED:
        obj = getattr(gradaudit, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for attribute, value in vars(obj).items():
            if attribute.startswith("_"):
                continue
            if inspect.isfunction(value) or isinstance(value, property):
                members.append((name, attribute))
    return members


@pytest.mark.parametrize(
    ("owner", "attribute"),
    _public_members(),
)
def test_public_method_has_a_docstring(owner: str, attribute: str) -> None:
    value = vars(getattr(gradaudit, owner))[attribute]

    assert _own_docstring(value).strip(), f"{owner}.{attribute} has no docstring"
