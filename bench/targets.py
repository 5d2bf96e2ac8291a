"""Measure the verdict's promises over many random MLPs with numpy backprop.

For each model and dtype it checks the correct backprop (any failure is a false
alarm) and the backprop with one non-negligible element wrong by a relative 1e-6
(float64) or 1e-3 (float32) (anything but exactly that leaf failing is a miss).

    python bench/targets.py --models 100

Prints one row per dtype: false alarms, detections, and seconds per check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from random_mlp import random_mlp, with_one_wrong_element  # noqa: E402

import gradaudit  # noqa: E402

CASES = {"float64": 1e-6, "float32": 1e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    rng = np.random.default_rng(options.seed)
    rows = {name: {"alarms": 0, "caught": 0, "n": 0, "seconds": 0.0} for name in CASES}
    for _ in range(options.models):
        mlp = random_mlp(rng)
        batch = int(rng.integers(1, 9))
        for name, relative in CASES.items():
            params, x, target = mlp.point(rng, batch, np.dtype(name))
            start = time.perf_counter()
            correct = gradaudit.check(mlp.loss, params, x, target, grad=mlp.grad)
            wrong, path, _ = with_one_wrong_element(
                mlp, params, x, target, rng, relative
            )
            buggy = gradaudit.check(mlp.loss, params, x, target, grad=wrong)
            row = rows[name]
            row["seconds"] += time.perf_counter() - start
            row["n"] += 1
            row["alarms"] += not correct.ok
            row["caught"] += [leaf.path for leaf in buggy.failing_leaves] == [path]

    print(
        f"{'dtype':8} {'models':>6} {'false alarms':>13} {'caught':>12} {'s/check':>8}"
    )
    for name, row in rows.items():
        n = row["n"]
        print(
            f"{name:8} {n:6d} {row['alarms']:6d} ({row['alarms'] / n:4.0%})"
            f" {row['caught']:5d} ({row['caught'] / n:4.0%})"
            f" {row['seconds'] / (2 * n):8.2f}"
        )


if __name__ == "__main__":
    main()
