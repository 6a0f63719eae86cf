"""Unattended runs against the simulator's faults: real sockets on 127.0.0.1, real files, real processes."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from media_factory import write_audio

from batchqwen import manifest, media, runner
from batchqwen.config import RunConfig
from batchqwen.sim.core import input_fingerprint
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

KEY = "sk-nightly-0123456789abcdef"
PYTHON = sys.executable
VOLATILE = {"session_id", "response_ids", "started_at", "finished_at", "connect_seconds", "first_text_seconds"}
VOLATILE |= {"first_audio_seconds", "total_seconds", "attempts", "failed_attempt_tokens"}


def make_manifest(folder: Path, count: int, *, seconds: float = 0.2) -> Path:
    """``count`` distinct short WAV clips (distinct noise seeds: distinct fingerprints) and a CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        path = folder / f"clip{index}.wav"
        write_audio(path, seconds=seconds, rate=16_000, channels=1, seed=index)
        rows.append({"id": f"item-{index:04d}", "audio": path.name, "note": f"n{index}"})
    target = folder / "manifest.csv"
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio", "note"])
        writer.writeheader()
        writer.writerows(rows)
    return target


def fingerprints(manifest_path: Path) -> dict[str, str]:
    out = {}
    for item in manifest.iter_items(manifest_path):
        prepared = media.prepare_item(item, video_fps=1.0, pad_silence_seconds=0.0)
        out[input_fingerprint(prepared.pcm16)] = item.id
    return out


def stable_rows(path: Path) -> list[dict[str, Any]]:
    rows = pq.read_table(path).to_pylist()
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


# ----------------------------------------------------------------------------- 500 items through the faults


def test_500_items_through_faults_and_throttling(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 500)
    config = SimulatorConfig(
        api_keys=(KEY,),
        disconnect_rate=0.10,
        server_error_rate=0.05,
        hang_rate=0.02,
        malformed_rate=0.02,  # a broken frame is the server's fault: retried like a drop (the outages issue)
        rpm=60,
        seed=7,
        window_seconds=2.0,  # 30 sessions a second: slower than the client, so the quota bites
    )
    with SimulatorThread(config) as sim:
        run_config = RunConfig(
            manifest=source,
            out=tmp_path / "out",
            base_url=sim.url,
            api_key=KEY,
            concurrency=16,
            rpm=10**6,  # the limiter does not know the quota: the server's throttling must be survived
            tpm=10**9,
            max_attempts=8,
            idle_timeout=1.0,  # hangs fail fast
            pad_silence_seconds=0.0,
        )
        policy = runner.RetryPolicy(base_delay=0.05, max_delay=0.5, throttle_base_delay=0.3, throttle_max_delay=1.5)
        started = time.monotonic()
        outcome = asyncio.run(runner.run(run_config, retry=policy))
        elapsed = time.monotonic() - started
        stats = sim.stats

    assert outcome.exit_code == runner.EXIT_OK, outcome.reason
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert len(rows) == 500
    assert {row["status"] for row in rows} == {"ok"}
    assert [row["id"] for row in rows] == [f"item-{i:04d}" for i in range(500)]
    wavs = sorted((tmp_path / "out" / "audio").glob("*.wav"))
    assert len(wavs) == 500
    assert {row["output_wav"] for row in rows} == {f"audio/{w.name}" for w in wavs}
    # the faults really happened, and were retried
    assert stats.faults.get("disconnect", 0) > 20
    assert stats.faults.get("server_error", 0) > 10
    assert stats.faults.get("hang", 0) > 2
    assert stats.faults.get("malformed", 0) > 2
    assert stats.faults.get("throttle", 0) > 0 and stats.handshakes_refused.get(429, 0) > 0
    assert outcome.summary["throttle_cooldowns"] > 0
    assert sum(row["attempts"] for row in rows) > 500
    # the simulator's own count: every item answered exactly once
    prints = fingerprints(source)
    assert set(stats.delivered) == set(prints)
    doubled = [prints[fp] for fp, n in stats.delivered.items() if n > 1]
    assert doubled == [], f"answered twice: {doubled}"
    assert elapsed < 60  # 500 sessions at the 30-a-second quota take 17 s at the very least


# ----------------------------------------------------------------------------- SIGKILL and resume


class Cli:
    """``batchqwen run`` in a real subprocess; its output goes to files (no pipes left open)."""

    counter = 0

    def __init__(self, *args: str, key: str = KEY, logs: Path) -> None:
        Cli.counter += 1
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path = logs / f"cli{Cli.counter}.out"
        self.err_path = logs / f"cli{Cli.counter}.err"
        env = {k: v for k, v in os.environ.items() if k != "DASHSCOPE_API_KEY"} | {"DASHSCOPE_API_KEY": key}
        with self.out_path.open("w") as stdout, self.err_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "batchqwen.cli", "run", *args], env=env, stdout=stdout, stderr=stderr
            )
        self.pid = self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()


def _poll_parquet(path: Path, seen: list[int], proc: Cli) -> None:
    """Open results.parquet whenever it exists while ``proc`` runs; it must always be whole."""
    while proc.poll() is None:
        if path.exists():
            # one open: the file is replaced atomically, and a reader holding one handle sees one whole
            # version (pyarrow given a path may open it twice and mix two versions)
            with path.open("rb") as handle:
                table = pq.read_table(handle)  # raises on a torn file
            seen.append(table.num_rows)
        time.sleep(0.01)


def test_sigkill_at_a_random_moment_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 60)
    common = ["--rpm", "100000", "--tpm", "1000000000", "--pad-silence", "0", "-c", "4", "--quiet"]
    config = SimulatorConfig(api_keys=(KEY,), delta_delay_seconds=0.002)
    with SimulatorThread(config) as sim:
        reference = Cli(
            str(source), "--out", str(tmp_path / "ref"), "--base-url", sim.url, *common, logs=tmp_path / "logs"
        )
        assert reference.wait(60) == 0, reference.stderr

        out = tmp_path / "killed"
        seen: list[int] = []
        first = Cli(str(source), "--out", str(out), "--base-url", sim.url, *common, logs=tmp_path / "logs")
        # kill somewhere in the middle: after the journal has some lines, at a random extra moment
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and first.poll() is None:
            journal = out / "journal.jsonl"
            if journal.exists() and journal.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.005)
        time.sleep(random.uniform(0.0, 0.3))
        assert first.poll() is None, "the run finished before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_before = len((out / "journal.jsonl").read_bytes().splitlines())
        assert 0 < done_before < 60

        second = Cli(str(source), "--out", str(out), "--base-url", sim.url, *common, logs=tmp_path / "logs")
        _poll_parquet(out / "results.parquet", seen, second)
        assert second.wait(60) == 0, second.stderr
        summary = json.loads((out / "summary.json").read_text())

    assert summary["items_skipped_already_ok"] >= done_before - 1  # a torn last line may be redone
    assert summary["items_run_now"] + summary["items_skipped_already_ok"] == 60
    assert seen and all(n == 60 for n in seen)
    assert stable_rows(out / "results.parquet") == stable_rows(tmp_path / "ref" / "results.parquet")
    assert len(list((out / "audio").glob("*.wav"))) == 60
    for wav in (out / "audio").glob("*.wav"):  # every WAV whole: a kill never leaves a torn one
        with wave.open(str(wav)) as handle:
            assert handle.getnframes() > 0


# ----------------------------------------------------------------------------- invalid key


def test_invalid_key_stops_a_1000_item_run_fast_with_exit_3_and_never_prints_the_key(tmp_path: Path) -> None:
    # one clip reused by 1,000 rows under distinct ids: the run is about the key, not the media
    folder = tmp_path / "in"
    folder.mkdir()
    write_audio(folder / "clip.wav", seconds=0.2, rate=16_000, channels=1)
    source = folder / "manifest.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio"])
        writer.writerows([f"row-{i}", "clip.wav"] for i in range(1000))
    bad_key = "sk-wrong-key-SECRET-9f8e7d6c5b4a"
    out = tmp_path / "out"
    log_file = tmp_path / "logs" / "run.log"
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        started = time.monotonic()
        proc = Cli(
            str(source),
            "--out",
            str(out),
            "--base-url",
            sim.url,
            "--log-file",
            str(log_file),
            key=bad_key,
            logs=tmp_path / "logs",
        )
        proc.wait(30)
        stdout, stderr = proc.stdout, proc.stderr
        elapsed = time.monotonic() - started
        refused = sim.stats.handshakes_refused.get(401, 0)

    assert proc.proc.returncode == 3, stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "API key was refused" in stdout + stderr
    assert refused <= 64  # stopped at once, not burning through 1,000 items
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 3 and "API key was refused" in summary["exit_reason"]
    texts = {"stdout": stdout, "stderr": stderr, "summary": (out / "summary.json").read_text()}
    texts["log"] = log_file.read_text()
    if (out / "journal.jsonl").exists():
        texts["journal"] = (out / "journal.jsonl").read_text()
    texts["results"] = json.dumps(pq.read_table(out / "results.parquet").to_pylist(), default=str)
    for name, text in texts.items():
        assert bad_key not in text and "SECRET" not in text, f"the key leaked into {name}"


# ----------------------------------------------------------------------------- the lock


def test_two_runs_on_one_out_one_works_the_other_exits_2_naming_the_holder(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 20)
    out = tmp_path / "out"
    common = ["--out", str(out), "--rpm", "100000", "--pad-silence", "0", "-c", "1", "--quiet"]
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), latency_seconds=0.05)) as sim:
        first = Cli(str(source), "--base-url", sim.url, *common, logs=tmp_path / "logs")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (out / "journal.jsonl").exists():
            time.sleep(0.01)
        second = Cli(str(source), "--base-url", sim.url, *common, logs=tmp_path / "logs")
        second.wait(30)
        second_err = second.stderr
        assert first.wait(60) == 0
        waiting = Cli(str(source), "--base-url", sim.url, "--wait-lock", *common, logs=tmp_path / "logs")
        assert waiting.wait(60) == 0

    assert second.proc.returncode == 2
    assert "in use by another batchqwen run" in second_err
    assert f"pid {first.pid}" in second_err
    assert pq.read_table(out / "results.parquet").num_rows == 20


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_new_items_keeps_finished_ones(tmp_path: Path, signum: int, code: int) -> None:
    source = make_manifest(tmp_path / "in", 30)
    out = tmp_path / "out"
    args = ["--out", str(out), "--rpm", "100000", "--pad-silence", "0", "-c", "2", "--grace", "5"]
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), latency_seconds=0.1)) as sim:
        proc = Cli(str(source), "--base-url", sim.url, *args, logs=tmp_path / "logs")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (out / "journal.jsonl").exists():
            time.sleep(0.01)
        proc.send_signal(signum)
        proc.wait(20)
        stderr = proc.stderr
        sessions_at_exit = sim.stats.sessions

    assert proc.proc.returncode == code, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == code and summary["exit_reason"] == f"signal: {signal.Signals(signum).name}"
    rows = pq.read_table(out / "results.parquet").to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(ok) < 30 and len(rows) == 30
    assert {r["status"] for r in rows} == {"ok", "pending"}
    assert sessions_at_exit <= len(ok) + 2  # nothing new started after the signal, in-flight ones finished
