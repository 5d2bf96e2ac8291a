"""The batch size of finite differences is chosen by measurement, within memory."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import gradaudit
from gradaudit import _batching


def test_candidates_respect_memory_and_the_work_to_do():
    assert _batching.candidates_within(memory_bound=20, directions=10_000) == [1, 4, 16]
    assert _batching.candidates_within(memory_bound=4096, directions=100) == [1, 4]
    assert _batching.candidates_within(memory_bound=4096, directions=7) == []


def test_the_fastest_candidate_is_kept_and_remembered(monkeypatch):
    monkeypatch.setattr(_batching, "_chosen", {})
    calls = []

    def run(batch: int, count: int) -> None:
        calls.append((batch, count))
        time.sleep(0.0 if batch == 16 else 0.02)

    chosen = _batching.measured_batch_size(run, 64, 10_000, 1000, "central", 60.0)
    assert chosen == 16
    # Every candidate ran twice (compile, then timed) on the same slice.
    assert sorted({batch for batch, _ in calls}) == [1, 4, 16, 64]
    assert {count for _, count in calls} == {128}
    calls.clear()
    # A similar problem reuses the answer without measuring; memory still bounds it.
    assert _batching.measured_batch_size(run, 8, 10_000, 1000, "central", 60.0) == 8
    assert calls == []


def test_too_little_work_is_not_measured(monkeypatch):
    monkeypatch.setattr(_batching, "_chosen", {})

    def run(batch: int, count: int) -> None:
        raise AssertionError("measured a check too small to be worth it")

    assert _batching.measured_batch_size(run, 64, 10, 5, "central", 60.0) == 4
    assert _batching.measured_batch_size(run, 2, 10, 5, "central", 60.0) == 2


def test_a_short_run_is_not_worth_measuring(monkeypatch):
    monkeypatch.setattr(_batching, "_chosen", {})

    def run(batch: int, count: int) -> None:
        raise AssertionError("measured a run shorter than the measurement")

    assert _batching.measured_batch_size(run, 64, 10_000, 1000, "central", 1.0) == 4
    assert _batching._chosen == {}


def test_a_check_reports_the_batch_it_measured(monkeypatch, rng):
    monkeypatch.setattr(_batching, "_chosen", {})
    monkeypatch.setattr(_batching, "_MEASURE_FROM_SECONDS", 0.0)
    w = rng.normal(size=(20, 20))

    def loss(w):
        return jnp.sum(jnp.tanh(w) ** 2)

    report = gradaudit.check(loss, w, grad=jax.grad(loss))
    assert report.ok
    assert report.settings.batch_size in (1, 4, 16)
    assert np.isfinite(report.pairs["autodiff-fd"].max_abs_error)
    assert len(_batching._chosen) == 1


def test_a_quick_check_skips_the_measurement(monkeypatch, rng):
    monkeypatch.setattr(_batching, "_chosen", {})
    w = rng.normal(size=(20, 20))

    def loss(w):
        return jnp.sum(jnp.tanh(w) ** 2)

    report = gradaudit.check(loss, w, grad=jax.grad(loss))
    assert report.ok
    assert report.settings.batch_size == 4
    assert _batching._chosen == {}
