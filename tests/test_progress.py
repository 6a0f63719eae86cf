"""The run's progress: the spend with its currency, and an ETA no sooner than the RPM limit allows; without
a terminal, a log line every interval even while no item finishes."""

from __future__ import annotations

import logging

import pytest

from batchqwen import runner


def test_the_eta_never_beats_the_rpm_limit_and_the_line_names_the_currency(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    progress = runner.Progress(130, bar=False, interval=30.0, currency="CNY", rpm=60)
    assert progress.eta_text() == "2m10s"  # nothing ran yet: 130 items at 60 a minute
    clock[0] += 10.0
    for _ in range(10):  # 10 items in 10 s: 60 a minute observed, as fast as the limit
        progress.update({"status": "ok", "cost": 0.01, "usage_total_tokens": 100})
    assert progress.eta_seconds() == pytest.approx(120.0)
    clock[0] += 10.0  # then a burst would promise 120 items in a minute: the limit still holds
    for _ in range(30):
        progress.update({"status": "failed"})
    assert progress.eta_seconds() == pytest.approx(90.0)
    line = progress.line()
    assert "40/130 items (ok 10, failed 30" in line and "cost 0.1000 CNY" in line
    assert "ETA 1m30s at most 60 RPM" in line
    progress.rpm = None  # no limit known: the pace so far (40 items in 20 s)
    assert progress.eta_seconds() == pytest.approx(45.0)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_without_a_terminal_a_line_comes_every_interval_even_when_nothing_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    progress = runner.Progress(5, bar=False, interval=30.0, currency="CNY", rpm=100)
    handler = _Lines()  # on the package's logger itself: the CLI turns its propagation off
    logger = logging.getLogger("batchqwen")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for second in range(0, 95, 5):  # the run's wait loop ticks; no item finishes
            clock[0] = float(second)
            progress.tick()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [line for line in handler.lines if line.startswith("progress:")]
    assert len(lines) == 3 and all("cost 0.0000 CNY" in line and "ETA 0m03s" in line for line in lines)
