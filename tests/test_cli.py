"""The command line end to end: CliRunner in-process and a real subprocess, against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import (
    write_audio,
    write_cmyk_jpeg,
    write_image,
    write_text,
    write_truncated,
)

from batchqwen.cli import main
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

KEY = "sk-test-cli-0123456789abcdef"


def _read_results(out: Path) -> dict[str, dict[str, object]]:
    table = pq.read_table(out / "results.parquet")
    return {row["id"]: row for row in table.to_pylist()}


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def good_job(tmp_path: Path) -> Path:
    job = tmp_path / "job"
    job.mkdir()
    write_audio(job / "hello.wav", seconds=1.5, rate=16_000, channels=1)
    write_audio(job / "stereo.mp3", seconds=2.0, seed=3)
    write_image(job / "cat.png", 200, 150)
    (job / "manifest.csv").write_text(
        "id,audio,image,prompt,team\n"
        "one,hello.wav,,,red\n"
        "two,stereo.mp3,cat.png,What do you see?,blue\n"
        ",,cat.png,Describe the picture,green\n",
        encoding="utf-8",
    )
    return job


def test_run_without_key_or_simulate_is_a_usage_error(good_job: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(good_job / "manifest.csv")], env={"DASHSCOPE_API_KEY": ""})
    assert result.exit_code == 2
    for hint in ("DASHSCOPE_API_KEY", "--simulate", "--dry-run"):
        assert hint in result.output
    assert "Traceback" not in result.output


def test_run_simulated_writes_results_and_wavs(good_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(good_job / "manifest.csv"), "--simulate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read_results(out)
    assert len(rows) == 3
    assert all(row["status"] == "ok" for row in rows.values())
    assert list(pq.read_table(out / "results.parquet").column("row").to_pylist()) == [1, 2, 3]
    assert rows["two"]["team"] == "blue"  # passthrough column kept
    assert rows["two"]["image_count"] == 1
    assert "What do you see?" in str(rows["two"]["output_transcript"])  # the prompt travelled as instructions
    for row in rows.values():
        with wave.open(str(out / str(row["output_wav"]))) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
            assert wav.getnframes() > 0
        # the simulator bills input by the documented rules: the estimate must match exactly
        for modality in ("input_text", "input_audio", "input_image"):
            assert row[f"est_{modality}_tokens"] == row[f"usage_{modality}_tokens"], modality
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["by_status"]["ok"] == 3

    again = CliRunner().invoke(main, ["run", str(good_job / "manifest.csv"), "--simulate", "--out", str(out)])
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["items_skipped_already_ok"] == 3

    report = CliRunner().invoke(main, ["report", str(out)])
    assert report.exit_code == 0
    assert "input estimate matches exactly" in report.output


def test_bad_inputs_fail_their_rows_only(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    write_audio(job / "good.wav", seconds=1.0, rate=16_000, channels=1)
    write_audio(job / "src.mp3", seconds=2.0)
    write_truncated(job / "src.mp3", job / "corrupt.mp3", keep_fraction=0.02)
    (job / "empty.wav").write_bytes(b"")
    write_text(job / "notes.jpg")
    write_image(job / "huge.png", 6000, 4000, alpha=True)
    write_cmyk_jpeg(job / "print.jpg")
    write_audio(job / "grüße 音声.wav", seconds=1.0, rate=16_000, channels=1)
    (job / "manifest.csv").write_text(
        "id,audio,image\n"
        "missing,nope.wav,\n"
        "corrupt,corrupt.mp3,\n"
        "zero,empty.wav,\n"
        "textjpg,good.wav,notes.jpg\n"
        "huge,good.wav,huge.png\n"
        "cmyk,good.wav,print.jpg\n"
        "unicode,grüße 音声.wav,\n"
        "../../x,good.wav,\n",
        encoding="utf-8",
    )
    out = tmp_path / "work" / "out"
    before = _files_under(tmp_path) - _files_under(out)
    result = CliRunner().invoke(main, ["run", str(job / "manifest.csv"), "--simulate", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = _read_results(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "missing": "failed",
        "corrupt": "failed",
        "zero": "failed",
        "textjpg": "failed",
        "huge": "ok",
        "cmyk": "ok",
        "unicode": "ok",
        "../../x": "ok",
    }
    assert "not found" in str(rows["missing"]["error_message"])
    assert "empty" in str(rows["zero"]["error_message"])
    assert "corrupt" in str(rows["corrupt"]["error_message"]) or "decode" in str(rows["corrupt"]["error_message"])
    assert "image" in str(rows["textjpg"]["error_message"])
    # nothing written outside OUT: every new file lies below it
    assert _files_under(tmp_path) - _files_under(out) == before
    assert (out / str(rows["../../x"]["output_wav"])).resolve().is_relative_to(out.resolve())


def test_manifest_without_usable_columns_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("name,colour\na,red\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "m.csv"), "--simulate", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error" in result.output and "Traceback" not in result.output


def test_dry_run_estimates_what_the_run_sends(tmp_path: Path) -> None:
    """The offline estimate (from metadata only) against the run's estimate (from the decoded media
    it sends), item by item, on the demo job with video at 2 frames per second and a default voice."""
    manifest = Path(__file__).resolve().parent.parent / "jobs" / "demo" / "manifest.csv"
    options = ["--video-fps", "2", "--voice", "Ethan", "--instructions", "Be brief."]
    dry = CliRunner().invoke(main, ["run", str(manifest), "--dry-run", "--out", str(tmp_path / "dry"), *options])
    assert dry.exit_code == 0, dry.output
    assert "CNY" in dry.output
    real = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(tmp_path / "run"), *options])
    assert real.exit_code == 0, real.output
    estimated = {row["id"]: row for row in pq.read_table(tmp_path / "dry" / "estimate.parquet").to_pylist()}
    ran = _read_results(tmp_path / "run")
    assert sorted(estimated) == sorted(ran)
    for item_id, row in ran.items():
        guess = estimated[item_id]
        assert guess["problem"] is None
        assert guess["image_count"] == row["image_count"], item_id  # video frames at 2 fps included
        assert guess["input_image_tokens"] == row["est_input_image_tokens"], item_id
        assert guess["input_text_tokens"] == row["est_input_text_tokens"], item_id
        # container durations can differ from the decoded length by a codec frame: one token at most
        assert abs(guess["input_audio_tokens"] - row["est_input_audio_tokens"]) <= 1, item_id
        assert row["voice"] == "Ethan"
    assert ran["ball-video"]["image_count"] >= 4  # a 2-3 s video at 2 fps


def test_estimate_refuses_a_voice_the_run_would_refuse(good_job: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["estimate", str(good_job / "manifest.csv"), "--voice", "Nobody"])
    assert result.exit_code == 2
    assert "voice 'Nobody'" in result.output


def test_max_cost_refuses_to_start(good_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(good_job / "manifest.csv"), "--simulate", "--out", str(out), "--max-cost", "0.000001"]
    )
    assert result.exit_code == 3
    assert "exceeds --max-cost" in result.output
    assert not (out / "results.parquet").exists()


def test_real_subprocess_against_simulator(good_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    log_file = tmp_path / "run.log"
    events = tmp_path / "events.jsonl"
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
        proc = subprocess.run(
            [sys.executable, "-m", "batchqwen.cli", "run", str(good_job / "manifest.csv"), "--base-url", sim.url,
             "--out", str(out), "--log-file", str(log_file), "--log-events", str(events), "--concurrency", "2"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(_read_results(out)) == 3
    assert "results in" in proc.stdout
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["event"]["type"] for e in logged} >= {"session.update", "input_audio_buffer.append", "response.done"}
    appends = [e for e in logged if e["event"]["type"] == "input_audio_buffer.append"]
    assert all("elided" in e["event"]["audio"] for e in appends)
    for path in [*out.rglob("*"), log_file, events]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in proc.stdout + proc.stderr


def test_demo_job_runs_clean_and_its_input_estimate_is_exact(tmp_path: Path) -> None:
    """What `make demo` does: every demo item ok, WAVs 24 kHz mono 16-bit, input estimate == reported usage."""
    manifest = Path(__file__).resolve().parent.parent / "jobs" / "demo" / "manifest.csv"
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read_results(out)
    demo_ids = [line.split(",", 1)[0] for line in manifest.read_text(encoding="utf-8").splitlines()[1:] if line]
    assert sorted(rows) == sorted(demo_ids)
    for row in rows.values():
        assert row["status"] == "ok"
        with wave.open(str(out / str(row["output_wav"]))) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
        estimated = sum(int(row[f"est_input_{m}_tokens"]) for m in ("text", "audio", "image"))  # type: ignore[call-overload]
        assert estimated == row["usage_input_tokens"], row["id"]
    report = CliRunner().invoke(main, ["report", str(out)])
    assert "input estimate matches exactly" in report.output


def test_chunk_ms_sets_the_size_of_audio_appends(good_job: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    args = ["run", str(good_job / "manifest.csv"), "--simulate", "--out", str(tmp_path / "out"), "--limit", "1"]
    result = CliRunner().invoke(main, [*args, "--chunk-ms", "250", "--log-events", str(events)])
    assert result.exit_code == 0, result.output
    appends = [
        json.loads(line)["event"]["audio"]
        for line in events.read_text().splitlines()
        if '"input_audio_buffer.append"' in line
    ]
    # row 1 is 1.5 s of 16 kHz audio: six 250 ms chunks of 8,000 bytes
    assert appends == ["<8000 bytes elided>"] * 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-url", "http://example.invalid/realtime", "--api-key", "sk-x"], "ws://"),
        (["--simulate", "--out", "{file}/sub"], "Not a directory"),
        (["--simulate", "--log-events", "{missing}/events.jsonl"], "No such file"),
        (["--simulate", "--modalities", "audio"], "modalities"),
    ],
)
def test_user_mistakes_are_usage_errors_not_tracebacks(
    good_job: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    extra = [e.format(file=a_file, missing=tmp_path / "missing") for e in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, ["run", str(good_job / "manifest.csv"), *out, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_decoding_in_worker_processes_gives_the_same_results(good_job: Path, tmp_path: Path) -> None:
    runs = {}
    for processes in ("0", "2"):
        out = tmp_path / f"out{processes}"
        args = ["run", str(good_job / "manifest.csv"), "--simulate", "--out", str(out)]
        result = CliRunner().invoke(main, [*args, "--decode-processes", processes])
        assert result.exit_code == 0, result.output
        runs[processes] = _read_results(out)
    for item_id, row in runs["0"].items():
        other = runs["2"][item_id]
        for column in ("input_audio_seconds", "image_count", "est_input_audio_tokens", "usage_input_tokens"):
            assert row[column] == other[column], (item_id, column)
