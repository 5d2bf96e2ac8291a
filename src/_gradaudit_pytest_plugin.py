"""The gradaudit pytest plugin: the `gradcheck` fixture, the `gradaudit` marker, and
session-wide options, seeds and report files. `docs/pytest-plugin.md` is the guide.

This module sits outside the `gradaudit` package on purpose. pytest loads every
installed plugin when it starts, so a plugin at `gradaudit.pytest_plugin` would run
`gradaudit/__init__.py`, and import JAX, in every pytest session of every environment
that has gradaudit installed. Here only the standard library and pytest are imported
at load time; gradaudit, and with it JAX, is imported when a test first asks for the
`gradcheck` fixture, or when a report file is written.

Plugin state lives in `config.stash` and `item.stash`. Under pytest-xdist each
worker attaches its checks to the test reports it sends (as a `user_properties`
entry), and the controller takes them off again, so that the terminal summary and
the report file cover the whole session.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import os
import pickle
import shlex
import types
import zlib
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gradaudit import Report

# The version of the report file's own layout; each check's `report` inside it
# carries gradaudit's report schema version separately.
FILE_SCHEMA_VERSION = 1

# Copies of `gradaudit.check`'s choices, so that options can be validated without
# importing JAX; a test keeps them equal to gradaudit's own.
METHODS = ("central", "forward", "fourth_order", "richardson")
MODES = ("auto", "full", "sampled", "directional")

# The name of the `user_properties` entry that carries a check from a worker.
PROPERTY = "gradaudit.check"

MARKER_HELP = (
    "gradaudit(**options): keyword options of gradaudit.check (rtol, atol, method,"
    " mode, seed, ...) for the gradcheck fixture in this test; the marker closest"
    " to the test wins, and options passed in the call win over the marker."
)
MARKER_POSITIONAL_MSG = (
    "`@pytest.mark.gradaudit` takes keyword options only, as in"
    " `@pytest.mark.gradaudit(rtol=1e-6)`; {test} passes positional argument(s)"
    " {args}."
)
INI_VALUE_MSG = "The ini option `{name}` is invalid: {problem}"
REPORT_DIRECTORY_MSG = (
    "`--gradaudit-report` names a directory, {path}; give a file path ending in"
    " .json or .html."
)
REPORT_PARENT_MSG = (
    "`--gradaudit-report` {path}: cannot make its directory: {reason}. Give a file"
    " path in a directory that exists or can be made."
)
REPORT_UNWRITABLE_MSG = (
    "`--gradaudit-report` {path}: {what} is not writable. Give a file path in a"
    " directory you can write to."
)
REPORT_WRITE_MSG = (
    "gradaudit: error: could not write the `--gradaudit-report` file {path}:"
    " {reason}. Give a path you can write to."
)


# -- option values ------------------------------------------------------------------


def _tolerance(text: str) -> float:
    """Parse a tolerance: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number such as 1e-6, got {text!r}."
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of at least 0, got {text!r}."
        )
    return value


def _seed(text: str) -> int:
    """Parse a seed: an integer of at least 0, as numpy's generators need."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}."
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}."
        )
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts exactly one of `choices`."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"expected one of {', '.join(choices)}; got {text!r}."
            )
        return text

    return parse


@dataclasses.dataclass(frozen=True)
class _Option:
    """A session-wide option: `--gradaudit-<name>`, or the ini key `gradaudit_<name>`.

    The flag wins over the ini key.
    """

    name: str
    parse: Callable[[str], Any]
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return f"--gradaudit-{self.name}"

    @property
    def key(self) -> str:
        return f"gradaudit_{self.name}"


# Every option but `seed` is passed to `gradaudit.check` when set; `seed` is the
# session seed that per-test seeds are derived from.
OPTIONS = (
    _Option(
        "rtol",
        _tolerance,
        "RTOL",
        "Relative tolerance of every check (default: chosen per pair from the"
        " precisions of the two gradients compared).",
    ),
    _Option(
        "atol",
        _tolerance,
        "ATOL",
        "Absolute tolerance added to every element of every check (default: 0).",
    ),
    _Option(
        "method",
        _one_of(METHODS),
        "METHOD",
        f"Finite-difference stencil: {', '.join(METHODS)} (default: central).",
    ),
    _Option(
        "mode",
        _one_of(MODES),
        "MODE",
        f"Which elements finite differences probe: {', '.join(MODES)} (default: auto).",
    ),
    _Option(
        "seed",
        _seed,
        "SEED",
        "Session seed (default: 0). Each test's seed is derived from it and the"
        " test's node id, and the header prints it so that a run can be replayed.",
    ),
)


# -- session state ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What the command line and ini file set for the whole session."""

    seed: int
    defaults: dict[str, Any]
    report_path: Path | None

    @property
    def replay_flags(self) -> str:
        """The flags that reproduce these settings on another run."""
        flags = [f"--gradaudit-seed={self.seed}"]
        flags += [
            f"--gradaudit-{name}={value}" for name, value in self.defaults.items()
        ]
        return " ".join(map(shlex.quote, flags))

    @property
    def wants_html(self) -> bool:
        """Whether the report file is HTML (by its suffix) rather than JSON."""
        path = self.report_path
        return path is not None and path.suffix.lower() in (".html", ".htm")


@dataclasses.dataclass
class _Check:
    """One call of the `gradcheck` fixture, as the session remembers it.

    `report` is the `Report` when the check ran in this process. A check that ran on
    an xdist worker arrives as data instead: `data` is its `Report.to_dict()`, and
    `pickled` the pickled `Report`, sent only when an HTML report needs the object.
    """

    nodeid: str
    index: int
    seed: int
    ok: bool
    worst: str
    report: Report | None = None
    data: dict[str, Any] | None = None
    pickled: bytes | None = None

    @property
    def label(self) -> str:
        """The test's node id, numbered when the test runs more than one check."""
        return self.nodeid if self.index == 0 else f"{self.nodeid} #{self.index + 1}"

    def report_data(self) -> dict[str, Any]:
        """The report as `Report.to_dict()` gives it."""
        if self.report is not None:
            return self.report.to_dict()
        if self.data is None:
            raise RuntimeError(
                f"The report of {self.label} did not reach this process."
            )
        return self.data

    def report_object(self) -> Report:
        """The `Report` itself, unpickled if it came from a worker."""
        if self.report is not None:
            return self.report
        if self.pickled is None:
            raise RuntimeError(
                f"The report of {self.label} did not reach this process."
            )
        report: Report = pickle.loads(self.pickled)
        return report

    def to_payload(self, settings: _Settings) -> dict[str, Any]:
        """What a worker sends to the controller: only what its settings will use."""
        payload: dict[str, Any] = {
            "nodeid": self.nodeid,
            "index": self.index,
            "seed": self.seed,
            "ok": self.ok,
            "worst": self.worst,
        }
        if settings.report_path is not None:
            payload["report"] = self.report_data()
        if settings.wants_html:
            # Only this session's own workers send it, and only the controller that
            # started them reads it back.
            payload["pickled"] = base64.b64encode(
                pickle.dumps(self.report_object())
            ).decode("ascii")
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> _Check:
        """The check a worker described with `to_payload`."""
        pickled = payload.get("pickled")
        return cls(
            payload["nodeid"],
            payload["index"],
            payload["seed"],
            payload["ok"],
            payload["worst"],
            data=payload.get("report"),
            pickled=base64.b64decode(pickled) if pickled is not None else None,
        )


@dataclasses.dataclass
class _State:
    """Everything the plugin remembers about one session."""

    settings: _Settings
    checks: list[_Check] = dataclasses.field(default_factory=list)


_STATE = pytest.StashKey[_State]()
_ITEM_CHECKS = pytest.StashKey[list[_Check]]()
# How many of an item's checks earlier test reports (setup, call) already carry.
_ITEM_REPORTED = pytest.StashKey[int]()


def derive_seed(session_seed: int, nodeid: str) -> int:
    """The seed of one test: the CRC-32 of `"<session seed>:<node id>"`.

    Different tests get different seeds, so that across a suite checks probe
    different random coordinates and directions, and the same session seed always
    gives a test the same seed, so that a failure can be replayed. CRC-32 is used
    because Python's `hash` of a string changes from one process to the next.
    """
    return zlib.crc32(f"{session_seed}:{nodeid}".encode())


def _is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (xdist documents `workerinput`)."""
    return hasattr(config, "workerinput")


# -- hooks --------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the `--gradaudit-*` flags and their ini keys."""
    group = parser.getgroup("gradaudit", "gradaudit gradient checks")
    for option in OPTIONS:
        group.addoption(
            option.flag,
            dest=option.key,
            type=option.parse,
            metavar=option.metavar,
            default=None,
            help=f"{option.help} Ini key: {option.key}.",
        )
        parser.addini(
            option.key, f"As {option.flag}, set in the ini file; the flag wins."
        )
    group.addoption(
        "--gradaudit-report",
        dest="gradaudit_report",
        metavar="PATH",
        default=None,
        help="Write every check of the session to PATH: JSON, or HTML when PATH"
        " ends in .html.",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, read the settings, and set up this session's state."""
    config.addinivalue_line("markers", MARKER_HELP)
    state = _State(_read_settings(config))
    config.stash[_STATE] = state
    if not _is_worker(config):
        config.pluginmanager.register(_Controller(state), "gradaudit-controller")


def _read_settings(config: pytest.Config) -> _Settings:
    """Merge the command line over the ini file, and validate the ini values."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = config.getoption(option.key)
        if value is None:
            text = config.getini(option.key)
            if text:
                try:
                    value = option.parse(str(text).strip())
                except argparse.ArgumentTypeError as error:
                    raise pytest.UsageError(
                        INI_VALUE_MSG.format(name=option.key, problem=error)
                    ) from None
        if value is not None:
            values[option.name] = value

    report_path = None
    given = config.getoption("gradaudit_report")
    if given:
        report_path = Path(config.invocation_params.dir, given)
        _prepare_report_path(report_path)
    return _Settings(values.pop("seed", 0), values, report_path)


def _prepare_report_path(path: Path) -> None:
    """Make the report file's directory, and refuse a path it cannot be written to.

    This runs when the session starts, so that a mistyped path stops the session
    before its tests rather than losing their results at the end.

    Raises:
        pytest.UsageError: the path is a directory, its directory cannot be made,
            or the file or its directory is not writable.
    """
    if path.is_dir():
        raise pytest.UsageError(REPORT_DIRECTORY_MSG.format(path=path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = _blocking_file(path) or _reason(error)
        raise pytest.UsageError(
            REPORT_PARENT_MSG.format(path=path, reason=reason)
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        what = "the file"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        what = f"its directory {path.parent}"
    else:
        return
    raise pytest.UsageError(REPORT_UNWRITABLE_MSG.format(path=path, what=what))


def _blocking_file(path: Path) -> str | None:
    """Which part of `path`'s directory is a file, in words, or None if none is.

    `mkdir` reports such a file as "File exists" or "Not a directory", which does
    not say which part of the path is at fault.
    """
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir():
        return None
    return f"{existing} is a file, not a directory"


def _reason(error: OSError) -> str:
    """What went wrong, as the system words it: "Not a directory", say."""
    return error.strerror or str(error)


def pytest_report_header(config: pytest.Config) -> str:
    """One header line with the session seed, so that any run can be replayed."""
    settings = config.stash[_STATE].settings
    seed = settings.seed
    line = f"gradaudit: seed={seed} (replay with --gradaudit-seed={seed})"
    if settings.defaults:
        given = ", ".join(
            f"{name}={value}" for name, value in settings.defaults.items()
        )
        line += f"; session options: {given}"
    return line


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach each failing check's table to the report of the phase that ran it.

    On an xdist worker, also attach every new check to the report, for the
    controller to collect.
    """
    report = yield
    settings = item.config.stash[_STATE].settings
    checks = item.stash.get(_ITEM_CHECKS, [])
    done = item.stash.get(_ITEM_REPORTED, 0)
    item.stash[_ITEM_REPORTED] = len(checks)
    for check in checks[done:]:
        if not check.ok:
            report.sections.append(_failure_section(check, settings))
        if _is_worker(item.config):
            report.user_properties.append((PROPERTY, check.to_payload(settings)))
    return report


def _failure_section(check: _Check, settings: _Settings) -> tuple[str, str]:
    """The title and text of the report section that shows a failing check."""
    title = f"gradaudit: per-leaf table of check {check.index + 1} (seed {check.seed})"
    table = check.report_object().table()
    # Quoted for a POSIX shell: a parametrized test's id may hold quotes or `$`.
    replay = (
        f"Replay this check with: pytest {shlex.quote(check.nodeid)}"
        f" {settings.replay_flags}"
    )
    return title, f"{table}\n\n{replay}"


class _Controller:
    """The hooks that only the main process runs: collect, summarise, write."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.written: Path | None = None
        # Why the report file could not be written, for the terminal summary.
        self.write_error: str | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect the checks an xdist worker attached to a test report."""
        # Take the checks off a worker's report before other plugins (junitxml,
        # reportlog) see it: a report's data can run to megabytes.
        kept = []
        for name, value in report.user_properties:
            if name == PROPERTY and isinstance(value, dict):
                self.state.checks.append(_Check.from_payload(value))
            else:
                kept.append((name, value))
        report.user_properties[:] = kept

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the `--gradaudit-report` file, if one was asked for.

        The path was checked when the session started, but the disk can still fill
        up or the directory vanish. Then the summary says so in one line, and a
        session whose tests all passed exits with a usage error rather than 0, since
        the file it was asked for is missing.
        """
        path = self.state.settings.report_path
        if path is None:
            return
        if self.state.settings.wants_html:
            text = _render_html(self.state)
        else:
            text = _render_json(self.state)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            reason = _blocking_file(path) or _reason(error)
            self.write_error = REPORT_WRITE_MSG.format(path=path, reason=reason)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        self.written = path

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter
    ) -> None:
        """List every check with its verdict and worst leaf, if any check ran.

        Then say why the report file could not be written, if it could not.
        """
        checks = self.state.checks
        if not checks and self.write_error is None:
            return
        terminalreporter.section("gradaudit")
        for check in checks:
            verdict = "ok" if check.ok else "MISMATCH"
            terminalreporter.line(
                f"{verdict:<8}  {check.label}  seed {check.seed}  {check.worst}",
                red=not check.ok,
            )
        if checks:
            failed = sum(not check.ok for check in checks)
            line = f"{len(checks)} check(s), {failed} mismatch(es)."
            if self.written is not None:
                line += f" Wrote them to {self.written}."
            terminalreporter.line(line)
        if self.write_error is not None:
            terminalreporter.line(self.write_error, red=True)


def _render_json(state: _State) -> str:
    """The report file's JSON; `docs/pytest-plugin.md` describes its layout."""
    data = {
        "schema_version": FILE_SCHEMA_VERSION,
        "session_seed": state.settings.seed,
        "session_options": state.settings.defaults,
        "checks": [
            {
                "nodeid": check.nodeid,
                "index": check.index,
                "seed": check.seed,
                "ok": check.ok,
                "report": check.report_data(),
            }
            for check in state.checks
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def _render_html(state: _State) -> str:
    """The report file as one HTML page with a section per check."""
    from gradaudit._html import render_html

    reports = {check.label: check.report_object() for check in state.checks}
    title = (
        f"gradaudit: {len(reports)} check(s) from pytest, session seed"
        f" {state.settings.seed}"
    )
    return render_html(reports, title)


# -- the fixture --------------------------------------------------------------------


class GradCheck:
    """`gradaudit.check` with this session's settings, failing the test on a mismatch.

    Call it as `gradcheck(loss, params, *args, grad=..., **options)`, with the
    arguments of `gradaudit.check`. The options that apply are, from weakest to
    strongest: the session's (a flag, or else its ini key), the test's
    `@pytest.mark.gradaudit(...)` markers, and those passed in the call. The seed is
    `seed` unless a marker or the call gives one.

    Attributes:
        seed: this test's seed, derived from the session seed and the node id.
        options: the options every call starts from, seed included.
    """

    def __init__(
        self, item: pytest.Item, state: _State, options: dict[str, Any]
    ) -> None:
        self._item = item
        self._state = state
        self.options = options
        self.seed: int = options["seed"]

    def __call__(
        self,
        loss: Callable[..., Any],
        params: Any,
        *args: Any,
        grad: Callable[..., Any] | None = None,
        **options: Any,
    ) -> Report:
        """Run the check, record it, and raise unless the gradients agree.

        Returns:
            The `Report`, when it is OK.

        Raises:
            GradientMismatchError: (an `AssertionError`) whose message is the
                report's summary; pytest shows the per-leaf table as a section.
            GradauditError: any other error of `gradaudit.check`, such as a
                `StructureMismatchError` or an invalid option, raised from here so
                that the test fails at its own line.
        """
        __tracebackhide__ = True
        import gradaudit

        try:
            report = gradaudit.check(
                loss, params, *args, grad=grad, **{**self.options, **options}
            )
        except gradaudit.GradauditError as error:
            # An input error is about the user's arguments, so gradaudit's own
            # frames (pages of its source in pytest's long tracebacks) would only
            # hide the message; raised afresh here, it points at the test's line.
            # The user's own exception, chained to it, keeps its frames.
            _keep_user_frames(_chained(error))
            error.__traceback__ = None
            raise error
        checks = self._item.stash.setdefault(_ITEM_CHECKS, [])
        check = _Check(
            self._item.nodeid,
            len(checks),
            report.settings.seed,
            report.ok,
            _worst(report),
            report=report,
        )
        checks.append(check)
        self._state.checks.append(check)
        if not report.ok:
            raise gradaudit.GradientMismatchError(report)
        return report


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> GradCheck:
    """Check gradients with `gradaudit.check`, failing the test on a mismatch.

    Returns a `GradCheck`: call it like `gradaudit.check`. See
    `docs/pytest-plugin.md`.
    """
    state = request.config.stash[_STATE]
    item: pytest.Item = request.node
    options = {
        **state.settings.defaults,
        "seed": derive_seed(state.settings.seed, item.nodeid),
        **_marker_options(item),
    }
    return GradCheck(item, state, options)


def _chained(error: BaseException) -> BaseException | None:
    """The exception pytest shows above `error`: its cause, or else its context."""
    if error.__cause__ is not None or error.__suppress_context__:
        return error.__cause__
    return error.__context__


def _keep_user_frames(error: BaseException | None) -> None:
    """Drop gradaudit's and JAX's frames from the traceback of the user's exception.

    gradaudit chains an exception raised in the user's loss or gradient to its own
    error as the cause, and pytest shows that cause with its whole traceback: the
    user's few frames amid pages of gradaudit's and JAX's source. With no frame of
    the user's (a loss called with the wrong number of arguments fails before it
    runs), only the exception itself is left to show.
    """
    if error is None:
        return
    from gradaudit._target import internal_directories

    internal = internal_directories()
    kept = []
    entry = error.__traceback__
    while entry is not None:
        filename = entry.tb_frame.f_code.co_filename
        if not filename.startswith(internal) and not filename.startswith("<frozen "):
            kept.append(entry)
        entry = entry.tb_next
    rebuilt = None
    for entry in reversed(kept):
        rebuilt = types.TracebackType(
            rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno
        )
    error.__traceback__ = rebuilt


def _unknown_options(options: Mapping[str, Any], where: str) -> str | None:
    """Why some of `options` are not options of `gradaudit.check`, or None.

    The message is `gradaudit.Target`'s, with its "did you mean" hint. It is
    returned rather than raised so that the test fails outside an `except`, and
    pytest does not show it twice, as the failure and as the error it happened in.
    """
    from gradaudit import InvalidTypeError
    from gradaudit._target import check_option_names

    try:
        check_option_names(options, where)
    except InvalidTypeError as error:
        return str(error)
    return None


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    """The options of the test's `gradaudit` markers; the closest marker wins."""
    where = f"`@pytest.mark.gradaudit` on {item.nodeid}"
    options: dict[str, Any] = {}
    # `iter_markers` yields the closest first (function, class, module).
    for marker in reversed(list(item.iter_markers(name="gradaudit"))):
        if marker.args:
            pytest.fail(
                MARKER_POSITIONAL_MSG.format(
                    test=item.nodeid, args=", ".join(map(repr, marker.args))
                ),
                pytrace=False,
            )
        unknown = _unknown_options(marker.kwargs, where)
        if unknown is not None:
            pytest.fail(unknown, pytrace=False)
        options.update(marker.kwargs)
    return options


def _worst(report: Report) -> str:
    """One phrase on the leaf closest to (or furthest beyond) its tolerance."""
    leaves = report.failing_leaves or report.leaves
    worst: tuple[float, str, str, str] | None = None
    for leaf in leaves:
        for pair, result in leaf.pairs.items():
            element = result.worst
            if element is None:
                continue
            ratio = _over_tolerance(element.abs_error, element.tolerance)
            if worst is None or ratio > worst[0]:
                verdict = "" if leaf.ok else f" ({leaf.verdict})"
                worst = (ratio, leaf.path, verdict, pair)
    if worst is None:
        if report.failing_leaves:
            leaf = report.failing_leaves[0]
            return f"worst leaf {leaf.path} ({leaf.verdict})"
        return "no element compared"
    ratio, path, verdict, pair = worst
    return f"worst leaf {path}{verdict}: {pair} |diff|/tolerance {ratio:.2g}"


def _over_tolerance(error: float, tolerance: float) -> float:
    """`error / tolerance`, with nan counted as the worst and 0/0 as 0."""
    if math.isnan(error):
        return math.inf
    if tolerance > 0:
        return error / tolerance
    return math.inf if error > 0 else 0.0
