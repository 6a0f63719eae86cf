"""Outages and the environment: a dead service is not a bad item, a full disk is not a usage error, and
timeouts measure the service's silence only. Real sockets on 127.0.0.1, real files."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from media_factory import write_audio

from batchqwen import runner
from batchqwen.breaker import Breaker, BreakerState
from batchqwen.config import RunConfig
from batchqwen.errors import AdmissionClosed, ServiceUnreachable
from batchqwen.exitcodes import EXIT_ENVIRONMENT, EXIT_OK
from batchqwen.results import Journal
from batchqwen.runevents import read_run_events
from batchqwen.sim.server import Simulator, SimulatorConfig, SimulatorThread

KEY = "sk-outage-test-0001"
FAST = runner.RetryPolicy(base_delay=0.01, max_delay=0.05, throttle_base_delay=0.05, throttle_max_delay=0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def manifest_of(folder: Path, count: int, *, seconds: float = 0.3) -> Path:
    """``count`` rows over one real clip (each row its own id)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_audio(folder / "clip.wav", seconds=seconds, rate=16_000, channels=1)
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio"])
        writer.writerows([f"item-{i:04d}", "clip.wav"] for i in range(count))
    return path


def config_for(source: Path, out: Path, url: str, **overrides: object) -> RunConfig:
    values: dict[str, object] = {
        "manifest": source,
        "out": out,
        "base_url": url,
        "api_key": KEY,
        "concurrency": 16,
        "rpm": 10**6,
        "tpm": 10**9,
        "pad_silence_seconds": 0.0,
    }
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


def statuses(out: Path) -> dict[str, str]:
    return {r["id"]: r["status"] for r in pq.read_table(out / "results.parquet").to_pylist()}


# ----------------------------------------------------------------------------- the breaker in memory


def test_breaker_opens_after_failures_in_a_row_lets_one_probe_through_and_closes_on_success() -> None:
    async def scenario() -> None:
        now = [0.0]
        events: list[str] = []
        breaker = Breaker(threshold=3, base_delay=1.0, max_delay=4.0, clock=lambda: now[0])
        breaker._on_event = lambda name, fields: events.append(name)
        assert await breaker.admit() is False
        breaker.failure("refused", "h:1")
        breaker.success()  # a success in between: the count starts again
        for _ in range(2):
            breaker.failure("refused", "h:1")
        assert breaker.state is BreakerState.CLOSED
        breaker.failure("refused", "h:1")
        assert breaker.state is BreakerState.OPEN and events == ["breaker_open"]
        waiters = [asyncio.create_task(breaker.admit()) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)  # everyone waits out the cool-down
        now[0] = 10.0
        breaker._notify()
        await asyncio.sleep(0.01)
        probes = [w for w in waiters if w.done()]
        assert len(probes) == 1 and probes[0].result() is True  # exactly one probe
        breaker.success()  # a session from before the outage: says nothing about now
        assert breaker.state is BreakerState.PROBING
        breaker.success(probe=True)
        await asyncio.gather(*waiters)
        assert [w.result() for w in waiters].count(False) == 2  # the others go on as plain sessions
        assert breaker.state is BreakerState.CLOSED and events[-1] == "breaker_close"

    asyncio.run(scenario())


def test_breaker_gives_up_after_max_outage_and_a_stopping_run_releases_its_waiters() -> None:
    async def scenario() -> None:
        now = [0.0]
        breaker = Breaker(threshold=1, base_delay=1.0, max_outage=5.0, clock=lambda: now[0])
        breaker.failure("Name or service not known", "dashscope.example:443")
        now[0] = 6.0
        with pytest.raises(ServiceUnreachable, match=r"service unreachable since .*dashscope\.example:443"):
            await breaker.admit()
        other = Breaker(threshold=1, clock=lambda: now[0])
        other.failure("refused", "h")
        waiter = asyncio.create_task(other.admit())
        await asyncio.sleep(0.01)
        other.close()
        with pytest.raises(AdmissionClosed):
            await waiter

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- no service at all


def test_no_service_stops_a_2000_item_run_within_the_outage_budget_and_a_rerun_completes(tmp_path: Path) -> None:
    source = manifest_of(tmp_path / "in", 2000, seconds=0.2)
    out = tmp_path / "out"
    dead = f"ws://127.0.0.1:{free_port()}/api-ws/v1/realtime"  # nobody listens: refused at once
    started = time.monotonic()
    outcome = asyncio.run(runner.run(config_for(source, out, dead, max_outage=20.0), retry=FAST))
    elapsed = time.monotonic() - started
    assert outcome.exit_code == EXIT_ENVIRONMENT
    assert elapsed < 40
    assert outcome.reason.startswith("environment: service unreachable since ")
    assert "host 127.0.0.1:" in outcome.reason
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_ENVIRONMENT and summary["exit_reason"] == outcome.reason
    assert summary["by_status"].get("failed", 0) == 0  # nothing charged to the items
    assert set(statuses(out).values()) == {"pending"}
    names = [e["event"] for e in read_run_events(out)]
    assert names[0] == "breaker_open" and "outage_exceeded" in names and names[-1] == "run_end"
    assert 1 <= names.count("breaker_probe") <= 12  # probes back off; not one per item

    async def rerun() -> runner.RunOutcome:
        async with Simulator(SimulatorConfig()) as sim:
            return await runner.run(config_for(source, out, sim.url, concurrency=64), retry=FAST)

    again = asyncio.run(rerun())
    assert again.exit_code == EXIT_OK, again.reason
    assert set(statuses(out).values()) == {"ok"}


def test_a_short_outage_pauses_the_run_and_no_item_is_charged_for_it(tmp_path: Path) -> None:
    """The breaker against a service that comes back: refused for a while, then listening again."""
    source = manifest_of(tmp_path / "in", 60)
    out = tmp_path / "out"
    port = free_port()

    async def scenario() -> runner.RunOutcome:
        async def service_later() -> None:
            await asyncio.sleep(3.0)  # refused for 3 s: nobody listens on the port yet
            async with Simulator(SimulatorConfig(latency_seconds=0.05), port=port):
                await asyncio.sleep(30)

        server = asyncio.create_task(service_later())
        try:
            url = f"ws://127.0.0.1:{port}/api-ws/v1/realtime"
            return await runner.run(config_for(source, out, url, concurrency=8, max_outage=30.0), retry=FAST)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    outcome = asyncio.run(scenario())
    assert outcome.exit_code == EXIT_OK, outcome.reason
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["attempts"] for r in rows} == {1}  # the outage cost no item an attempt
    assert outcome.summary["outages"]["outages"] == 1
    assert 2.0 < outcome.summary["outages"]["outage_seconds"] < 10.0
    names = [e["event"] for e in read_run_events(out)]
    assert names.count("breaker_open") == 1 and names.count("breaker_close") == 1


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_a_20_second_outage_mid_run_pauses_it_and_every_item_ends_ok_charged_once(tmp_path: Path, mode: str) -> None:
    source = manifest_of(tmp_path / "in", 300)
    sim_config = SimulatorConfig(latency_seconds=0.2)

    def timed_run(out: Path, *, outage: bool) -> tuple[runner.RunOutcome, float]:
        with SimulatorThread(sim_config) as sim:
            config = config_for(source, out, sim.url, concurrency=16, max_outage=120.0)

            async def main() -> runner.RunOutcome:
                task = asyncio.create_task(runner.run(config, retry=FAST))
                if outage:
                    await asyncio.sleep(2.0)  # in the middle of the run
                    await asyncio.to_thread(sim.start_outage, 20.0, mode=mode)  # type: ignore[arg-type]
                return await task

            started = time.monotonic()
            outcome = asyncio.run(main())
            return outcome, time.monotonic() - started

    _, plain = timed_run(tmp_path / "plain", outage=False)
    outcome, interrupted = timed_run(tmp_path / "out", outage=True)
    assert outcome.exit_code == EXIT_OK, outcome.reason
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["attempts"] for r in rows} == {1}  # no item charged an extra attempt by the outage
    assert plain > 2.5  # the outage really began mid-run
    assert interrupted <= plain + 20 + 10
    assert outcome.summary["outages"]["outages"] == 1
    names = [e["event"] for e in read_run_events(tmp_path / "out")]
    assert names.count("breaker_open") == 1 and names.count("breaker_close") == 1


# ----------------------------------------------------------------------------- timeouts


def test_a_45_second_clip_at_real_time_pace_succeeds_with_the_default_timeouts(tmp_path: Path) -> None:
    source = manifest_of(tmp_path / "in", 1, seconds=45.0)
    with SimulatorThread(SimulatorConfig()) as sim:
        outcome = asyncio.run(
            runner.run(config_for(source, tmp_path / "out", sim.url, pace=1.0, rpm=None, tpm=None), retry=FAST)
        )
    assert outcome.exit_code == EXIT_OK, outcome.reason
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["attempts"] == 1 and row["total_seconds"] > 44  # really streamed in real time


def test_ten_minutes_at_pace_10_with_a_5_second_idle_timeout_succeeds(tmp_path: Path) -> None:
    source = manifest_of(tmp_path / "in", 1, seconds=600.0)
    with SimulatorThread(SimulatorConfig()) as sim:
        config = config_for(source, tmp_path / "out", sim.url, pace=10.0, idle_timeout=5.0)
        outcome = asyncio.run(runner.run(config, retry=FAST))
    assert outcome.exit_code == EXIT_OK, outcome.reason
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["attempts"] == 1 and 59 < row["total_seconds"] < 90


def test_a_server_that_stops_answering_after_the_commit_still_fails_at_the_idle_timeout(tmp_path: Path) -> None:
    source = manifest_of(tmp_path / "in", 1, seconds=1.0)
    with SimulatorThread(SimulatorConfig(hang_rate=1.0)) as sim:
        config = config_for(source, tmp_path / "out", sim.url, idle_timeout=1.0, max_attempts=2)
        started = time.monotonic()
        outcome = asyncio.run(runner.run(config, retry=FAST))
    assert outcome.exit_code == runner.EXIT_SOME_FAILED
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["error_type"] == "timeout" and "(--idle-timeout)" in row["error_message"]
    assert row["attempts"] == 2 and time.monotonic() - started < 15


def test_the_item_timeout_follows_the_item_and_the_model() -> None:
    from batchqwen.models import get_model

    model = get_model("qwen3-omni-flash-realtime")
    base = RunConfig(manifest=Path("m.csv"), out=Path("o"))
    assert runner.item_timeout_for(base, model, 30.0) == runner.ITEM_TIMEOUT_MARGIN  # unpaced: the margin
    paced = RunConfig(manifest=Path("m.csv"), out=Path("o"), pace=1.0)
    assert runner.item_timeout_for(paced, model, 2100.0) == 2100.0 + runner.ITEM_TIMEOUT_MARGIN
    lifetime = model.session_lifetime_seconds - runner.SESSION_LIFETIME_MARGIN
    assert runner.item_timeout_for(paced, model, 3 * 3600.0) == lifetime  # never past the model's lifetime
    given = RunConfig(manifest=Path("m.csv"), out=Path("o"), item_timeout=42.0, pace=1.0)
    assert runner.item_timeout_for(given, model, 2100.0) == 42.0


# ----------------------------------------------------------------------------- the output disk


def test_the_journal_never_keeps_half_a_record_when_the_disk_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from batchqwen.errors import OutputUnwritable

    journal = Journal(tmp_path)
    journal.append({"id": "a", "status": "ok"})
    real_write = os.write

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[:7])  # part of the line goes, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OutputUnwritable, match="No space left on device"):
        journal.append({"id": "b", "status": "ok"})
    monkeypatch.setattr(os, "write", real_write)
    journal.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a"]  # whole lines only


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 1 MB tmpfs (needs root, as on CI); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_mid_run_stops_with_the_environment_code_and_a_rerun_finishes(
    tmp_path: Path, small_disk: Path
) -> None:
    source = manifest_of(tmp_path / "in", 80, seconds=0.5)
    out = small_disk / "out"
    with SimulatorThread(SimulatorConfig(word_ms=200)) as sim:  # long answers: WAVs fill the disk fast
        outcome = asyncio.run(runner.run(config_for(source, out, sim.url, concurrency=4), retry=FAST))
        assert outcome.exit_code == EXIT_ENVIRONMENT, outcome.reason
        assert "No space left on device" in outcome.reason and str(small_disk) in outcome.reason
        lines = (out / "journal.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]  # every line whole
        assert 0 < len(records) < 80 and all(r["status"] == "ok" for r in records)
        # free the space: move the folder to a roomy disk and run again there
        roomy = tmp_path / "out2"
        shutil.copytree(out, roomy)
        again = asyncio.run(runner.run(config_for(source, roomy, sim.url, concurrency=4), retry=FAST))
    assert again.exit_code == EXIT_OK, again.reason
    assert set(statuses(roomy).values()) == {"ok"}
