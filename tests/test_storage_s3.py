"""Manifests, media and outputs in a bucket: a real S3-compatible server (moto's) on 127.0.0.1.

No client library is mocked: batchqwen talks to the server over HTTP with the AWS SDK inside pyarrow and
boto3, signing with an IAM user's keys that the server checks (``storage_servers.S3Server``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_image
from storage_servers import AUDIT, BUCKET, DENIED_PREFIX, S3Server

from batchqwen.cli import main
from batchqwen.errors import LockHeld, OutputUnwritable
from batchqwen.sim.server import SimulatorConfig, SimulatorThread
from batchqwen.storage.fetch import DownloadCache, Storage, StorageOptions
from batchqwen.storage.locations import Remote
from batchqwen.storage.outputs import RemoteLock

KEY = "sk-test-storage-0123456789abcdef"
STABLE = [
    "id", "row", "status", "error_type", "input_transcript", "output_text", "output_transcript", "output_wav",
    "output_audio_seconds", "input_audio_seconds", "usage_input_audio_tokens", "usage_output_audio_tokens",
    "usage_total_tokens", "cost",
]  # fmt: skip


def wav_bytes(seconds: float, *, rate: int = 16_000, tone: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * tone * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def aws_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The standard AWS variables, as a cron job would set them; nothing else tells batchqwen the keys."""
    env = {**s3.keys, "AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws of the machine's
    return env


def _manifest(rows: list[tuple[str, str]]) -> bytes:
    return ("id,audio\n" + "".join(f"{i},{a}\n" for i, a in rows)).encode()


def _bucket_results(s3: S3Server, prefix: str) -> dict[str, dict[str, Any]]:
    table = pq.read_table(io.BytesIO(s3.get(f"{prefix}/results.parquet")))
    return {row["id"]: row for row in table.to_pylist()}


def _no_secrets(blobs: dict[str, bytes], keys: dict[str, str]) -> None:
    for name, data in blobs.items():
        for secret in keys.values():
            assert secret.encode() not in data, f"{name} holds a credential"


def test_run_simulate_writes_every_output_to_the_bucket(s3: S3Server, aws_env: dict[str, str], tmp_path: Path) -> None:
    s3.put("job1/a.wav", wav_bytes(1.5))
    s3.put("job1/sub/b.wav", wav_bytes(1.0, tone=660))
    s3.put("job1/pic.png", (write_image(tmp_path / "pic.png", 64, 48)).read_bytes())
    s3.put(
        "job1/manifest.csv",
        b"id,audio,image\nfirst,a.wav,pic.png\nsecond,s3://media/job1/sub/b.wav,\n",
    )
    state = tmp_path / "state"
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        main,
        ["run", "s3://media/job1/manifest.csv", "--simulate", "--out", "s3://media/out1", "--s3-endpoint", s3.endpoint,
         "--state-dir", str(state), "--cache-dir", str(cache)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = s3.keys_under("out1/")
    assert {"out1/results.parquet", "out1/summary.json", "out1/journal.jsonl", "out1/run_events.jsonl"} <= set(stored)
    assert {"out1/audio/first.wav", "out1/audio/second.wav", "out1/report.html"} <= set(stored)
    assert "out1/.batchqwen.lock" not in stored  # released at the end
    rows = _bucket_results(s3, "out1")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["first"]["image_count"] == 1 and rows["first"]["input_audio_seconds"] == pytest.approx(1.5)
    assert rows["second"]["output_wav"] == "audio/second.wav"
    assert s3.get("out1/audio/second.wav")[:4] == b"RIFF"
    summary = json.loads(s3.get("out1/summary.json"))
    assert summary["out"] == "s3://media/out1" and summary["manifest"] == "s3://media/job1/manifest.csv"
    assert "s3://media/out1/results.parquet" in result.output
    # the state directory keeps the journal and the lock; WAVs are not kept twice; the download cache is gone
    assert (state / "journal.jsonl").is_file() and not list((state / "audio").glob("*.wav"))
    assert not any(p.is_file() for p in cache.rglob("*"))
    report = CliRunner().invoke(main, ["report", "s3://media/out1", "--s3-endpoint", s3.endpoint, "--html"])
    assert report.exit_code == 0, report.output
    assert "2 items: ok 2" in report.output and "HTML report: s3://media/out1/report.html" in report.output
    assert b"first" in s3.get("out1/report.html")
    blobs = {k: s3.get(k) for k in stored} | {str(p): p.read_bytes() for p in state.rglob("*") if p.is_file()}
    _no_secrets(blobs | {"output": (result.output + report.output).encode()}, s3.keys)


def test_missing_and_forbidden_objects_are_row_errors(s3: S3Server, aws_env: dict[str, str], tmp_path: Path) -> None:
    s3.put("job2/ok.wav", wav_bytes(1.0))
    s3.put(f"{DENIED_PREFIX}secret.wav", wav_bytes(1.0))  # exists; the IAM policy denies reading it
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        _manifest([("ok", "s3://media/job2/ok.wav"), ("gone", "s3://media/job2/missing.wav"),
                   ("denied", f"s3://media/{DENIED_PREFIX}secret.wav")])
    )  # fmt: skip
    out = tmp_path / "out"
    log_file = tmp_path / "run.log"
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--simulate", "--out", str(out), "--s3-endpoint", s3.endpoint, "--fetch-attempts", "2",
         "--log-file", str(log_file)],
    )  # fmt: skip
    for handler in logging.getLogger("batchqwen").handlers:
        handler.close()  # the --log-file handler of the in-process run
    assert result.exit_code == 1, result.output
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["ok"]["status"] == "ok"
    assert rows["gone"]["status"] == rows["denied"]["status"] == "failed"
    assert rows["gone"]["error_type"] == rows["denied"]["error_type"] == "input_file"
    assert rows["gone"]["error_message"] == "row 2 (id 'gone'): not found (404): s3://media/job2/missing.wav"
    assert rows["denied"]["error_message"] == (
        f"row 3 (id 'denied'): access denied (403): s3://media/{DENIED_PREFIX}secret.wav"
    )
    blobs = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _no_secrets(blobs | {"log": log_file.read_bytes(), "output": result.output.encode()}, s3.keys)


def test_failed_uploads_are_retried_and_an_item_is_never_done_before_its_wav_is_stored(
    s3: S3Server, aws_env: dict[str, str], tmp_path: Path
) -> None:
    s3.put("job5/a.wav", wav_bytes(1.0))
    s3.put("job5/b.wav", wav_bytes(1.2, tone=500))
    s3.put("job5/manifest.csv", _manifest([("a", "a.wav"), ("b", "b.wav")]))
    base = ["run", "s3://media/job5/manifest.csv", "--simulate", "--s3-endpoint", s3.endpoint, "--concurrency", "1"]
    s3.counting.fail_next["PUT", "/out5/audio/"] = 3  # the store refuses the next three WAVs with 503 SlowDown
    flaky = CliRunner().invoke(main, [*base, "--out", "s3://media/out5", "--state-dir", str(tmp_path / "s1")])
    assert flaky.exit_code == 0, flaky.output
    assert s3.counting.fail_next["PUT", "/out5/audio/"] == 0  # all three were met, and retried
    assert {r["status"] for r in _bucket_results(s3, "out5").values()} == {"ok"}
    assert s3.get("out5/audio/a.wav")[:4] == s3.get("out5/audio/b.wav")[:4] == b"RIFF"
    # a store that keeps refusing: the run stops (exit 4) and no item counts as done without its WAV
    s3.counting.fail_next["PUT", "/out6/audio/"] = 10_000
    state = tmp_path / "s2"
    try:
        down = CliRunner().invoke(
            main, [*base, "--out", "s3://media/out6", "--state-dir", str(state), "--fetch-attempts", "1"]
        )
    finally:
        s3.counting.fail_next.clear()
    assert down.exit_code == 4, down.output
    journal = state / "journal.jsonl"
    assert not journal.exists() or not [line for line in journal.read_text().splitlines() if '"ok"' in line]
    assert "cannot store s3://media/out6/audio/" in down.output


def test_a_full_cache_disk_stops_the_run_with_the_environment_code(
    s3: S3Server, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The download cache on a 1 MB tmpfs (needs root, as on CI) and a file larger than it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        s3.put("job6/big.wav", wav_bytes(40.0))  # 1.28 MB
        s3.put("job6/manifest.csv", _manifest([("big", "big.wav")]))
        out = tmp_path / "out"
        result = CliRunner().invoke(
            main,
            ["run", "s3://media/job6/manifest.csv", "--simulate", "--out", str(out), "--s3-endpoint", s3.endpoint,
             "--cache-dir", str(disk)],
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert result.exit_code == 4, result.output
    assert "No space left on device" in result.output
    assert [r["status"] for r in pq.read_table(out / "results.parquet").to_pylist()] == ["pending"]


def _wait_for_lines(path: Path, lines: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {lines} lines")


def test_kill_9_mid_run_and_rerun_equal_an_uninterrupted_run(
    s3: S3Server, aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = 16
    s3.seed({f"job3/{i:02d}.wav": wav_bytes(0.5 + 0.1 * i, tone=300 + 40 * i) for i in range(items)})
    s3.put("job3/manifest.csv", _manifest([(f"item{i:02d}", f"{i:02d}.wav") for i in range(items)]))
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)

    def args(out: str, state: Path, url: str) -> list[str]:
        return ["run", "s3://media/job3/manifest.csv", "--base-url", url, "--out", out, "--s3-endpoint", s3.endpoint,
                "--state-dir", str(state), "--concurrency", "2", "--checkpoint-seconds", "1",
                "--cache-dir", str(tmp_path / "cache")]  # fmt: skip

    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), latency_seconds=0.3)) as sim:
        whole = CliRunner().invoke(main, args("s3://media/whole", tmp_path / "s1", sim.url))
        assert whole.exit_code == 0, whole.output
        state = tmp_path / "s2"
        command = [sys.executable, "-m", "batchqwen.cli", *args("s3://media/killed", state, sim.url)]
        proc = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_lines(state / "journal.jsonl", 5, timeout=60)
            # another host on the same OUT meanwhile: kept out by the lock object, told who holds it
            other = CliRunner().invoke(main, args("s3://media/killed", tmp_path / "other-host", sim.url))
            assert other.exit_code == 2, other.output
            assert "output s3://media/killed is in use by another batchqwen run (pid" in other.output
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        # never done before stored: every item the journal holds as ok has its WAV in the bucket
        journaled = [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines() if line]
        assert 5 <= len(journaled) < items, "the kill came too late to be mid-run"
        wavs = set(s3.keys_under("killed/audio/"))
        assert {f"killed/{r['output_wav']}" for r in journaled if r["status"] == "ok"} <= wavs
        assert "killed/.batchqwen.lock" in s3.keys_under("killed/")  # left behind by the kill
        rerun = CliRunner().invoke(main, args("s3://media/killed", state, sim.url))
        assert rerun.exit_code == 0, rerun.output
        assert "took over the lock" in rerun.output
        assert 0 < json.loads(s3.get("killed/summary.json"))["items_skipped_already_ok"] < items
        # a new host with an empty state directory resumes from OUT: nothing left to run
        fresh = CliRunner().invoke(main, args("s3://media/killed", tmp_path / "s3", sim.url))
        assert fresh.exit_code == 0, fresh.output
    assert json.loads(s3.get("killed/summary.json"))["items_skipped_already_ok"] == items
    expected, got = _bucket_results(s3, "whole"), _bucket_results(s3, "killed")
    assert [got[i][c] for i in sorted(got) for c in STABLE] == [
        expected[i][c] for i in sorted(expected) for c in STABLE
    ]
    for item in expected:
        assert s3.get(f"killed/audio/{item}.wav") == s3.get(f"whole/audio/{item}.wav")


def test_estimate_of_2000_rows_in_the_bucket_reads_headers_only(
    s3: S3Server, aws_env: dict[str, str], tmp_path: Path
) -> None:
    rows = 2_000
    durations = [2.5 + (i % 9) * 0.25 for i in range(rows)]
    base = np.frombuffer(wav_bytes(max(durations))[44:], dtype="<i2")

    def distinct_wav(i: int, seconds: float) -> bytes:  # a slice of one tone, one sample made unique
        samples = base[: int(seconds * 16_000)].copy()
        samples[0] = i
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16_000)
            wav.writeframes(samples.tobytes())
        return buffer.getvalue()

    objects = {f"big/{i:04d}.wav": distinct_wav(i, d) for i, d in enumerate(durations)}
    picture = write_image(tmp_path / "p.jpg", 640, 480, quality=95).read_bytes()
    objects |= {f"big/p{i:03d}.jpg": picture + bytes([i % 256]) * 16 for i in range(200)}
    s3.seed(objects)
    lines = [f"r{i},{i:04d}.wav,{f'p{i // 10:03d}.jpg' if i % 10 == 0 else ''}" for i in range(rows)]
    s3.put("big/manifest.csv", ("id,audio,image\n" + "\n".join(lines) + "\n").encode())
    s3.counting.reset()
    out = tmp_path / "est"
    result = CliRunner().invoke(
        main, ["estimate", "s3://media/big/manifest.csv", "--out", str(out), "--s3-endpoint", s3.endpoint]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "estimate.parquet").to_pylist()
    assert [r["problem"] for r in table if r["problem"]] == []
    assert sum(r["audio_seconds"] for r in table) == pytest.approx(sum(durations), abs=0.01)
    assert sum(r["image_count"] for r in table) == 200
    media = {f"/{BUCKET}/{key}": len(data) for key, data in objects.items()}
    read = sum(s3.counting.bytes[path] for path in media)
    requests = sum(s3.counting.requests[path] for path in media)
    print(f"read {read:,} of {sum(media.values()):,} media bytes; {requests / len(media):.2f} requests per file")
    assert read < 0.05 * sum(media.values())
    assert requests <= 3 * len(media)
    assert all(s3.counting.requests[path] >= 1 for path in media)  # every file was really probed


def test_manifest_from_a_bucket_may_not_name_local_files_or_the_metadata_address(
    s3: S3Server, aws_env: dict[str, str], tmp_path: Path
) -> None:
    local = tmp_path / "mine.wav"
    local.write_bytes(wav_bytes(1.0))
    s3.put("job4/ok.wav", wav_bytes(1.0))
    s3.put(
        "job4/manifest.csv",
        _manifest([("passwd", "/etc/passwd"), ("metadata", "http://169.254.169.254/latest/meta-data/"),
                   ("home", "~/.aws/credentials"), ("file", f"file://{local}"), ("ok", "ok.wav")]),
    )  # fmt: skip
    opened: list[str] = []
    connected: list[Any] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            opened.append(os.fsdecode(args[0]))
        elif event == "socket.connect" and len(args) > 1:
            connected.append(args[1])

    AUDIT.append(audit)
    try:
        out = tmp_path / "out"
        result = CliRunner().invoke(
            main,
            ["run", "s3://media/job4/manifest.csv", "--simulate", "--out", str(out), "--s3-endpoint", s3.endpoint],
        )
        estimate = CliRunner().invoke(
            main,
            ["estimate", "s3://media/job4/manifest.csv", "--out", "s3://media/est4", "--s3-endpoint", s3.endpoint],
        )
    finally:
        AUDIT.remove(audit)
    assert result.exit_code == 1, result.output
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["ok"]["status"] == "ok"
    assert rows["passwd"]["error_message"] == (
        "row 1 (id 'passwd'): local file /etc/passwd refused: the manifest comes from s3://media/job4/manifest.csv,"
        " and a manifest from a bucket or URL may name remote media only (pass --allow-local-media to allow local"
        " files)"
    )
    assert rows["metadata"]["error_message"] == (
        "row 2 (id 'metadata'): http://169.254.169.254/latest/meta-data/ refused: 169.254.169.254 is a link-local"
        " (cloud metadata) address, which URL media may not reach (pass --allow-private-urls)"
    )
    assert {rows[i]["error_type"] for i in ("passwd", "metadata", "home", "file")} == {"refused"}
    assert estimate.exit_code == 0, estimate.output
    assert estimate.output.count("refused") >= 4 and "link-local" in estimate.output
    assert "per-item estimate in s3://media/est4/estimate.parquet" in estimate.output
    assert pq.read_table(io.BytesIO(s3.get("est4/estimate.parquet"))).num_rows == 5
    assert not [p for p in opened if p in ("/etc/passwd", str(local)) or p.endswith(".aws/credentials")]
    assert not [a for a in connected if isinstance(a, tuple) and a[0] == "169.254.169.254"]
    # the user's own say-so lets a shared manifest name local files
    allowed = CliRunner().invoke(
        main,
        ["run", "s3://media/job4/manifest.csv", "--simulate", "--out", str(tmp_path / "out2"), "--s3-endpoint",
         s3.endpoint, "--allow-local-media"],
    )  # fmt: skip
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out2" / "results.parquet").to_pylist()}
    assert rows["file"]["status"] == "ok" and rows["passwd"]["error_type"] == "media"
    assert allowed.exit_code == 1


def test_remote_lock_keeps_two_hosts_apart(s3: S3Server, aws_env: dict[str, str], tmp_path: Path) -> None:
    storage = Storage(StorageOptions(s3_endpoint=s3.endpoint))
    out = Remote("s3://media/locked")
    first = RemoteLock(out, storage, tmp_path / "host-a")
    first.acquire()
    second = RemoteLock(out, storage, tmp_path / "host-b")
    with pytest.raises(LockHeld, match="in use by another batchqwen run"):
        second.acquire()  # same host, another state dir, holder alive: not taken
    stale = RemoteLock(out, storage, tmp_path / "host-b", stale_seconds=0.0)
    time.sleep(0.01)
    stale.acquire()  # not renewed for longer than stale_seconds: taken over (with If-Match)
    with pytest.raises(OutputUnwritable, match="lost the lock"):
        first.renew()  # the first holder finds out at its next checkpoint
    stale.release()
    assert "locked/.batchqwen.lock" not in s3.keys_under("locked/")
    second.acquire()
    second.release()


def _bytes_on_disk(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.bin"):
        with contextlib.suppress(FileNotFoundError):  # evicted by another thread since the listing
            total += path.stat().st_size
    return total


def test_download_cache_stays_within_its_cap(s3: S3Server, aws_env: dict[str, str], tmp_path: Path) -> None:
    s3.seed({f"cache/{i}.bin": bytes([i]) * 100_000 for i in range(8)})
    storage = Storage(StorageOptions(s3_endpoint=s3.endpoint))
    cache = DownloadCache(storage, tmp_path / "c", max_bytes=250_000)
    peak = [0]
    errors: list[BaseException] = []

    def use(i: int) -> None:
        try:
            ref = Remote(f"s3://media/cache/{i % 8}.bin")
            path = cache.acquire(ref)
            peak[0] = max(peak[0], _bytes_on_disk(cache.folder))
            assert path.read_bytes() == bytes([i % 8]) * 100_000
            time.sleep(0.01)
            cache.release(ref)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert 0 < peak[0] <= 250_000 and cache.bytes_held <= 250_000
    cache.close()
    assert not cache.folder.exists()
