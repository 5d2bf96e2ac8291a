"""The `gradaudit` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

_EPILOG = """\
examples:
  gradaudit demo              run the bundled examples and print their reports
  gradaudit demo --json out.json   also write every report as JSON
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

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
    return parser


def run_demo(json_path: str | None) -> int:
    from ._check import check
    from ._examples import examples

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
        with open(json_path, "w") as handle:
            json.dump(reports, handle, indent=2)
        print(f"Wrote {len(reports)} reports to {json_path}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command == "demo":
        return run_demo(options.json)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
