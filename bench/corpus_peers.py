"""Compare gradaudit with other gradient checkers on the corpus of hand-written grads.

Every checker looks at the same cases of `tests/corpus`, with the same inputs
(`make_inputs(numpy.random.default_rng(0), dtype)`), in float64 under x64 and in
float32 in JAX's default setting, as the corpus tests run them. The checkers:

- `gradaudit`: `gradaudit.check` with its defaults.
- `check_grads`: `jax.test_util.check_grads(order=1, modes=["rev"])` with its
  default `eps` and tolerances, on the loss wrapped in a `jax.custom_vjp` whose
  backward calls the hand-written gradient through `jax.pure_callback`.
- `gradcheck`, `gradcheck_fast`: `torch.autograd.gradcheck` with its default
  `eps`, `atol` and `rtol`, `fast_mode` off and on, on a `torch.autograd.Function`
  whose forward evaluates the loss and whose backward returns the hand-written
  gradient, with every leaf of `params` flattened into one tensor.

For each checker and dtype it prints how many buggy cases were flagged (exactly
on their buggy leaves, for a checker that names leaves, and at all), how many
correct and hard cases were flagged (false alarms), gradaudit's diagnosis
accuracy, the cases a checker could not run (with the reasons), and the mean
seconds per check. Run it from the repository root after
`pip install -e '.[bench]'`:

    python bench/corpus_peers.py                      # everything: 5 minutes on 2 cores
    python bench/corpus_peers.py --limit 10 --dtype float64 --checker gradaudit
    python bench/corpus_peers.py --markdown --details # tables for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

# The corpus of cases is a package under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from corpus import CASES, Case  # noqa: E402
from corpus._grading import diagnosis_is_right, is_covered  # noqa: E402

import gradaudit  # noqa: E402

DTYPES = {"float64": np.float64, "float32": np.float32}
CHECKERS = ("gradaudit", "check_grads", "gradcheck", "gradcheck_fast")
# Checkers that say which leaves are wrong; the others only say "wrong somewhere".
NAMES_LEAVES = frozenset({"gradaudit"})


@dataclasses.dataclass
class Outcome:
    """What one checker said about one case in one dtype."""

    flagged: bool | None  # None: the checker could not run the case
    seconds: float
    leaves: frozenset[str] | None = None  # the leaves named wrong, if it names any
    diagnoses_right: int = 0  # buggy leaves whose diagnosis matches the label
    reason: str = ""  # why it could not run
    warnings: tuple[str, ...] = ()
    summary: str = ""  # a line for the --details listing


@dataclasses.dataclass
class Tally:
    """Counts over the cases of one checker and dtype."""

    buggy: int = 0
    exact: int = 0
    flagged: int = 0
    correct: int = 0
    correct_alarms: int = 0
    hard: int = 0
    hard_alarms: int = 0
    diagnosed: int = 0
    diagnoses_right: int = 0
    covered: int = 0
    covered_right: int = 0
    could_not_run: int = 0
    checks: int = 0
    seconds: float = 0.0
    reasons: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    warnings: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    misses: list[str] = dataclasses.field(default_factory=list)
    alarms: list[str] = dataclasses.field(default_factory=list)

    def add(self, case: Case, outcome: Outcome, names_leaves: bool) -> None:
        self.warnings.update(outcome.warnings)
        if outcome.flagged is None:
            self.could_not_run += 1
            self.reasons[outcome.reason] += 1
            return
        self.checks += 1
        self.seconds += outcome.seconds
        if case.kind != "buggy":
            if case.kind == "correct":
                self.correct += 1
                self.correct_alarms += outcome.flagged
            else:
                self.hard += 1
                self.hard_alarms += outcome.flagged
            if outcome.flagged:
                self.alarms.append(f"{case.name}: {outcome.summary}")
            return

        self.buggy += 1
        self.flagged += outcome.flagged
        exact = outcome.leaves == case.buggy_leaves
        self.exact += exact
        if not (exact if names_leaves else outcome.flagged):
            self.misses.append(f"{case.name}: {outcome.summary}")
        if names_leaves:
            self.diagnosed += len(case.buggy_leaves)
            self.diagnoses_right += outcome.diagnoses_right
            if is_covered(case):
                self.covered += len(case.buggy_leaves)
                self.covered_right += outcome.diagnoses_right


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:90]}"


# gradaudit, as a user would call it.


def run_gradaudit(case: Case, params, args) -> Outcome:
    start = time.perf_counter()
    report = gradaudit.check(case.loss, params, *args, grad=case.grad)
    seconds = time.perf_counter() - start

    failing = report.failing_leaves
    right = 0
    for path in case.buggy_leaves:
        diagnosis = report.leaf(path).diagnosis
        if diagnosis is not None:
            right += diagnosis_is_right(case, diagnosis.kind, diagnosis.detail)
    summary = "; ".join(
        f"{leaf.path} {leaf.verdict}"
        + (f" ({leaf.diagnosis.kind})" if leaf.diagnosis else "")
        for leaf in failing
    )
    return Outcome(
        flagged=not report.ok,
        seconds=seconds,
        leaves=frozenset(leaf.path for leaf in failing),
        diagnoses_right=right,
        summary=summary or "passed",
    )


# jax.test_util.check_grads checks JAX's own derivative of a function, so the
# hand-written gradient has to become that derivative: a custom_vjp whose backward
# calls the numpy code on the host through pure_callback.


def _hand_written_as_jax(case: Case, args, x64: bool) -> Callable:
    def call_grad(params):
        # The callback may run on a thread of the runtime, where the x64 setting
        # of the caller need not hold; hand-written grads in jax.numpy need it.
        with jax.enable_x64(x64):
            host = jax.tree.map(np.array, params)
            grads = case.grad(host, *args)
            leaves = jax.tree.leaves(grads)
            return [
                np.asarray(g, dtype=p.dtype)
                for g, p in zip(leaves, jax.tree.leaves(host), strict=True)
            ]

    @jax.custom_vjp
    def loss(params):
        return case.loss(params, *args)

    def forward(params):
        return loss(params), params

    def backward(params, cotangent):
        leaves, treedef = jax.tree.flatten(params)
        shapes = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in leaves]
        grads = jax.pure_callback(call_grad, shapes, params, vmap_method="sequential")
        return (jax.tree.unflatten(treedef, [cotangent * g for g in grads]),)

    loss.defvjp(forward, backward)
    return loss


def run_check_grads(case: Case, params, args) -> Outcome:
    from jax.test_util import check_grads

    x64 = bool(jax.config.jax_enable_x64)
    start = time.perf_counter()
    loss = _hand_written_as_jax(case, args, x64)
    try:
        check_grads(loss, (params,), order=1, modes=["rev"])
        flagged, summary = False, "passed"
    except AssertionError as error:
        flagged, summary = True, _first_line(error)
    return Outcome(
        flagged=flagged, seconds=time.perf_counter() - start, summary=summary
    )


# torch.autograd.gradcheck needs one function of tensors: every leaf of params
# goes into one flat tensor, which the Function splits again on each call. The
# loss is jitted: gradcheck evaluates it twice per element, and eager JAX dispatch
# would otherwise dominate the time (80 seconds for the LSTM case).


@dataclasses.dataclass(frozen=True)
class _Problem:
    case: Case
    loss: Callable
    args: tuple
    treedef: object
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype

    def params(self, flat) -> object:
        values = flat.detach().numpy().copy()
        leaves, offset = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            leaves.append(values[offset : offset + size].reshape(shape))
            offset += size
        return jax.tree.unflatten(self.treedef, leaves)


def _torch_function():
    import torch

    class HandWritten(torch.autograd.Function):
        @staticmethod
        def forward(ctx, flat, problem):
            ctx.problem = problem
            ctx.save_for_backward(flat)
            value = problem.loss(problem.params(flat))
            return torch.from_numpy(np.array(value, dtype=problem.dtype))

        @staticmethod
        def backward(ctx, cotangent):
            (flat,) = ctx.saved_tensors
            problem = ctx.problem
            grads = problem.case.grad(problem.params(flat), *problem.args)
            pieces = [
                np.asarray(g, dtype=problem.dtype).reshape(-1)
                for g in jax.tree.leaves(grads)
            ]
            return cotangent * torch.from_numpy(np.concatenate(pieces)), None

    return HandWritten


def run_gradcheck(case: Case, params, args, fast_mode: bool) -> Outcome:
    import torch
    from torch.autograd.gradcheck import GradcheckError, gradcheck

    leaves, treedef = jax.tree.flatten(params)
    dtype = np.dtype(leaves[0].dtype)
    shapes = tuple(np.shape(leaf) for leaf in leaves)
    # The data stays a constant of the jitted loss, as it is for the other checkers.
    loss = jax.jit(lambda p: case.loss(p, *args))
    problem = _Problem(case, loss, tuple(args), treedef, shapes, dtype)
    flat = torch.from_numpy(np.concatenate([np.ravel(leaf) for leaf in leaves]))
    flat.requires_grad_(True)
    function = _torch_function()

    # fast_mode draws its random vectors from torch's global generator.
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        passed = gradcheck(
            lambda x: function.apply(x, problem),
            (flat,),
            fast_mode=fast_mode,
            raise_exception=True,
        )
        flagged, summary = not passed, "passed" if passed else "returned False"
    except GradcheckError as error:
        flagged, summary = True, _first_line(error)
    return Outcome(
        flagged=flagged, seconds=time.perf_counter() - start, summary=summary
    )


RUNNERS: dict[str, Callable[..., Outcome]] = {
    "gradaudit": run_gradaudit,
    "check_grads": run_check_grads,
    "gradcheck": lambda case, params, args: run_gradcheck(case, params, args, False),
    "gradcheck_fast": lambda case, params, args: run_gradcheck(
        case, params, args, True
    ),
}


def run_one(checker: str, case: Case, dtype) -> Outcome:
    """Runs one checker on one case, keeping any failure to run as an outcome."""
    params, args = case.make_inputs(np.random.default_rng(0), dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Same setting as the corpus tests: x64 for float64, JAX's default else.
        with jax.enable_x64(dtype is np.float64):
            try:
                outcome = RUNNERS[checker](case, params, args)
            except Exception as error:  # tallied as "could not run"
                outcome = Outcome(flagged=None, seconds=0.0, reason=_first_line(error))
    # The first sentence of each warning is enough to tally them.
    outcome.warnings = tuple(
        f"{w.category.__name__}: {str(w.message).split('. ')[0][:120]}" for w in caught
    )
    return outcome


# Output.


def _rate(part: int, whole: int) -> str:
    if whole == 0:
        return "-"
    return f"{part}/{whole} ({part / whole:.0%})"


COLUMNS = (
    "checker",
    "caught (exact leaves)",
    "flagged (buggy)",
    "false alarms (correct)",
    "false alarms (hard)",
    "diagnosis right",
    "diagnosis right (covered)",
    "could not run",
    "s/check",
)


def _row(checker: str, tally: Tally) -> list[str]:
    names = checker in NAMES_LEAVES
    return [
        checker,
        _rate(tally.exact, tally.buggy) if names else "-",
        _rate(tally.flagged, tally.buggy),
        _rate(tally.correct_alarms, tally.correct),
        _rate(tally.hard_alarms, tally.hard),
        _rate(tally.diagnoses_right, tally.diagnosed) if names else "-",
        _rate(tally.covered_right, tally.covered) if names else "-",
        str(tally.could_not_run),
        f"{tally.seconds / tally.checks:.2f}" if tally.checks else "-",
    ]


def _table(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |"]
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [
        max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))
    ]
    lines = []
    for row in [list(COLUMNS), *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _listing(title: str, entries: list[str], most: int = 8) -> list[str]:
    """One line per entry, or one line for all when there are many."""
    if len(entries) <= most:
        return [f"- {title}: `{entry}`" for entry in entries]
    names = ", ".join(entry.split(":")[0] for entry in entries[1:most])
    rest = len(entries) - most
    return [
        f"- {title}, {len(entries)} cases, e.g. `{entries[0]}`;"
        f" also {names} and {rest} more"
    ]


def _notes(name: str, tallies: dict[str, Tally], details: bool) -> list[str]:
    lines = []
    for checker, tally in tallies.items():
        for reason, count in tally.reasons.most_common():
            lines.append(f"- {checker}, could not run ({count}): {reason}")
        for message, count in tally.warnings.most_common(3):
            lines.append(f"- {checker}, warned in {count} checks: {message}")
        if not details:
            continue
        missed = "exactly on the buggy leaves" if checker in NAMES_LEAVES else "at all"
        lines += _listing(f"{checker}, not flagged {missed}", tally.misses)
        lines += _listing(f"{checker}, false alarm", tally.alarms)
    if lines:
        lines[:0] = [f"Notes ({name}):", ""]
    return lines


def _environment() -> str:
    import jaxlib

    versions = [
        f"Python {platform.python_version()}",
        f"gradaudit {gradaudit.__version__}",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
        f"numpy {np.__version__}",
    ]
    try:
        import torch

        versions.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0]}"
    return f"{when}; {machine}; " + ", ".join(versions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    parser.add_argument("--limit", type=int, default=None, help="first N cases only")
    parser.add_argument(
        "--match", default="", help="only the cases whose name contains this text"
    )
    parser.add_argument(
        "--checker", nargs="+", choices=CHECKERS, default=list(CHECKERS)
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    parser.add_argument(
        "--details", action="store_true", help="list every miss and false alarm"
    )
    parser.add_argument(
        "--progress", action="store_true", help="print each case to stderr"
    )
    options = parser.parse_args()

    names = list(DTYPES) if options.dtype == "both" else [options.dtype]
    cases = [case for case in CASES if options.match in case.name][: options.limit]
    print(_environment())
    for name in names:
        dtype = DTYPES[name]
        tallies = {checker: Tally() for checker in options.checker}
        for checker in options.checker:
            for case in cases:
                outcome = run_one(checker, case, dtype)
                tallies[checker].add(case, outcome, checker in NAMES_LEAVES)
                if options.progress:
                    state = {None: "could not run", True: "flagged", False: "passed"}
                    print(
                        f"{name} {checker} {case.name}: {state[outcome.flagged]}"
                        f" {outcome.seconds:.2f}s",
                        file=sys.stderr,
                        flush=True,
                    )

        rows = [_row(checker, tally) for checker, tally in tallies.items()]
        print()
        print(f"{name}: {len(cases)} cases" + (":" if options.markdown else ""))
        print()
        print(_table(rows, options.markdown))
        notes = _notes(name, tallies, options.details)
        if notes:
            print()
            print("\n".join(notes))


if __name__ == "__main__":
    main()
