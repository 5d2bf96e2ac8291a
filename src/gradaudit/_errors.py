"""Exceptions and warnings raised by gradaudit.

Every exception derives from `GradauditError`, so `except gradaudit.GradauditError`
catches all of them. Bad input also derives from `ValueError` or `TypeError`, and a
failed gradient check from `AssertionError`, so that test frameworks report it as a
test failure rather than an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._report import Report


class GradauditError(Exception):
    """Base class of every exception raised by gradaudit."""


class InvalidInputError(GradauditError, ValueError):
    """An argument has a value gradaudit cannot check (empty, non-finite, ...)."""


class InvalidTypeError(GradauditError, TypeError):
    """An argument, or a leaf inside one, has a type gradaudit cannot check."""


class StructureMismatchError(InvalidInputError):
    """The hand-written gradient's pytree does not match the structure of `params`.

    Attributes:
        missing: key paths present in `params` but absent from the gradient.
        extra: key paths present in the gradient but absent from `params`.
        shape_mismatches: `(path, expected_shape, actual_shape)` triples.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        shape_mismatches: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (),
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.extra = extra
        self.shape_mismatches = shape_mismatches


class SourceFailedError(InvalidInputError):
    """A user function (the loss or the hand-written gradient) raised.

    The original exception is chained as `__cause__`.

    Attributes:
        source: `"loss"` or `"manual"`, the function that raised.
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class NondeterministicLossError(InvalidInputError):
    """The loss returned different values for the same input.

    Attributes:
        first: the first value.
        second: the second value.
    """

    def __init__(self, message: str, *, first: float, second: float) -> None:
        super().__init__(message)
        self.first = first
        self.second = second


class GradientMismatchError(GradauditError, AssertionError):
    """Raised by `assert_gradients` when the gradients disagree.

    Attributes:
        report: the full `Report`; its summary is this exception's message.
    """

    def __init__(self, report: Report) -> None:
        super().__init__(report.summary())
        self.report = report
