"""Declaring checks in a file, for `gradaudit check` to find and run.

A file (or module) declares a check in one of two ways:

- a module-level name bound to a `Target`, whose inputs are built when the file is
  imported; the name is the check's name;
- a function of no arguments marked with `@target` that builds and returns a
  `Target`; it runs only when its check does, so importing the file stays cheap.

`declared_targets` finds both in a module's namespace, in the order they are defined,
and `Loader` imports the files and modules that `gradaudit check` is given. Nothing
here prints; the command line shows the messages of the `LoadError`s raised.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar, overload

from ._check import check
from ._errors import InvalidInputError, InvalidTypeError
from ._report import Report

# The attribute `@target` sets on a function, holding the check's name.
MARK = "__gradaudit_target__"
# A name must be usable after `::` on a command line, in a shell, and as a JSON key.
_NAME = re.compile(r"[\w.-]+")

Builder = TypeVar("Builder", bound=Callable[[], Any])


def option_names() -> tuple[str, ...]:
    """The keyword options of `gradaudit.check` a `Target` may carry, `grad` aside."""
    return tuple(
        name
        for name, parameter in inspect.signature(check).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "grad"
    )


def check_option_names(names: Mapping[str, Any] | list[str], where: str) -> None:
    """Refuse option names `check` does not take, suggesting the closest one.

    `where` names what was given the options, in backticks, such as
    "`gradaudit.Target`"; the pytest plugin checks its marker's options here too, so
    that a misspelling gets the same hint wherever it is written.
    """
    known = option_names()
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            hints.append(f" Did you mean `{close[0]}` for `{name}`?")
    raise InvalidTypeError(
        f"{where} got unknown option(s) {', '.join(f'`{n}`' for n in unknown)}."
        + "".join(hints)
        + f" The options of `gradaudit.check` are {', '.join(known)}."
    )


@dataclasses.dataclass(frozen=True, init=False, eq=False, repr=False)
class Target:
    """A gradient check declared for `gradaudit check`: what `check` would be given.

    `Target(loss, params, *args, grad=..., **options)` takes exactly the arguments
    of `gradaudit.check` and stores them without running anything, so that a file
    can declare checks and the command line (or a test) can run them later. Option
    names are checked here, so a misspelling fails where it is written; option
    values are checked by `gradaudit.check` when the target runs.

    Attributes:
        loss: `loss(params, *args)` returning a scalar float.
        params: the pytree of floating arrays to differentiate with respect to.
        args: the data passed to `loss` and `grad` after `params`.
        grad: the hand-written gradient, or None to compare `jax.grad` with finite
            differences only.
        options: further keyword options of `gradaudit.check` (`mode`, `rtol`, ...),
            as a read-only mapping.

    Raises:
        InvalidTypeError: (a `TypeError`) `loss` or `grad` is not callable, or an
            option is not a keyword option of `gradaudit.check`.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradaudit
        >>> cube = gradaudit.Target(
        ...     lambda w: jnp.sum(w**3), jnp.array([1.0, 2.0]), grad=lambda w: 3 * w**2
        ... )
        >>> cube.run().ok
        True
    """

    loss: Callable[..., Any]
    params: Any
    args: tuple[Any, ...]
    grad: Callable[..., Any] | None
    options: Mapping[str, Any]

    def __init__(
        self,
        loss: Callable[..., Any],
        params: Any,
        *args: Any,
        grad: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        if not callable(loss):
            raise InvalidTypeError(
                "`gradaudit.Target` needs the loss function first, got"
                f" {type(loss).__name__}; write"
                " `Target(loss, params, *args, grad=...)`."
            )
        if grad is not None and not callable(grad):
            raise InvalidTypeError(
                f"`grad` must be the hand-written gradient function or None, got"
                f" {type(grad).__name__}."
            )
        check_option_names(options, "`gradaudit.Target`")
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "grad", grad)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))

    def run(self, **overrides: Any) -> Report:
        """Run the check and return its `Report`; `overrides` replace stored options.

        Args:
            **overrides: keyword options of `gradaudit.check` that take precedence
                over `options` for this run only, such as `seed=3` or
                `mode="full"`. The command line passes its flags this way.

        Returns:
            The `Report` of `gradaudit.check`; like it, this never raises on a
            mismatch.

        Raises:
            InvalidTypeError: an override is not an option of `gradaudit.check`.
            InvalidInputError: whatever `gradaudit.check` raises on bad input.
        """
        check_option_names(overrides, "`Target.run`")
        options = {**self.options, **overrides}
        return check(self.loss, self.params, *self.args, grad=self.grad, **options)

    def __repr__(self) -> str:
        # The arrays are left out: a repr should not print a model's weights.
        grad = "None" if self.grad is None else _callable_name(self.grad)
        return (
            f"Target(loss={_callable_name(self.loss)}, args={len(self.args)},"
            f" grad={grad}, options={dict(self.options)!r})"
        )


def _callable_name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


@overload
def target(function: Builder, /) -> Builder: ...


@overload
def target(*, name: str | None = None) -> Callable[[Builder], Builder]: ...


def target(
    function: Builder | None = None, /, *, name: str | None = None
) -> Builder | Callable[[Builder], Builder]:
    """Mark a function of no arguments that returns a `Target` as a declared check.

    The function is returned unchanged, and can still be called directly; it only
    gains a mark that `gradaudit check` looks for. It runs when its check runs, not
    when its file is imported, so building large inputs costs nothing until then.
    Use it bare, `@gradaudit.target`, to name the check after the function, or as
    `@gradaudit.target(name="dense")` to choose the name.

    Args:
        function: the function to mark (given when used bare).
        name: the check's name on the command line and in reports; the function's
            name when None. Letters, digits, `_`, `.` and `-` only.

    Returns:
        The function itself, or, when called with `name` only, a decorator.

    Raises:
        InvalidTypeError: the function needs arguments, or is not a function.
        InvalidInputError: `name` is not a usable name.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradaudit
        >>> @gradaudit.target(name="cube")
        ... def cube_check():
        ...     w = jnp.array([1.0, 2.0])
        ...     cube = lambda w: jnp.sum(w**3)
        ...     return gradaudit.Target(cube, w, grad=lambda w: 3 * w**2)
        >>> cube_check().run().ok
        True
    """

    def mark(function: Builder) -> Builder:
        if not callable(function):
            raise InvalidTypeError(
                f"`@gradaudit.target` marks a function, got {type(function).__name__}."
            )
        chosen = name if name is not None else getattr(function, "__name__", "")
        _check_name(chosen, function)
        _check_takes_no_arguments(function, chosen)
        setattr(function, MARK, chosen)
        return function

    if function is None:
        return mark
    return mark(function)


def _check_name(name: object, function: Callable[..., Any]) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            "`@gradaudit.target` needs a check name of letters, digits, `_`, `.` and"
            f" `-`, got {name!r} for {_callable_name(function)}; pass one as"
            ' `@gradaudit.target(name="...")`.'
        )


def _check_takes_no_arguments(function: Callable[..., Any], name: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # Some builtins have no signature; calling them will tell.
    required = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise InvalidTypeError(
            f"`@gradaudit.target` function {name!r} takes arguments"
            f" ({', '.join(required)}), but `gradaudit check` calls it with none."
            " Build the inputs inside the function, or give the arguments defaults."
        )


@dataclasses.dataclass(frozen=True)
class Declared:
    """One check found in a module: its name, and how to get its `Target`.

    Attributes:
        name: the check's name.
        source: what declared it, e.g. "function `dense_check`" or "`dense`".
        value: the `Target` itself, or the marked function that builds it.
    """

    name: str
    source: str
    value: Any

    def build(self) -> Target:
        """The `Target`, calling the marked function if there is one.

        Raises:
            InvalidTypeError: the marked function returned something else.
            Exception: whatever the marked function raises, unchanged.
        """
        if isinstance(self.value, Target):
            return self.value
        built = self.value()
        if not isinstance(built, Target):
            raise InvalidTypeError(
                f"The {self.source} of check {self.name!r} returned"
                f" {type(built).__name__}, not a `gradaudit.Target`; end it with"
                " `return gradaudit.Target(loss, params, *args, grad=...)`."
            )
        return built


def declared_targets(namespace: Mapping[str, Any]) -> list[Declared]:
    """Every check a module declares, in definition order.

    Module-level `Target`s count unless their name starts with `_`; functions
    marked with `@target` count whatever their name. An object bound to several
    names counts once, under its first name.

    Raises:
        InvalidInputError: two different declarations share a check name.
    """
    found: dict[str, Declared] = {}
    seen: set[int] = set()
    for attribute, value in namespace.items():
        if isinstance(value, Target):
            if attribute.startswith("_"):
                continue
            declared = Declared(attribute, f"`{attribute}`", value)
        elif callable(value) and isinstance(getattr(value, MARK, None), str):
            source = f"function `{getattr(value, '__name__', attribute)}`"
            declared = Declared(getattr(value, MARK), source, value)
        else:
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        other = found.get(declared.name)
        if other is not None:
            raise InvalidInputError(
                f"Two checks are named {declared.name!r}: {other.source} and"
                f" {declared.source}. Rename one, or give the function another"
                ' name with `@gradaudit.target(name="...")`.'
            )
        found[declared.name] = declared
    return list(found.values())


# -- finding declared checks in files and modules --------------------------------

_NO_FILE = (
    "{spec}: no such file. Pass the path of a Python file that declares checks"
    " (e.g. checks.py), or the name of a module importable from here (e.g."
    " mypkg.gradchecks)."
)
_DIRECTORY = (
    "{spec}: is a directory. Pass a Python file in it (e.g. {spec}/checks.py), or"
    " a module name."
)
_NOT_A_TARGET = (
    "{spec}: is neither a Python file nor a module name. Pass a path ending in"
    " .py, or a dotted module name such as mypkg.gradchecks."
)
_NOT_PYTHON = (
    "{spec}: is a file, but not a Python file: its name does not end in .py. Pass"
    " the path of a Python file that declares checks (e.g. checks.py; rename this"
    " one if it is Python), or a dotted module name such as mypkg.gradchecks."
)
_NO_MODULE = (
    "{spec}: no module named {missing!r} can be imported. Check the spelling,"
    " install the package, or run from the directory that holds it; to check a"
    " file, pass its path ending in .py."
)
_IMPORT_FAILED = "{spec}: importing it raised {kind}: {message}"
# Follows a message when the user's traceback is shown below it.
SEE_TRACEBACK = " The traceback below shows where, in your code; fix it and run again."


class LoadError(Exception):
    """A target that cannot be loaded: a message, and the user's traceback if any.

    Attributes:
        message: one paragraph naming the target, what went wrong and the fix.
        detail: the user's traceback, or "".
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message + (SEE_TRACEBACK if detail else "")
        self.detail = detail


class Loader:
    """Imports each target's file or module once, and tidies up afterwards.

    A file runs as a module whose directory leads `sys.path`, as `python file.py`
    would have it, so that it can import its neighbours; a module name is imported
    with the working directory on `sys.path`, as `python -m` would. On exit,
    `sys.path` is restored and the modules made from files are forgotten, so that
    running the command line in-process leaves no trace.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, ModuleType] = {}
        self._file_modules: list[str] = []
        self._saved_path: list[str] = []

    def __enter__(self) -> Loader:
        self._saved_path = list(sys.path)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.path[:] = self._saved_path
        for name in self._file_modules:
            sys.modules.pop(name, None)

    def load(self, source: str) -> tuple[str, ModuleType]:
        """The module `source` names, with a key that identifies it in this run."""
        is_path = source.endswith(".py") or "/" in source or os.sep in source
        is_module = not is_path and all(p.isidentifier() for p in source.split("."))
        if is_module:
            key = source
            if key not in self._loaded:
                self._loaded[key] = self._import_module(source)
        else:
            path = Path(source)
            if not path.exists():
                message = _NO_FILE if is_path else _NOT_A_TARGET
                raise LoadError(message.format(spec=source))
            if path.is_dir():
                raise LoadError(_DIRECTORY.format(spec=source))
            if path.suffix != ".py":
                raise LoadError(_NOT_PYTHON.format(spec=source))
            key = str(path.resolve())
            if key not in self._loaded:
                self._loaded[key] = self._import_file(path.resolve(), source)
        return key, self._loaded[key]

    def _import_module(self, name: str) -> ModuleType:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if name == missing or name.startswith(missing + "."):
                # `notes.txt` reads as a module name too; if it is a file there, it
                # is the file the user meant.
                message = _NOT_PYTHON if Path(name).is_file() else _NO_MODULE
                raise LoadError(message.format(spec=name, missing=missing)) from None
            raise _import_failed(name, error) from None
        except (Exception, SystemExit) as error:
            raise _import_failed(name, error) from None

    def _import_file(self, path: Path, source: str) -> ModuleType:
        name = self._module_name(path)
        loader = importlib.machinery.SourceFileLoader(name, str(path))
        spec = importlib.util.spec_from_loader(name, loader, origin=str(path))
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        # Registered before it runs, as an import would be, so that dataclasses and
        # pickling inside the file can find their module.
        sys.modules[name] = module
        self._file_modules.append(name)
        try:
            loader.exec_module(module)
        except (Exception, SystemExit) as error:
            raise _import_failed(source, error) from None
        return module

    def _module_name(self, path: Path) -> str:
        """The file's stem, unless that would hide another module of the same name."""
        stem = path.stem
        if stem.isidentifier() and stem not in sys.modules:
            try:
                existing = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                existing = None
            if existing is None or (
                existing.origin is not None and Path(existing.origin) == path
            ):
                return stem
        safe = "".join(c if c.isalnum() else "_" for c in stem)
        return f"gradaudit_target_{len(self._file_modules)}_{safe}"


def _import_failed(spec: str, error: BaseException) -> LoadError:
    message = _IMPORT_FAILED.format(
        spec=spec, kind=type(error).__name__, message=sentence(error)
    )
    return LoadError(message, user_traceback(error))


def internal_directories() -> tuple[str, ...]:
    """Where gradaudit, JAX and the import machinery live, to hide from tracebacks."""
    import jax
    import jaxlib

    packages = (
        Path(__file__).parent,
        Path(importlib.__file__).parent,
        Path(jax.__file__).parent,
        Path(jaxlib.__file__).parent,
    )
    return tuple(str(directory) + os.sep for directory in packages)


def user_traceback(error: BaseException) -> str:
    """The frames of `error`'s traceback in the user's code, and the error itself.

    Empty when no frame is the user's, except for a syntax error, whose own lines
    point at the offending line.
    """
    internal = internal_directories()
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(internal)
        and not frame.filename.startswith("<frozen ")
    ]
    if not frames and not isinstance(error, SyntaxError):
        return ""
    lines = ["Traceback (gradaudit's and JAX's own frames left out):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines).rstrip()


def sentence(error: BaseException) -> str:
    """An exception's message as a sentence ending in a full stop."""
    text = str(error).strip() or "(no message)"
    return text if text.endswith((".", "!", "?")) else text + "."
