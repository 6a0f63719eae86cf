"""Calibrated estimates: two simulated runs of a demo-like job with different items; the first calibrates
the estimate of the second, which is then run and compared."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio, write_image

from batchqwen.calibrate import calibrate, fit_line
from batchqwen.cli import main
from batchqwen.sim import lengths

INSTRUCTIONS = ["", "Answer briefly.", "Describe what you hear and see in two or three warm sentences, please."]


def demo_like_job(folder: Path, *, seed: int, count: int = 20) -> Path:
    """A job like jobs/demo: speech of 1-4 s, some items with a drawing, a few instructions."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rows = []
    for index in range(count):
        audio = folder / f"a{index}.wav"
        write_audio(audio, seconds=round(rng.uniform(1.0, 4.0), 2), rate=16_000, channels=1, seed=seed * 100 + index)
        image = ""
        if index % 3 == 0:
            image = f"p{index}.jpg"
            write_image(folder / image, 320, 240, seed=seed * 100 + index)
        instructions = INSTRUCTIONS[rng.randrange(len(INSTRUCTIONS))]
        rows.append({"id": f"s{seed}-{index}", "audio": audio.name, "image": image, "instructions": instructions})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio", "image", "instructions"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _estimated(text: str) -> tuple[float, tuple[float, float] | None]:
    match = re.search(r"Estimated cost: ([\d,.]+) CNY(?: \(p10-p90 range ([\d,.]+) - ([\d,.]+) CNY)?", text)
    assert match, text
    number = lambda s: float(s.replace(",", ""))  # noqa: E731
    spread = (number(match[2]), number(match[3])) if match[2] else None
    return number(match[1]), spread


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("calibration")
    first, second = demo_like_job(base / "job1", seed=1), demo_like_job(base / "job2", seed=2)
    out1 = base / "out1"
    result = CliRunner().invoke(main, ["run", str(first), "--simulate", "--out", str(out1), "--quiet"])
    assert result.exit_code == 0, result.output
    return second, out1, base


def test_calibration_from_the_first_run_predicts_the_second_within_15_percent(
    two_runs: tuple[Path, Path, Path],
) -> None:
    second, out1, base = two_runs
    out2 = base / "out2"
    fixed = CliRunner().invoke(main, ["estimate", str(second), "--out", str(base / "fixed")])
    assert fixed.exit_code == 0, fixed.output
    calibrated = CliRunner().invoke(main, ["estimate", str(second), "--out", str(out2), "--calibrate-from", str(out1)])
    assert calibrated.exit_code == 0, calibrated.output
    assert "Calibration (answer length learned" in calibrated.output
    assert "qwen3-omni-flash-realtime (text,audio): answer" in calibrated.output

    run = CliRunner().invoke(main, ["run", str(second), "--simulate", "--out", str(out2), "--quiet"])
    assert run.exit_code == 0, run.output
    actual = json.loads((out2 / "summary.json").read_text())["cost"]["CNY"]

    uncalibrated, no_range = _estimated(fixed.output)
    central, spread = _estimated(calibrated.output)
    assert no_range is None
    assert abs(uncalibrated - actual) / actual > 1.0, (uncalibrated, actual)
    assert abs(central - actual) / actual < 0.15, (central, actual)
    assert spread is not None and spread[0] <= actual <= spread[1], (spread, actual)
    assert spread[0] < central < spread[1]

    # the run's report compares the actual cost with the calibrated estimate made in the same folder
    report = CliRunner().invoke(main, ["report", str(out2)])
    assert report.exit_code == 0, report.output
    assert "calibrated estimate" in report.output and f"from {out1}" in report.output


def test_a_history_without_ok_rows_or_results_is_a_usage_error(two_runs: tuple[Path, Path, Path]) -> None:
    second, _, base = two_runs
    empty = base / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["estimate", str(second), "--calibrate-from", str(empty)])
    assert result.exit_code == 2 and "no results.parquet there" in result.output


def test_the_fit_learns_the_simulators_length_model(two_runs: tuple[Path, Path, Path]) -> None:
    _, out1, _ = two_runs
    fit = calibrate([out1]).fits[("qwen3-omni-flash-realtime", "text,audio")]
    assert fit.seconds is not None and fit.rows == 20
    rows = pq.read_table(out1 / "results.parquet").to_pandas()
    predicted = sum(fit.seconds(x) for x in rows["input_audio_seconds"])
    assert abs(predicted - rows["output_audio_seconds"].sum()) / rows["output_audio_seconds"].sum() < 0.1
    assert fit.seconds.slope > 0  # longer questions, longer answers (the simulator's length model)
    # the simulator speaks 60 ms a word; its text is about one token a word and a bit
    assert 10 < fit.text_tokens_per_second < 40
    assert all(len(str(t).split()) >= lengths.BASE_WORDS * 0.4 for t in rows["output_transcript"])


def test_theil_sen_shrugs_off_outliers_and_keeps_its_floor() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 200)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.05, 200)
    y[:10] = 100.0  # a few runaway answers
    line = fit_line(x, y, rng)
    assert 0.45 < line.slope < 0.55 and 0.8 < line.intercept < 1.2
    assert line(0.0) >= line.floor
    flat = fit_line(np.full(5, 2.0), np.array([1.0, 2.0, 3.0, 4.0, 5.0]), rng)
    assert flat.slope == 0.0 and flat.intercept == 3.0
