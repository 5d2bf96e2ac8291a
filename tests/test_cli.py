"""The command line: declaring checks, `gradaudit check`, its outputs and exit codes.

Most tests call `gradaudit._cli.main` in the test's own process on small files
written to `tmp_path`: a 2x3 dense layer in float64 with a correct and a buggy
hand-written gradient. One test runs the installed console script, for the real
exit status of a real process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit
from gradaudit import _cli
from gradaudit._target import declared_targets

# The shared problem: a dense layer, its loss, and gradients right and wrong.
PROBLEM = """\
import jax.numpy as jnp
import numpy as np

import gradaudit

rng = np.random.default_rng(0)
PARAMS = {"W": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}
X, Y = rng.normal(size=(4, 2)), rng.normal(size=(4, 3))


def loss(params, x, y):
    return 0.5 * jnp.sum((x @ params["W"] + params["b"] - y) ** 2)


def grad(params, x, y):
    residual = x @ params["W"] + params["b"] - y
    return {"W": x.T @ residual, "b": residual.sum(axis=0)}


def buggy_grad(params, x, y):
    residual = x @ params["W"] + params["b"] - y
    return {"W": 2 * x.T @ residual, "b": residual.sum(axis=0)}
"""

CORRECT = PROBLEM + "\ndense = gradaudit.Target(loss, PARAMS, X, Y, grad=grad)\n"

BOTH = (
    CORRECT
    + """

@gradaudit.target(name="dense-buggy")
def buggy():
    return gradaudit.Target(loss, PARAMS, X, Y, grad=buggy_grad)


@gradaudit.target
def never_built():
    raise AssertionError("only built when its check runs")
"""
)

MISMATCH_ONLY = (
    PROBLEM + "\nbuggy = gradaudit.Target(loss, PARAMS, X, Y, grad=buggy_grad)\n"
)


def write(directory: Path, name: str, source: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return str(path)


@dataclasses.dataclass
class Run:
    status: int
    out: str
    err: str

    def final_lines(self) -> list[str]:
        """The closing lines: one per check, each starting with its verdict."""
        return [
            line
            for line in self.out.splitlines()
            if re.match(r"(ok|MISMATCH|ERROR) {2,}", line)
        ]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `gradaudit` in this process and capture what it writes."""

    def run(*argv: str) -> Run:
        status = _cli.main(list(argv))
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


# -- exit status 0 and 1 ----------------------------------------------------------


def test_agreeing_checks_exit_0_with_a_summary_each(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", CORRECT)

    run = cli("check", path)

    assert run.status == 0, run.err
    assert f"== {path}::dense ==" in run.out
    assert "gradaudit: OK on all 2 leaves" in run.out
    [line] = run.final_lines()
    assert line.startswith(f"ok        {path}::dense ")
    assert "worst leaf" in line
    assert re.search(
        r"\n1 check: 1 ok, 0 mismatches, 0 errors, in \d+\.\ds\.\n$", run.out
    )
    assert run.err == ""


def test_a_mismatch_exits_1_and_names_the_worst_failing_leaf(
    cli: Any, tmp_path: Path
) -> None:
    path = write(tmp_path, "checks.py", BOTH.replace("@gradaudit.target\n", ""))

    run = cli("check", path)

    assert run.status == 1, run.err
    assert "gradaudit: MISMATCH at 1 of 2 leaves." in run.out
    ok, mismatch = run.final_lines()
    assert ok.startswith("ok ") and "::dense " in ok
    assert mismatch.startswith(f"MISMATCH  {path}::dense-buggy ")
    assert "worst leaf ['W'] (manual_wrong): manual-" in mismatch
    assert "2 checks: 1 ok, 1 mismatch, 0 errors" in run.out


def test_double_colon_runs_one_check_and_builds_no_other(
    cli: Any, tmp_path: Path
) -> None:
    path = write(tmp_path, "checks.py", BOTH)

    run = cli("check", f"{path}::dense", "-q")

    # `never_built` raises if called and `dense-buggy` would fail: neither ran.
    assert run.status == 0, run.err
    assert [line.split()[1] for line in run.final_lines()] == [f"{path}::dense"]


def test_a_dotted_module_name_is_a_target(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "gradaudit_cli_test_checks"
    package = tmp_path / "gradaudit_cli_models"
    package.mkdir()
    write(package, "__init__.py", "")
    write(package, f"{name}.py", CORRECT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gradaudit_cli_models", raising=False)

    try:
        run = cli("check", f"gradaudit_cli_models.{name}::dense", "-q")
    finally:
        sys.modules.pop(f"gradaudit_cli_models.{name}", None)
        sys.modules.pop("gradaudit_cli_models", None)

    assert run.status == 0, run.err
    assert run.final_lines()[0].split()[1] == f"gradaudit_cli_models.{name}::dense"


def test_an_error_in_one_check_wins_over_a_mismatch_and_the_rest_still_run(
    cli: Any, tmp_path: Path
) -> None:
    broken = "\nbroken = gradaudit.Target(loss, PARAMS, X, Y, mode='exhaustive')\n"
    path = write(tmp_path, "checks.py", MISMATCH_ONLY + broken)

    run = cli("check", path, "-q")

    assert run.status == 2
    assert [line.split()[0] for line in run.final_lines()] == ["MISMATCH", "ERROR"]
    assert "InvalidInputError (see the error above)" in run.out
    assert f"{path}::broken: cannot run this check: `mode` must be one of" in run.err


def test_command_line_options_replace_the_targets_own(cli: Any, tmp_path: Path) -> None:
    own = "\nseeded = gradaudit.Target(loss, PARAMS, X, Y, grad=grad, seed=7)\n"
    path = write(tmp_path, "checks.py", PROBLEM + own)
    out = tmp_path / "out.json"

    assert cli("check", path, "-q", "--json", str(out)).status == 0
    assert json.loads(out.read_text())["checks"][0]["report"]["settings"]["seed"] == 7

    flags = ["--seed", "3", "--method", "forward", "--mode", "sampled"]
    flags += ["--rtol", "1e-6", "--atol", "0"]
    assert cli("check", path, "-q", "--json", str(out), *flags).status == 0
    data = json.loads(out.read_text())
    assert data["options"] == {
        "mode": "sampled",
        "method": "forward",
        "seed": 3,
        "rtol": 1e-6,
        "atol": 0.0,
    }
    settings = data["checks"][0]["report"]["settings"]
    assert (settings["seed"], settings["method"], settings["rtol"]) == (
        3,
        "forward",
        1e-6,
    )
    assert settings["mode"] == "sampled"


# -- output -------------------------------------------------------------------------


def test_json_and_html_files_hold_every_check(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", BOTH.replace("@gradaudit.target\n", ""))
    json_path, html_path = tmp_path / "out" / "run.json", tmp_path / "run.html"

    run = cli("check", path, "--json", str(json_path), "--html", str(html_path))

    assert run.status == 1
    assert f"Wrote 2 checks to {json_path}." in run.out
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["schema_version"] == _cli.FILE_SCHEMA_VERSION == 1
    assert data["exit_status"] == 1
    assert data["options"] == {}
    assert [check["id"] for check in data["checks"]] == [
        f"{path}::dense",
        f"{path}::dense-buggy",
    ]
    first, second = data["checks"]
    assert set(first) == {
        "id",
        "target",
        "name",
        "status",
        "ok",
        "seconds",
        "error",
        "report",
    }
    assert (first["target"], first["name"], first["status"]) == (path, "dense", "ok")
    assert (second["status"], second["ok"], second["error"]) == (
        "mismatch",
        False,
        None,
    )
    assert second["report"]["schema_version"] == gradaudit.SCHEMA_VERSION
    assert [leaf["ok"] for leaf in second["report"]["leaves"]] == [False, True]
    assert first["seconds"] > 0

    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert f'data-name="{path}::dense"' in page
    assert f'data-name="{path}::dense-buggy"' in page
    assert 'data-verdict="mismatch"' in page.lower()
    # Self-contained: no script, and nothing loaded from anywhere else.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)


def test_json_records_an_error_with_its_type(cli: Any, tmp_path: Path) -> None:
    source = PROBLEM + "\nbroken = gradaudit.Target(loss, PARAMS, X, Y, grad=len)\n"
    path = write(tmp_path, "checks.py", source)
    out = tmp_path / "run.json"

    assert cli("check", path, "--json", str(out)).status == 2

    [check] = json.loads(out.read_text())["checks"]
    assert check["status"] == "error"
    assert check["ok"] is None and check["report"] is None
    assert check["error"]["type"] == "SourceFailedError"
    assert "TypeError" in check["error"]["message"]


def test_quiet_prints_only_the_closing_lines(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", CORRECT)

    run = cli("check", path, "-q", "--json", str(tmp_path / "run.json"))

    assert run.status == 0
    assert len(run.out.splitlines()) == 2
    assert run.out.splitlines()[0] == run.final_lines()[0]


def test_verbose_adds_the_per_leaf_table(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", CORRECT)

    run = cli("check", path, "-v")

    assert run.status == 0
    assert re.search(r"^leaf +pair +verdict", run.out, re.MULTILINE)
    assert "\x1b[" not in run.out  # captured output is not a terminal


def test_colour_can_be_forced_and_refused(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", MISMATCH_ONLY)

    coloured = cli("check", path, "--color", "always")
    plain = cli("check", path, "--color", "always", "--no-color")

    assert coloured.status == plain.status == 1
    assert "\x1b[31mMISMATCH\x1b[0m  " in coloured.out
    assert f"\x1b[1m== {path}::buggy ==\x1b[0m" in coloured.out
    assert "\x1b[" not in plain.out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_colour_needs_a_terminal_and_no_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert _cli._use_colour("auto", FakeTerminal())
    assert not _cli._use_colour("auto", io.StringIO())
    assert not _cli._use_colour("never", FakeTerminal())
    assert _cli._use_colour("always", io.StringIO())

    monkeypatch.setenv("NO_COLOR", "1")
    assert not _cli._use_colour("auto", FakeTerminal())
    assert _cli._use_colour("always", FakeTerminal())


def test_progress_line_shows_on_a_terminal_and_is_erased(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "checks.py", CORRECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERM", "xterm")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    assert cli("check", "checks.py", "-q").status == 0

    written = terminal.getvalue()
    assert "\r\x1b[Kgradaudit: [1/1] checks.py::dense  0.0s" in written
    assert written.endswith("\r\x1b[K")


def test_progress_line_is_off_on_a_dumb_terminal(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "checks.py", CORRECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERM", "dumb")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    assert cli("check", "checks.py", "-q").status == 0

    # A dumb terminal would print the escape codes as they are.
    assert terminal.getvalue() == ""


def test_progress_line_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with _cli._Progress(stream, enabled=False).showing("checking"):
        time.sleep(0.01)

    assert stream.getvalue() == ""


def test_help_shows_examples_for_both_commands(cli: Any) -> None:
    top = cli("--help")
    check = cli("check", "--help")

    assert top.status == check.status == 0
    assert "gradaudit check checks.py::dense" in top.out
    assert "gradaudit demo" in top.out
    for text in (
        "@gradaudit.target",
        "gradaudit.Target(loss, params, x, y, grad=dense_grad)",
        "gradaudit check mypkg.gradchecks",
        "--json out.json --html out.html",
        "exit status:",
        "1  at least one check found a mismatch",
    ):
        assert text in check.out


def test_no_command_prints_help_and_exits_2(cli: Any) -> None:
    run = cli()

    assert run.status == 2
    assert "usage: gradaudit" in run.out


# -- exit status 2: targets that cannot be loaded -------------------------------------

BAD_TARGETS = {
    "missing file": ("missing.py", "missing.py: no such file. Pass the path"),
    "directory": ("{dir}/sub/", "sub/: is a directory. Pass a Python file in it"),
    "not a python file": (
        "notes.txt",
        "notes.txt: is a file, but not a Python file: its name does not end in .py.",
    ),
    "path of a non-python file": (
        "{dir}/notes.txt",
        "/notes.txt: is a file, but not a Python file: its name does not end in .py.",
    ),
    "empty file part": (
        "::dense",
        "::dense: the file part before `::` is empty. Write FILE::NAME,",
    ),
    "empty target": ("", "An empty TARGET names no file or module."),
    "neither": ("not a target", "is neither a Python file nor a module name."),
    "missing module": (
        "gradaudit_no_such_module.checks",
        "no module named 'gradaudit_no_such_module' can be imported.",
    ),
    "empty name": ("{checks}::", "nothing follows `::`. Write FILE::NAME"),
    "unknown name": (
        "{checks}::dens",
        "no check named 'dens'. Did you mean 'dense'? The checks it declares are:"
        " dense.",
    ),
    "no checks": ("{empty}", "declares no checks. Bind a `gradaudit.Target("),
}


@pytest.mark.parametrize("case", BAD_TARGETS, ids=list(BAD_TARGETS))
def test_a_target_that_cannot_be_loaded_exits_2_and_says_why(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    write(tmp_path, "notes.txt", "dense = 1\n")
    files = {
        "dir": str(tmp_path),
        "checks": write(tmp_path, "checks.py", "import gradaudit\ndense = 1\n"),
        "empty": write(tmp_path, "empty.py", "import gradaudit\nx = 1\n"),
    }
    if case == "unknown name":
        files["checks"] = write(tmp_path, "checks.py", CORRECT)
    spec, expected = BAD_TARGETS[case]

    run = cli("check", spec.format(**files))

    assert run.status == 2
    assert run.out == ""
    message = " ".join(run.err.split())
    assert message.startswith("gradaudit check: error: ")
    assert expected in message
    assert "Traceback" not in run.err


def test_every_bad_target_is_reported_before_anything_runs(
    cli: Any, tmp_path: Path
) -> None:
    good = write(tmp_path, "checks.py", BOTH)

    run = cli("check", "missing.py", good, "also-missing.py")

    assert run.status == 2
    assert run.err.count("gradaudit check: error: ") == 2
    assert "missing.py: no such file" in run.err
    assert "also-missing.py: no such file" in run.err
    assert run.out == ""


IMPORT_ERRORS = {
    "raises": (
        "import gradaudit\n\nraise RuntimeError('no data here')\n",
        "importing it raised RuntimeError: no data here.",
        'line 3, in <module>\n    raise RuntimeError("no data here")',
    ),
    "syntax": (
        "def broken(:\n    pass\n",
        "importing it raised SyntaxError:",
        "line 1\n    def broken(:\n",
    ),
    "unknown option": (
        "import gradaudit\n\nx = gradaudit.Target(sum, [1.0], mdoe='full')\n",
        "`gradaudit.Target` got unknown option(s) `mdoe`. Did you mean `mode`",
        "x = gradaudit.Target(sum, [1.0], mdoe='full')",
    ),
    "builder with arguments": (
        "import gradaudit\n\n@gradaudit.target\ndef dense(size):\n    pass\n",
        "function 'dense' takes arguments (size), but `gradaudit check` calls it",
        "line 3, in <module>",
    ),
    "same name twice": (
        "import gradaudit\n\ndense = gradaudit.Target(sum, [1.0])\n\n"
        "@gradaudit.target(name='dense')\ndef other():\n    pass\n",
        "Two checks are named 'dense': `dense` and function `other`.",
        "",
    ),
    "exits": (
        "import sys\n\nsys.exit(3)\n",
        "importing it raised SystemExit: 3.",
        "line 3, in <module>",
    ),
}


@pytest.mark.parametrize("case", IMPORT_ERRORS, ids=list(IMPORT_ERRORS))
def test_an_error_importing_a_file_shows_the_users_code_only(
    cli: Any, tmp_path: Path, case: str
) -> None:
    source, message, frame = IMPORT_ERRORS[case]
    path = write(tmp_path, "checks.py", source.replace("'", '"'))

    run = cli("check", path)

    assert run.status == 2
    assert run.out == ""
    assert message.replace("'", '"') in " ".join(run.err.split()).replace("'", '"')
    assert frame.replace("'", '"') in run.err.replace("'", '"')
    # Nothing from gradaudit or the import machinery.
    assert "_cli.py" not in run.err and "importlib" not in run.err
    assert "Traceback (most recent call last)" not in run.err


def test_an_import_error_inside_a_module_is_the_users_not_a_missing_target(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "gradaudit_cli_imports.py", "import gradaudit_no_such_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    try:
        run = cli("check", "gradaudit_cli_imports")
    finally:
        sys.modules.pop("gradaudit_cli_imports", None)

    assert run.status == 2
    assert "importing it raised ModuleNotFoundError: No module named" in run.err
    assert 'gradaudit_cli_imports.py", line 1, in <module>' in run.err


# -- exit status 2: checks that cannot run -------------------------------------------

CHECK_ERRORS = {
    "builder raises": (
        "@gradaudit.target\ndef dense():\n    return {'W': 1} + 1\n",
        "::dense: building the check raised TypeError: unsupported operand",
        "line 9, in dense\n    return {'W': 1} + 1",
    ),
    "builder returns no target": (
        "@gradaudit.target\ndef dense():\n    return 42\n",
        "returned int, not a `gradaudit.Target`; end it with `return",
        "",
    ),
    "invalid option value": (
        "dense = gradaudit.Target(loss, PARAMS, X, Y, method='backward')\n",
        "cannot run this check: `method` must be one of",
        "",
    ),
    "integer params": (
        "dense = gradaudit.Target(loss, {'W': np.ones((2, 3), int), 'b': 1}, X, Y)\n",
        "cannot run this check:",
        "",
    ),
    "gradient of the wrong structure": (
        "dense = gradaudit.Target(loss, PARAMS, X, Y, grad=lambda p, x, y: p['W'])\n",
        "cannot run this check:",
        "",
    ),
    "gradient raises": (
        "def bad(params, x, y):\n    return {'W': params['W'], 'b': params['c']}\n\n"
        "dense = gradaudit.Target(loss, PARAMS, X, Y, grad=bad)\n",
        "cannot run this check: The hand-written gradient `grad` raised KeyError",
        "in bad\n    return {'W': params['W'], 'b': params['c']}",
    ),
}
CHECK_ERROR_TYPES = {
    "builder raises": "TypeError",
    "builder returns no target": "InvalidTypeError",
    "invalid option value": "InvalidInputError",
    "integer params": "InvalidTypeError",
    "gradient of the wrong structure": "StructureMismatchError",
    "gradient raises": "SourceFailedError",
}


@pytest.mark.parametrize("case", CHECK_ERRORS, ids=list(CHECK_ERRORS))
def test_a_check_that_cannot_run_exits_2_naming_it(
    cli: Any, tmp_path: Path, case: str
) -> None:
    declaration, message, frame = CHECK_ERRORS[case]
    header = "import numpy as np\n\nimport gradaudit\n\nfrom problem import *\n\n"
    write(tmp_path, "problem.py", PROBLEM)
    path = write(tmp_path, "checks.py", header + declaration)

    try:
        run = cli("check", path)
    finally:
        sys.modules.pop("problem", None)

    assert run.status == 2
    [line] = run.final_lines()
    assert line.startswith(f"ERROR     {path}::dense ")
    assert f"{CHECK_ERROR_TYPES[case]} (see the error above)" in line
    error = " ".join(run.err.split())
    assert error.startswith(f"gradaudit check: error: {path}::dense: ")
    assert message in error
    assert frame in run.err
    assert "Traceback (most recent call last)" not in run.err
    assert "gradaudit/_" not in run.err


def test_an_unexpected_failure_inside_gradaudit_shows_its_traceback(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "checks.py", CORRECT)

    def broken_run(self: gradaudit.Target, **overrides: Any) -> None:
        raise RuntimeError("internal slip")

    monkeypatch.setattr(gradaudit.Target, "run", broken_run)

    run = cli("check", path)

    assert run.status == 2
    assert "failed with an unexpected RuntimeError while checking" in run.err
    assert "likely a bug in gradaudit" in " ".join(run.err.split())
    assert "Traceback (most recent call last)" in run.err


# -- exit status 2: bad options ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rtol", "-1"], "argument --rtol: expected a finite number at least 0"),
        (["--atol", "nan"], "argument --atol: expected a finite number at least 0"),
        (["--seed", "x"], "argument --seed: expected a non-negative integer, got 'x'"),
        (["--mode", "exhaustive"], "argument --mode: invalid choice: 'exhaustive'"),
        (["--method", "backward"], "argument --method: invalid choice: 'backward'"),
    ],
)
def test_an_invalid_option_exits_2_quoting_it(
    cli: Any, flags: list[str], message: str
) -> None:
    run = cli("check", "checks.py", *flags)

    assert run.status == 2
    assert message in run.err


OUTPUT_PATHS = {
    "directory": ("{dir}", "{dir}: is a directory; pass the path of a file."),
    "under a file": (
        "{dir}/taken/new/out.html",
        "{dir}/taken/new/out.html: {dir}/taken is a file, not a directory, so the"
        " file cannot be written there; pass a path in a directory.",
    ),
}


@pytest.mark.parametrize("case", OUTPUT_PATHS, ids=list(OUTPUT_PATHS))
def test_an_unusable_output_path_exits_2_before_running(
    cli: Any, tmp_path: Path, case: str
) -> None:
    path = write(tmp_path, "checks.py", "raise AssertionError('not imported')\n")
    write(tmp_path, "taken", "")
    output, message = (text.format(dir=tmp_path) for text in OUTPUT_PATHS[case])

    run = cli("check", path, "--html", output)

    assert run.status == 2
    assert run.out == ""
    assert " ".join(run.err.split()) == f"gradaudit check: error: --html {message}"


def test_demo_writes_json_in_a_new_directory(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradaudit import _examples

    # One example is enough to show where the file goes, and much quicker.
    every = _examples.examples
    monkeypatch.setattr(_examples, "examples", lambda: every()[:1])
    path = tmp_path / "new" / "demo.json"

    run = cli("demo", "--json", str(path))

    assert run.status == 0, run.err
    assert list(json.loads(path.read_text(encoding="utf-8"))) == ["classic"]
    assert f"Wrote 1 reports to {path}." in run.out


def test_demo_refuses_an_unusable_json_path_before_running(
    cli: Any, tmp_path: Path
) -> None:
    write(tmp_path, "taken", "")
    path = tmp_path / "taken" / "demo.json"

    run = cli("demo", "--json", str(path))

    assert run.status == 2
    assert run.out == ""  # no example ran
    assert " ".join(run.err.split()) == (
        f"gradaudit demo: error: --json {path}: {tmp_path / 'taken'} is a file, not"
        " a directory, so the file cannot be written there; pass a path in a"
        " directory."
    )


# -- the installed command ------------------------------------------------------------


def test_the_installed_command_exits_1_on_a_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, "checks.py", MISMATCH_ONLY)
    script = Path(sys.executable).parent / "gradaudit"
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "gradaudit._cli"]
    )

    completed = subprocess.run(
        [*command, "check", path, "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 1, completed.stderr
    assert completed.stdout.startswith(f"MISMATCH  {path}::buggy ")
    assert "\x1b[" not in completed.stdout


# -- declaring checks ------------------------------------------------------------------


def _cube(w: Any) -> Any:
    return jnp.sum(w**3)


def test_target_holds_the_arguments_of_check_and_runs_them() -> None:
    w = np.array([1.0, 2.0])
    cube = gradaudit.Target(_cube, w, grad=lambda w: 3 * w**2, seed=5)

    report = cube.run(mode="full")

    assert report.ok
    assert (report.settings.seed, report.settings.mode) == (5, "full")
    assert cube.run(seed=9).settings.seed == 9
    assert dict(cube.options) == {"seed": 5}
    assert cube.args == () and cube.params is w
    assert repr(cube).startswith("Target(loss=_cube, args=0, grad=")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cube.seed = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cube.options["seed"] = 1  # type: ignore[index]


def test_target_refuses_unknown_options_and_non_callables() -> None:
    w = np.array([1.0])

    with pytest.raises(gradaudit.InvalidTypeError, match=r"Did you mean `seed`"):
        gradaudit.Target(_cube, w, sead=1)
    with pytest.raises(gradaudit.InvalidTypeError, match=r"`Target.run` got unknown"):
        gradaudit.Target(_cube, w).run(bogus=1)
    with pytest.raises(gradaudit.InvalidTypeError, match=r"needs the loss function"):
        gradaudit.Target(w, _cube)  # type: ignore[arg-type]
    with pytest.raises(gradaudit.InvalidTypeError, match=r"`grad` must be"):
        gradaudit.Target(_cube, w, grad=np.ones(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gradaudit.Target(_cube, w, grad=_cube, options={})


def test_the_decorator_marks_and_returns_the_function() -> None:
    def build() -> gradaudit.Target:
        return gradaudit.Target(_cube, np.array([1.0]))

    assert gradaudit.target(build) is build
    assert gradaudit.target(name="cube")(build) is build
    assert isinstance(build(), gradaudit.Target)

    with pytest.raises(gradaudit.InvalidInputError, match=r"name of letters, digits"):
        gradaudit.target(name="a::b")(build)
    with pytest.raises(gradaudit.InvalidInputError, match=r"got '<lambda>'"):
        gradaudit.target(lambda: None)
    with pytest.raises(gradaudit.InvalidTypeError, match=r"marks a function, got int"):
        gradaudit.target(3)  # type: ignore[type-var]


def test_declared_targets_are_found_in_order_each_once() -> None:
    first = gradaudit.Target(_cube, np.array([1.0]))

    @gradaudit.target(name="second")
    def build() -> gradaudit.Target:
        return first

    namespace = {
        "np": np,
        "first": first,
        "alias": first,
        "_private": gradaudit.Target(_cube, np.array([2.0])),
        "build": build,
        "Target": gradaudit.Target,
        "target": gradaudit.target,
    }

    found = declared_targets(namespace)

    assert [(item.name, item.source) for item in found] == [
        ("first", "`first`"),
        ("second", "function `build`"),
    ]
    assert [item.build() for item in found] == [first, first]


def test_the_demo_command_is_still_there(cli: Any) -> None:
    run = cli("demo", "--help")

    assert run.status == 0
    assert "usage: gradaudit demo [-h] [--json PATH]" in run.out
