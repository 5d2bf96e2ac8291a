"""The `gradaudit` command line: `gradaudit demo` and `gradaudit check`.

This is the one module that writes to stdout and stderr. `gradaudit check` imports the
files and modules it is given, finds the checks they declare (see `_target.py`), runs
them, and prints a report per check and a line per check at the end. Its exit status
is 0 when everything agrees, 1 on a mismatch and 2 on a usage or input error, which
takes precedence.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._errors import GradauditError, InvalidInputError, SourceFailedError
from ._report import Report
from ._target import (
    SEE_TRACEBACK,
    Declared,
    Loader,
    LoadError,
    declared_targets,
    sentence,
    user_traceback,
)

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2
# What a shell reports for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
# The version of the layout of the file `gradaudit check --json` writes.
FILE_SCHEMA_VERSION = 1

_EPILOG = """\
examples:
  gradaudit demo                     run the bundled examples and print their reports
  gradaudit demo --json out.json     also write every report as JSON
  gradaudit check checks.py          run every check declared in checks.py
  gradaudit check checks.py::dense   run only the check named dense
  gradaudit check --help             how to declare checks; options; exit status
"""

_CHECK_DESCRIPTION = """\
Run the gradient checks declared in Python files or modules, print a report for
each, and exit with 0 when all agree, 1 on a mismatch, 2 on a usage or input error.

A TARGET is the path of a Python file or the dotted name of an importable module,
optionally followed by ::NAME to run only the check of that name. A file declares
a check by binding a gradaudit.Target to a module-level name, or by marking a
function of no arguments that returns one with @gradaudit.target (it then runs
only when its check does):

  import gradaudit

  @gradaudit.target
  def dense():
      params, x, y = make_inputs()
      return gradaudit.Target(loss, params, x, y, grad=dense_grad)
"""

_CHECK_EPILOG = """\
examples:
  gradaudit check checks.py                     every check in checks.py
  gradaudit check checks.py::dense              only the check named dense
  gradaudit check mypkg.gradchecks              every check of an importable module
  gradaudit check a.py b.py --mode full --seed 3
  gradaudit check checks.py --json out.json --html out.html
  gradaudit check -q checks.py                  only one line per check

exit status:
  0  every check agrees
  1  at least one check found a mismatch
  2  a usage or input error: a target that cannot be found or imported, that
     declares no checks or no check of that NAME, an invalid option, or a check
     gradaudit cannot run on its inputs (the message says which and why)
"""

# -- messages -------------------------------------------------------------------

_NO_CHECKS = (
    "{spec}: declares no checks. Bind a `gradaudit.Target(loss, params, *args,"
    " grad=...)` to a module-level name, or mark a function of no arguments that"
    " returns one with `@gradaudit.target`; see `gradaudit check --help`."
)
_UNKNOWN_NAME = (
    "{spec}: no check named {name!r}.{hint} The checks it declares are: {known}."
)
_EMPTY_NAME = (
    "{spec}: nothing follows `::`. Write FILE::NAME to run one check, or FILE alone"
    " to run them all."
)
_EMPTY_SOURCE = (
    "{spec}: the file part before `::` is empty. Write FILE::NAME, with the Python"
    " file or module that declares the check first, as in checks.py::{name}."
)
_EMPTY_TARGET = (
    "An empty TARGET names no file or module. Pass the path of a Python file, such"
    " as checks.py, or a dotted module name, such as mypkg.gradchecks."
)
_BUILD_FAILED = "{id}: building the check raised {kind}: {message}"
_CHECK_FAILED = "{id}: cannot run this check: {message}"
_UNEXPECTED = (
    "{id}: gradaudit failed with an unexpected {kind} while checking. This is"
    " likely a bug in gradaudit; please report it with the traceback below."
)
_OUTPUT_IS_DIRECTORY = "--{flag} {path}: is a directory; pass the path of a file."
_OUTPUT_UNDER_FILE = (
    "--{flag} {path}: {blocker} is a file, not a directory, so the file cannot be"
    " written there; pass a path in a directory."
)
_OUTPUT_NOT_WRITABLE = (
    "--{flag} {path}: {where} is not writable; pass a path in a directory you can"
    " write to."
)
_WRITE_FAILED = (
    "--{flag} {path}: cannot write the file: {reason}. Pass a path you can write to."
)


# -- the parser -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._finite_diff import METHODS
    from ._plan import MODES

    parser = argparse.ArgumentParser(
        prog="gradaudit",
        description="Check hand-written gradients against jax.grad and finite"
        " differences of the same loss.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the bundled examples and print their reports"
    )
    demo.add_argument("--json", metavar="PATH", help="write the reports as JSON")

    check = commands.add_parser(
        "check",
        help="run the checks declared in your files or modules",
        description=_CHECK_DESCRIPTION,
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a .py file or a module name, optionally with ::NAME",
    )
    output = check.add_argument_group("output")
    output.add_argument(
        "--json", metavar="PATH", help="write every check and its report as JSON"
    )
    output.add_argument(
        "--html", metavar="PATH", help="write every report as one HTML page"
    )
    output.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only one line per check and the errors",
    )
    output.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print each report's per-leaf table after its summary",
    )
    output.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the verdicts: auto (the default) colours only a terminal, and"
        " not when NO_COLOR is set",
    )
    output.add_argument(
        "--no-color",
        dest="color",
        action="store_const",
        const="never",
        help="the same as --color never",
    )
    options = check.add_argument_group(
        "options of gradaudit.check",
        "These replace the same options of every target, for this run.",
    )
    options.add_argument(
        "--mode", choices=MODES, help="which elements finite differences cover"
    )
    options.add_argument(
        "--method", choices=METHODS, help="the finite-difference stencil"
    )
    options.add_argument(
        "--seed", type=_seed, metavar="INT", help="a non-negative integer"
    )
    options.add_argument(
        "--rtol", type=_tolerance, metavar="FLOAT", help="relative tolerance"
    )
    options.add_argument(
        "--atol", type=_tolerance, metavar="FLOAT", help="absolute tolerance"
    )
    return parser


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}"
        )
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number at least 0, got {text!r}"
        )
    return value


# -- entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); return the status."""
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as stop:
        # argparse exits on `--help`, `--version` and usage errors; returning the
        # status lets callers in the same process read it like any other.
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR
    if options.command == "demo":
        return run_demo(options.json)
    if options.command == "check":
        try:
            return run_check(options)
        except KeyboardInterrupt:
            print("gradaudit check: interrupted.", file=sys.stderr)
            return EXIT_INTERRUPTED
    parser.print_help()
    return EXIT_ERROR


def run_demo(json_path: str | None) -> int:
    """Run `gradaudit demo`: check each bundled example, print its report."""
    from ._check import check
    from ._examples import examples

    # Checked first, so that a bad path does not cost a whole run of the examples.
    unusable = _output_problem("json", json_path) if json_path else None
    if unusable:
        _error(unusable, command="demo")
        return EXIT_ERROR

    reports = {}
    for example in examples():
        report = check(example.loss, example.params, *example.args, grad=example.grad)
        reports[example.name] = report.to_dict()
        print(f"== {example.title} ==")
        print(example.story)
        print()
        print(report)
        print()
    if json_path:
        text = json.dumps(reports, indent=2)
        if not _write_output("json", json_path, text, command="demo"):
            return EXIT_ERROR
        print(f"Wrote {len(reports)} reports to {json_path}.")
    return 0


# -- gradaudit check --------------------------------------------------------------


@dataclasses.dataclass
class _Check:
    """One check of the run: where it was declared, and what became of it."""

    id: str
    source: str
    name: str
    declared: Declared
    status: str = "pending"
    seconds: float = 0.0
    report: Report | None = None
    error_kind: str | None = None
    error_message: str | None = None
    # What to print on stderr about the error: a message and a traceback.
    error_display: tuple[str, str] = ("", "")


def run_check(options: argparse.Namespace) -> int:
    """Run `gradaudit check` with parsed options; return the exit status."""
    out = _Console(sys.stdout, _use_colour(options.color, sys.stdout))
    progress = _Progress(sys.stderr, enabled=_use_progress(sys.stderr))
    overrides = {
        name: getattr(options, name)
        for name in ("mode", "method", "seed", "rtol", "atol")
        if getattr(options, name) is not None
    }
    outputs = [
        (flag, path)
        for flag, path in (("json", options.json), ("html", options.html))
        if path
    ]
    for flag, path in outputs:
        unusable = _output_problem(flag, path)
        if unusable:
            _error(unusable)
            return EXIT_ERROR

    with Loader() as loader:
        checks, problems = _collect(options.targets, loader)
        if problems:
            # Every target that failed to load is reported, and nothing runs.
            for problem in problems:
                _error(problem.message, problem.detail)
            return EXIT_ERROR

        started = time.perf_counter()
        for number, item in enumerate(checks, start=1):
            with progress.showing(f"gradaudit: [{number}/{len(checks)}] {item.id}"):
                _run_one(item, overrides)
            if item.status == "error":
                _error(*item.error_display)
            if item.report is not None and not options.quiet:
                out.line(out.bold(f"== {item.id} =="))
                out.line(str(item.report) if options.verbose else item.report.summary())
                out.line()
        elapsed = time.perf_counter() - started

    status = _status(checks)
    for line in _closing_lines(checks, elapsed, out):
        out.line(line)
    for flag, path in outputs:
        text = (
            _json_text(checks, overrides, status)
            if flag == "json"
            else _html_text(checks)
        )
        if not _write_output(flag, path, text):
            status = EXIT_ERROR
            continue
        if not options.quiet:
            out.line(f"Wrote {_plural(len(checks), 'check')} to {path}.")
    return status


def _collect(
    specs: Sequence[str], loader: Loader
) -> tuple[list[_Check], list[LoadError]]:
    """Every check the specs select, in order and each once, and every load error."""
    checks: dict[tuple[str, str], _Check] = {}
    problems: list[LoadError] = []
    for spec in specs:
        source, separator, name = spec.partition("::")
        try:
            if separator and not name:
                raise LoadError(_EMPTY_NAME.format(spec=spec))
            if not source:
                message = _EMPTY_SOURCE if separator else _EMPTY_TARGET
                raise LoadError(message.format(spec=spec, name=name))
            key, module = loader.load(source)
            try:
                declared = declared_targets(vars(module))
            except InvalidInputError as error:
                raise LoadError(f"{source}: {error}") from None
            if not declared:
                raise LoadError(_NO_CHECKS.format(spec=source))
            if name:
                declared = [_select(declared, name, source)]
        except LoadError as error:
            problems.append(error)
            continue
        for item in declared:
            checks.setdefault(
                (key, item.name),
                _Check(f"{source}::{item.name}", source, item.name, item),
            )
    return list(checks.values()), problems


def _select(declared: list[Declared], name: str, source: str) -> Declared:
    for item in declared:
        if item.name == name:
            return item
    names = [item.name for item in declared]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise LoadError(
        _UNKNOWN_NAME.format(spec=source, name=name, hint=hint, known=", ".join(names))
    )


def _run_one(item: _Check, overrides: dict[str, Any]) -> None:
    """Build and run one check, recording its report or the error that stopped it."""
    started = time.perf_counter()
    try:
        try:
            target = item.declared.build()
        except Exception as error:
            detail = user_traceback(error)
            message = _BUILD_FAILED.format(
                id=item.id, kind=type(error).__name__, message=sentence(error)
            )
            _fail(item, error, message + (SEE_TRACEBACK if detail else ""), detail)
            return
        try:
            item.report = target.run(**overrides)
        except GradauditError as error:
            cause = error.__cause__
            detail = ""
            if isinstance(error, SourceFailedError) and cause is not None:
                detail = user_traceback(cause)
            message = _CHECK_FAILED.format(id=item.id, message=error)
            _fail(item, error, message, detail)
            return
        except Exception as error:
            message = _UNEXPECTED.format(id=item.id, kind=type(error).__name__)
            detail = "".join(traceback.format_exception(error)).rstrip()
            _fail(item, error, message, detail)
            return
        item.status = "ok" if item.report.ok else "mismatch"
    finally:
        item.seconds = time.perf_counter() - started


def _fail(item: _Check, error: BaseException, message: str, detail: str) -> None:
    item.status = "error"
    item.error_kind = type(error).__name__
    item.error_message = str(error)
    item.error_display = (message, detail)


def _status(checks: Sequence[_Check]) -> int:
    if any(item.status == "error" for item in checks):
        return EXIT_ERROR
    if any(item.status == "mismatch" for item in checks):
        return EXIT_MISMATCH
    return EXIT_OK


def _error(message: str, detail: str = "", command: str = "check") -> None:
    """Write an error to stderr: one paragraph, then the user's traceback if any."""
    text = f"gradaudit {command}: error: {message}"
    if detail:
        text += "\n" + detail
    print(text, file=sys.stderr, flush=True)


# -- closing lines, files, colour and progress ---------------------------------------


def _closing_lines(
    checks: Sequence[_Check], elapsed: float, out: _Console
) -> list[str]:
    """One line per check (verdict, id, time, worst leaf or error), then totals."""
    width = max(len(item.id) for item in checks)
    lines = []
    for item in checks:
        verdict = {"ok": "ok", "mismatch": "MISMATCH"}.get(item.status, "ERROR")
        painted = out.paint(f"{verdict:<8}", "green" if verdict == "ok" else "red")
        if item.report is not None:
            detail = _worst(item.report)
        else:
            detail = f"{item.error_kind} (see the error above)"
        lines.append(
            f"{painted}  {item.id:<{width}}  {item.seconds:5.1f}s  {detail}".rstrip()
        )
    counts = [
        _plural(sum(item.status == status for item in checks), status)
        for status in ("ok", "mismatch", "error")
    ]
    lines.append(
        f"{_plural(len(checks), 'check')}: {', '.join(counts)}, in {elapsed:.1f}s."
    )
    return lines


def _plural(count: int, noun: str) -> str:
    if noun == "ok":
        return f"{count} ok"
    suffix = "es" if noun.endswith("ch") else "s"
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{suffix}"


def _worst(report: Report) -> str:
    """The failing leaf furthest beyond its tolerance, or the closest to it if none."""
    leaves = report.failing_leaves or report.leaves
    best: tuple[float, str] | None = None
    for leaf in leaves:
        for pair, result in leaf.pairs.items():
            if result.worst is None:
                continue
            error, tolerance = result.worst.abs_error, result.worst.tolerance
            if math.isnan(error):
                ratio = math.inf
            elif tolerance > 0:
                ratio = error / tolerance
            else:
                ratio = 0.0 if error == 0 else math.inf
            if best is None or ratio > best[0]:
                verdict = "" if leaf.ok else f" ({leaf.verdict})"
                best = (ratio, f"worst leaf {leaf.path}{verdict}: {pair}")
    if best is None:
        if report.failing_leaves:
            leaf = report.failing_leaves[0]
            return f"worst leaf {leaf.path} ({leaf.verdict})"
        return "no element compared"
    ratio, where = best
    return f"{where} |diff|/tolerance {ratio:.2g}"


def _output_problem(flag: str, path: str) -> str | None:
    """Why the file of `--flag` cannot be written at `path`, or None if it can be.

    Checked before anything runs, so that a mistyped path does not cost a whole run.
    Nothing is created here: missing directories are made when the file is written.
    """
    target = Path(path)
    if target.is_dir():
        return _OUTPUT_IS_DIRECTORY.format(flag=flag, path=path)
    # The closest part of the path that exists must be a directory we may write in.
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return _OUTPUT_UNDER_FILE.format(flag=flag, path=path, blocker=existing)
    if target.exists() and not os.access(target, os.W_OK):
        return _OUTPUT_NOT_WRITABLE.format(flag=flag, path=path, where="the file")
    if not target.exists() and not os.access(existing, os.W_OK | os.X_OK):
        where = f"the directory {existing}"
        return _OUTPUT_NOT_WRITABLE.format(flag=flag, path=path, where=where)
    return None


def _write_output(flag: str, path: str, text: str, command: str = "check") -> bool:
    """Write the file of `--flag`, making missing directories; False if it failed.

    A failure (a full disk, a path changed during the run) is reported as an error
    line rather than a traceback, so the reports already printed stay readable.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        _error(
            _WRITE_FAILED.format(flag=flag, path=path, reason=reason), command=command
        )
        return False
    return True


def _json_text(checks: Sequence[_Check], overrides: dict[str, Any], status: int) -> str:
    data = {
        "schema_version": FILE_SCHEMA_VERSION,
        "exit_status": status,
        "options": overrides,
        "checks": [
            {
                "id": item.id,
                "target": item.source,
                "name": item.name,
                "status": item.status,
                "ok": None if item.report is None else item.report.ok,
                "seconds": round(item.seconds, 3),
                "error": None
                if item.error_kind is None
                else {"type": item.error_kind, "message": item.error_message},
                "report": None if item.report is None else item.report.to_dict(),
            }
            for item in checks
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def _html_text(checks: Sequence[_Check]) -> str:
    from ._html import render_html

    reports = {item.id: item.report for item in checks if item.report is not None}
    failed = sum(item.status != "ok" for item in checks)
    title = f"gradaudit check: {_plural(len(checks), 'check')}, {failed} not ok"
    return render_html(reports, title)


def _use_colour(choice: str, stream: TextIO) -> bool:
    """Whether to colour `stream`: as asked, or for a terminal without NO_COLOR."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def _use_progress(stream: TextIO) -> bool:
    """Whether to draw the status line: only on a terminal that is not `dumb`.

    The line is redrawn with ANSI escape codes, which a dumb terminal (an editor's
    shell buffer, say) prints as they are.
    """
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class _Console:
    """Lines to one stream, with ANSI colours when they are wanted."""

    _CODES = {"bold": "1", "green": "32", "red": "31"}

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour

    def paint(self, text: str, colour: str) -> str:
        if not self.colour:
            return text
        return f"\x1b[{self._CODES[colour]}m{text}\x1b[0m"

    def bold(self, text: str) -> str:
        return self.paint(text, "bold")

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)


class _Progress:
    """A status line on a terminal while a check runs: what, and seconds elapsed.

    It is redrawn four times a second from a background thread and erased when the
    check ends, so nothing of it stays in the scrollback. Off unless the stream is a
    terminal that understands escape codes (see `_use_progress`), so logs and pipes
    never see it.
    """

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled

    @contextlib.contextmanager
    def showing(self, text: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        columns = shutil.get_terminal_size().columns
        started = time.perf_counter()
        stop = threading.Event()

        def draw() -> None:
            while True:
                status = f"{text}  {time.perf_counter() - started:.1f}s"
                # A line longer than the terminal would wrap, and `\r` could not
                # erase the part above.
                self.stream.write("\r\x1b[K" + status[: max(columns - 1, 1)])
                self.stream.flush()
                if stop.wait(0.25):
                    return

        thread = threading.Thread(target=draw, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()


if __name__ == "__main__":
    sys.exit(main())
