"""The pytest plugin, driven through real pytest sessions with `pytester`.

Most sessions run in this process, which already holds JAX, gradaudit and chex, so
that they cost no imports; `pytester` drops whatever a session imports afresh once
it ends. Only the sessions that need a process of their own (one that must not
import JAX, and one with xdist workers) run as subprocesses.
"""

from __future__ import annotations

import json
import shlex
import zlib
from pathlib import Path
from typing import Any

import chex  # noqa: F401  (imported here so that in-process sessions reuse it)
import jax.numpy as jnp
import numpy as np
import pytest

import _gradaudit_pytest_plugin as plugin
import gradaudit
from gradaudit import _finite_diff, _plan

pytest_plugins = ["pytester"]

# A small float64 problem shared by the sessions below: the loss, its gradient,
# and a gradient that drops the product rule's second term.
GRADIENTS = """
import jax.numpy as jnp
import numpy as np

W = np.array([0.3, -1.2, 0.7])


def loss(w):
    return jnp.sum(jnp.sin(w) * w)


def right(w):
    return np.sin(w) + w * np.cos(w)


def wrong(w):
    return np.cos(w)
"""

SUBPROCESS_TIMEOUT = 300


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding `gradients.py`, running with warnings as errors."""
    pytester.makepyfile(gradients=GRADIENTS)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def seeds_of(data: dict[str, Any]) -> dict[str, int]:
    return {check["nodeid"]: check["seed"] for check in data["checks"]}


def test_help_lists_every_option_and_ini_key(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "gradaudit gradient checks:",
            "*--gradaudit-rtol=RTOL*",
            "*Relative tolerance of every check*",
            "*--gradaudit-atol=ATOL*",
            "*--gradaudit-method=METHOD*",
            "*Finite-difference stencil: central, forward,*",
            "*--gradaudit-mode=MODE*",
            "*--gradaudit-seed=SEED*",
            "*Session seed (default: 0)*",
            "*--gradaudit-report=PATH*",
            "*Write every check of the session to PATH*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"*gradaudit_{name} (string):*"
            for name in ("rtol", "atol", "method", "mode", "seed")
        ]
    )


def test_header_prints_the_session_seed_and_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["gradaudit: seed=0 (replay with --gradaudit-seed=0)"])

    result = pytester.runpytest("--gradaudit-seed=1234", "--gradaudit-rtol=1e-6")
    result.stdout.fnmatch_lines(
        [
            "gradaudit: seed=1234 (replay with --gradaudit-seed=1234);"
            " session options: rtol=1e-06"
        ]
    )


def test_a_right_gradient_passes_and_returns_the_report(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_right="""
        import gradaudit
        from gradients import W, loss, right

        def test_right(gradcheck):
            report = gradcheck(loss, W, grad=right)
            assert isinstance(report, gradaudit.Report)
            assert report.ok
            assert report.settings.seed == gradcheck.seed
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= gradaudit =*",
            "ok        test_right.py::test_right  seed * worst leaf <root>: *",
            "1 check(s), 0 mismatch(es).",
        ]
    )


def test_a_wrong_gradient_fails_at_the_users_line_with_its_table(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_wrong="""
        from gradients import W, loss, wrong

        def test_wrong(gradcheck):
            gradcheck(loss, W, grad=wrong)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(failed=1)
    seed = plugin.derive_seed(0, "test_wrong.py::test_wrong")
    result.stdout.fnmatch_lines(
        [
            ">       gradcheck(loss, W, grad=wrong)",
            "E       gradaudit._errors.GradientMismatchError: gradaudit: MISMATCH at 1"
            " of 1 leaves.",
            "E         <root>: *",
            f"E       Checked in * seed {seed}.",
            "test_wrong.py:4: GradientMismatchError",
            f"*- gradaudit: per-leaf table of check 1 (seed {seed}) -*",
            "leaf*pair*verdict*compared*bad*unreliable*max abs*max rel",
            "<root>*manual-autodiff*MISMATCH*3*3*",
            "<root>*autodiff-fd*ok*",
            "Replay this check with: pytest test_wrong.py::test_wrong"
            " --gradaudit-seed=0",
            "*= gradaudit =*",
            f"MISMATCH  test_wrong.py::test_wrong  seed {seed}  worst leaf <root>"
            " (manual_wrong): manual-*",
            "1 check(s), 1 mismatch(es).",
        ]
    )
    # The plugin's own frames are hidden: the traceback ends at the user's line.
    result.stdout.no_fnmatch_line("*_gradaudit_pytest_plugin.py*")


def test_the_replay_line_quotes_a_test_id_for_the_shell(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_quoted="""
        import pytest
        from gradients import W, loss, wrong

        @pytest.mark.parametrize("scale", [1.0], ids=["it's $HOME"])
        def test_wrong(gradcheck, scale):
            gradcheck(loss, scale * W, grad=wrong)
        """
    )
    result = suite.runpytest("--gradaudit-rtol=1e-6")
    result.assert_outcomes(failed=1)
    [line] = [
        line for line in result.stdout.lines if line.startswith("Replay this check")
    ]
    assert line == (
        "Replay this check with: pytest 'test_quoted.py::test_wrong[it'\"'\"'s $HOME]'"
        " --gradaudit-seed=0 --gradaudit-rtol=1e-06"
    )
    # A shell splits it back into the node id and the flags, unchanged.
    assert shlex.split(line.partition(": ")[2]) == [
        "pytest",
        "test_quoted.py::test_wrong[it's $HOME]",
        "--gradaudit-seed=0",
        "--gradaudit-rtol=1e-06",
    ]


def test_an_input_error_fails_at_the_users_line_without_gradaudits_frames(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_inputs="""
        import gradaudit
        import pytest
        from gradients import W, loss, right

        def test_wrong_structure(gradcheck):
            gradcheck(loss, W, grad=lambda w: {"w": w})

        @pytest.mark.gradaudit(method="backward")
        def test_invalid_marker_value(gradcheck):
            gradcheck(loss, W, grad=right)

        def broken_loss(w):
            return lookup(w)

        def lookup(w):
            raise KeyError("bias")

        def test_loss_raises(gradcheck):
            gradcheck(broken_loss, W, grad=right)

        def test_the_error_can_still_be_expected(gradcheck):
            with pytest.raises(gradaudit.StructureMismatchError, match="structure"):
                gradcheck(loss, W, grad=lambda w: {"w": w})
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            '>       gradcheck(loss, W, grad=lambda w: {"w": w})',
            "E       gradaudit._errors.StructureMismatchError: The hand-written"
            " gradient `grad(params, *args)` must return a pytree with the"
            " structure of `params`*",
            "test_inputs.py:6: StructureMismatchError",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            ">       gradcheck(loss, W, grad=right)",
            "E       gradaudit._errors.InvalidInputError: `method` must be one of*",
            "test_inputs.py:10: InvalidInputError",
        ]
    )
    # The user's own exception stays visible, with the user's frames only.
    result.stdout.fnmatch_lines(
        [
            ">       return lookup(w)",
            "test_inputs.py:13: ",
            '>       raise KeyError("bias")',
            "E       KeyError: 'bias'",
            "test_inputs.py:16: KeyError",
            "The above exception was the direct cause of the following exception:",
            ">       gradcheck(broken_loss, W, grad=right)",
            "E       gradaudit._errors.SourceFailedError: The loss raised KeyError:*",
            "test_inputs.py:19: SourceFailedError",
        ]
    )
    result.stdout.no_fnmatch_line("*gradaudit/_*.py*")
    result.stdout.no_fnmatch_line("*jax/_src*")


def test_options_merge_session_markers_and_call_in_that_order(
    suite: pytest.Pytester,
) -> None:
    suite.makeini(
        "[pytest]\nfilterwarnings = error\n"
        "gradaudit_method = richardson\ngradaudit_rtol = 1e-2\n"
    )
    suite.makepyfile(
        test_options="""
        import pytest
        from gradients import W, loss, right

        pytestmark = pytest.mark.gradaudit(mode="full")

        def test_session_and_module_options_apply(gradcheck):
            report = gradcheck(loss, W, grad=right)
            assert report.settings.method == "richardson"  # ini file
            assert report.settings.rtol == 1e-6  # command line, over the ini file
            assert report.settings.mode == "full"  # module marker

        @pytest.mark.gradaudit(method="forward", atol=1e-3)
        class TestMarked:
            @pytest.mark.gradaudit(method="fourth_order")
            def test_the_closest_marker_wins(self, gradcheck):
                report = gradcheck(loss, W, grad=right)
                assert report.settings.method == "fourth_order"
                assert report.settings.atol == 1e-3
                assert report.settings.mode == "full"

        @pytest.mark.gradaudit(rtol=1e-4, method="forward")
        def test_the_call_wins(gradcheck):
            assert gradcheck.options["rtol"] == 1e-4
            report = gradcheck(loss, W, grad=right, rtol=1e-3)
            assert report.settings.rtol == 1e-3
            assert report.settings.method == "forward"
        """
    )
    result = suite.runpytest("--strict-markers", "--gradaudit-rtol=1e-6")
    result.assert_outcomes(passed=3)


def test_marker_with_unknown_or_positional_options_errors(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_bad_marker="""
        import pytest

        @pytest.mark.gradaudit(rtoll=1e-6)
        def test_typo(gradcheck):
            pass

        @pytest.mark.gradaudit(1e-6)
        def test_positional(gradcheck):
            pass
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "`@pytest.mark.gradaudit` on test_bad_marker.py::test_typo got unknown"
            " option(s) `rtoll`. Did you mean `rtol` for `rtoll`? The options of"
            " `gradaudit.check` are mode, method, rtol, atol, step, seed, *",
        ]
    )
    # Shown once, not again as the error it was raised while handling.
    result.stdout.no_fnmatch_line("*During handling of the above exception*")
    result.stdout.fnmatch_lines(
        [
            "*`@pytest.mark.gradaudit` takes keyword options only, as in"
            " `@pytest.mark.gradaudit(rtol=1e-6)`;"
            " test_bad_marker.py::test_positional passes positional argument(s)"
            " 1e-06.",
        ]
    )


def test_each_test_gets_its_own_seed_from_the_session_seed(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_seeds="""
        import pytest
        from gradients import W, loss, right

        def test_one(gradcheck):
            gradcheck(loss, W, grad=right)

        def test_two(gradcheck):
            gradcheck(loss, W, grad=right)

        def test_explicit(gradcheck):
            gradcheck(loss, W, grad=right, seed=42)

        @pytest.mark.gradaudit(seed=7)
        def test_marked(gradcheck):
            assert gradcheck.seed == 7
            gradcheck(loss, W, grad=right)
        """
    )
    runs = {}
    for name, session_seed in (("first", 3), ("other", 4)):
        result = suite.runpytest(
            f"--gradaudit-seed={session_seed}", f"--gradaudit-report={name}.json"
        )
        result.assert_outcomes(passed=4)
        runs[name] = seeds_of(read_json(suite.path / f"{name}.json"))

    one, two = "test_seeds.py::test_one", "test_seeds.py::test_two"
    assert runs["first"] == {
        one: zlib.crc32(f"3:{one}".encode()),
        two: zlib.crc32(f"3:{two}".encode()),
        "test_seeds.py::test_explicit": 42,
        "test_seeds.py::test_marked": 7,
    }
    assert runs["first"][one] != runs["first"][two]
    assert runs["other"][one] != runs["first"][one]
    assert runs["other"]["test_seeds.py::test_explicit"] == 42


def test_derived_seeds_follow_the_documented_formula() -> None:
    assert plugin.derive_seed(0, "t.py::test_a") == zlib.crc32(b"0:t.py::test_a")
    assert plugin.derive_seed(0, "t.py::test_a") != plugin.derive_seed(
        1, "t.py::test_a"
    )


def test_json_report_holds_every_check_of_the_session(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_session_report="""
        from gradients import W, loss, right, wrong

        def test_twice(gradcheck):
            gradcheck(loss, W, grad=right)
            gradcheck(loss, 2 * W, grad=right)

        def test_wrong(gradcheck):
            gradcheck(loss, W, grad=wrong)
        """
    )
    result = suite.runpytest(
        "--gradaudit-seed=11",
        "--gradaudit-method=forward",
        "--gradaudit-report=reports/session.json",
    )
    result.assert_outcomes(passed=1, failed=1)
    path = suite.path / "reports" / "session.json"
    result.stdout.fnmatch_lines([f"3 check(s), 1 mismatch(es). Wrote them to {path}."])

    data = read_json(path)
    assert data["schema_version"] == plugin.FILE_SCHEMA_VERSION == 1
    assert data["session_seed"] == 11
    assert data["session_options"] == {"method": "forward"}
    checks = data["checks"]
    assert [(c["nodeid"], c["index"], c["ok"]) for c in checks] == [
        ("test_session_report.py::test_twice", 0, True),
        ("test_session_report.py::test_twice", 1, True),
        ("test_session_report.py::test_wrong", 0, False),
    ]
    for check in checks:
        report = check["report"]
        assert report["schema_version"] == gradaudit.SCHEMA_VERSION
        assert report["ok"] is check["ok"]
        assert report["settings"]["seed"] == check["seed"]
        assert report["settings"]["method"] == "forward"
    assert checks[2]["report"]["leaves"][0]["verdict"] == "manual_wrong"


def test_a_workers_payload_carries_what_the_controller_needs() -> None:
    report = gradaudit.check(
        lambda w: jnp.sum(w**3), np.array([1.0, 2.0]), grad=lambda w: 3 * w**2
    )
    check = plugin._Check("t.py::test_a", 0, 5, report.ok, "worst", report=report)

    bare = check.to_payload(plugin._Settings(0, {}, None))
    assert bare == {
        "nodeid": "t.py::test_a",
        "index": 0,
        "seed": 5,
        "ok": True,
        "worst": "worst",
    }

    received = plugin._Check.from_payload(bare)
    with pytest.raises(RuntimeError, match=r"^The report of t.py::test_a did not"):
        received.report_data()

    # An HTML report needs the `Report` itself on the controller.
    payload = check.to_payload(plugin._Settings(0, {}, Path("out.html")))
    received = plugin._Check.from_payload(json.loads(json.dumps(payload)))
    assert received.report is None
    assert received.report_data() == report.to_dict()
    assert received.report_object().to_dict() == report.to_dict()


def test_html_report_renders_every_check(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_session_html="""
        from gradients import W, loss, right, wrong

        def test_right(gradcheck):
            gradcheck(loss, W, grad=right)

        def test_wrong(gradcheck):
            gradcheck(loss, W, grad=wrong)
        """
    )
    result = suite.runpytest("--gradaudit-report=session.html")
    result.assert_outcomes(passed=1, failed=1)
    text = (suite.path / "session.html").read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "test_session_html.py::test_right" in text
    assert "test_session_html.py::test_wrong" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--gradaudit-rtol=abc"],
            "*argument --gradaudit-rtol: expected a number such as 1e-6, got 'abc'.",
        ),
        (
            ["--gradaudit-atol=-1"],
            "*argument --gradaudit-atol: expected a finite number of at least 0,"
            " got '-1'.",
        ),
        (
            ["--gradaudit-method=backward"],
            "*argument --gradaudit-method: expected one of central, forward,"
            " fourth_order, richardson; got 'backward'.",
        ),
        (
            ["--gradaudit-seed=-5"],
            "*argument --gradaudit-seed: expected a non-negative integer, got '-5'.",
        ),
        (
            ["-o", "gradaudit_mode=everything"],
            "ERROR: The ini option `gradaudit_mode` is invalid: expected one of auto,"
            " full, sampled, directional; got 'everything'.",
        ),
        (
            ["-o", "gradaudit_rtol=nan"],
            "ERROR: The ini option `gradaudit_rtol` is invalid: expected a finite"
            " number of at least 0, got 'nan'.",
        ),
        (
            ["--gradaudit-report=."],
            "ERROR: `--gradaudit-report` names a directory, *; give a file path"
            " ending in .json or .html.",
        ),
    ],
)
def test_bad_option_values_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_report_path_under_a_file_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    (pytester.path / "results").write_text("", encoding="utf-8")

    result = pytester.runpytest("--gradaudit-report=results/report.json")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: `--gradaudit-report` */results/report.json: cannot make its"
            " directory: */results is a file, not a directory. Give a file path in"
            " a directory that exists or can be made."
        ]
    )
    result.stdout.no_fnmatch_line("*passed*")  # it stopped before the tests


def test_a_report_path_gets_its_directory_when_the_session_starts(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_the_directory_is_there():
            assert Path("deep/er").is_dir()
        """
    )

    result = pytester.runpytest("--gradaudit-report=deep/er/report.json")

    result.assert_outcomes(passed=1)


def test_a_report_that_cannot_be_written_is_one_error_line_after_the_summary(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_unwritable="""
        import shutil
        from pathlib import Path

        from gradients import W, loss, right

        def test_right_then_the_directory_goes(gradcheck):
            gradcheck(loss, W, grad=right)
            shutil.rmtree("out")
            Path("out").write_text("")
        """
    )

    result = suite.runpytest("--gradaudit-report=out/report.json")

    result.assert_outcomes(passed=1)
    # The tests passed, but the file asked for is missing.
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*= gradaudit =*",
            "ok        test_unwritable.py::test_right_then_the_directory_goes  *",
            "1 check(s), 0 mismatch(es).",
            "gradaudit: error: could not write the `--gradaudit-report` file"
            " */out/report.json: */out is a file, not a directory. Give a path you"
            " can write to.",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_plugin_choices_match_gradaudits() -> None:
    assert plugin.METHODS == tuple(_finite_diff.METHODS)
    assert plugin.MODES == tuple(_plan.MODES)


def test_chex_variants_with_and_without_jit(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_variants="""
        import chex
        import jax.numpy as jnp
        import pytest
        from gradients import W, loss

        def right(w):
            return jnp.sin(w) + w * jnp.cos(w)

        def wrong(w):
            return jnp.cos(w)

        class GradientTest(chex.TestCase):
            @pytest.fixture(autouse=True)
            def _gradcheck(self, gradcheck):
                self.gradcheck = gradcheck

            @chex.variants(with_jit=True, without_jit=True)
            def test_right(self):
                report = self.gradcheck(self.variant(loss), W, grad=self.variant(right))
                assert report.ok

            @chex.variants(with_jit=True, without_jit=True)
            @pytest.mark.gradaudit(method="fourth_order")
            def test_wrong(self):
                self.gradcheck(self.variant(loss), W, grad=self.variant(wrong))
        """
    )
    result = suite.runpytest("--gradaudit-report=variants.json")
    result.assert_outcomes(passed=2, failed=2)

    checks = read_json(suite.path / "variants.json")["checks"]
    seeds = {check["nodeid"]: check["seed"] for check in checks}
    methods = {
        check["nodeid"]: check["report"]["settings"]["method"] for check in checks
    }
    for variant in ("with_jit", "without_jit"):
        right = f"test_variants.py::GradientTest::test_right__{variant}"
        wrong = f"test_variants.py::GradientTest::test_wrong__{variant}"
        assert seeds[right] == plugin.derive_seed(0, right)
        assert methods[wrong] == "fourth_order"
        result.stdout.fnmatch_lines([f"MISMATCH  {wrong}  seed *"])
    assert len(set(seeds.values())) == 4


def test_loading_the_plugin_imports_no_jax(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_heavy_was_imported(request):
            assert request.config.pluginmanager.has_plugin("gradaudit")
            assert "jax" not in sys.modules
            assert "gradaudit" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess(
        "--gradaudit-seed=9", timeout=SUBPROCESS_TIMEOUT
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gradaudit: seed=9 (replay with --gradaudit-seed=9)"])
    # No check ran, so there is no summary section.
    result.stdout.no_fnmatch_line("*= gradaudit =*")


def test_xdist_workers_send_their_checks_to_the_controller(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_workers="""
        import pytest
        from gradients import W, loss, right, wrong

        @pytest.mark.parametrize("scale", [1.0, 2.0, 3.0])
        def test_right(gradcheck, scale):
            gradcheck(loss, scale * W, grad=right)

        @pytest.fixture
        def checked_in_setup(gradcheck):
            return gradcheck(loss, W, grad=right)

        def test_setup_and_call(checked_in_setup, gradcheck):
            gradcheck(loss, 2 * W, grad=right)

        def test_wrong(gradcheck):
            gradcheck(loss, W, grad=wrong)
        """
    )
    result = suite.runpytest_subprocess(
        "-n",
        "2",
        "--gradaudit-seed=5",
        "--gradaudit-report=workers.json",
        "--junitxml=junit.xml",
        timeout=SUBPROCESS_TIMEOUT,
    )
    result.assert_outcomes(passed=4, failed=1)

    data = read_json(suite.path / "workers.json")
    nodeids = [f"test_workers.py::test_right[{scale}]" for scale in (1.0, 2.0, 3.0)]
    nodeids += ["test_workers.py::test_setup_and_call", "test_workers.py::test_wrong"]
    assert seeds_of(data) == {
        nodeid: plugin.derive_seed(5, nodeid) for nodeid in nodeids
    }
    # A check run while setting up a fixture travels on the setup phase's report.
    assert sorted(
        check["index"]
        for check in data["checks"]
        if check["nodeid"] == "test_workers.py::test_setup_and_call"
    ) == [0, 1]
    assert all(
        check["report"]["settings"]["seed"] == check["seed"] for check in data["checks"]
    )

    # The failing check's table comes from a worker; the summary covers every check.
    result.stdout.fnmatch_lines(
        [
            "*- gradaudit: per-leaf table of check 1 (seed *) -*",
            "<root>*manual-autodiff*MISMATCH*",
        ]
    )
    result.stdout.fnmatch_lines(["*= gradaudit =*"])
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.strip("= ") == "gradaudit")
    summary = lines[start:]
    for nodeid in nodeids:
        assert any(f"  {nodeid}  seed " in line for line in summary), nodeid
    result.stdout.fnmatch_lines(["6 check(s), 1 mismatch(es). Wrote them to *"])

    # The controller takes the checks off the reports before junitxml sees them.
    junit = (suite.path / "junit.xml").read_text(encoding="utf-8")
    assert "<property" not in junit
