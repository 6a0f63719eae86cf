"""The scheduler in-process against the simulator on port 0: retries, resume, permanent and fatal errors."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from media_factory import write_audio

from batchqwen import runner
from batchqwen.config import RunConfig
from batchqwen.errors import (
    BudgetExceeded,
    ConnectionDropped,
    HandshakeRejected,
    InputFileError,
    MediaError,
    ProtocolError,
    ServerError,
    TimedOut,
)
from batchqwen.retry import backoff_delays, classify, is_throttling
from batchqwen.sim.server import Simulator, SimulatorConfig

KEY = "sk-runner-test-key-0001"
FAST = runner.RetryPolicy(base_delay=0.01, max_delay=0.05, throttle_base_delay=0.05, throttle_max_delay=0.1)


def make_manifest(folder: Path, count: int, *, missing: tuple[int, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        path = folder / f"clip{index}.wav"
        if index not in missing:
            write_audio(path, seconds=0.2, rate=16_000, channels=1, seed=index)
        rows.append({"id": f"i{index}", "audio": path.name})
    target = folder / "manifest.csv"
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio"])
        writer.writeheader()
        writer.writerows(rows)
    return target


def config_for(source: Path, out: Path, url: str, **overrides: object) -> RunConfig:
    values: dict[str, object] = {
        "manifest": source,
        "out": out,
        "base_url": url,
        "api_key": KEY,
        "concurrency": 4,
        "rpm": 10**6,
        "tpm": 10**9,
        "idle_timeout": 1.0,
        "pad_silence_seconds": 0.0,
    }
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


def run_with(sim_config: SimulatorConfig, source: Path, out: Path, **overrides: object) -> runner.RunOutcome:
    async def main() -> runner.RunOutcome:
        async with Simulator(sim_config) as sim:
            url = overrides.pop("url_suffix", "")
            return await runner.run(config_for(source, out, sim.url + str(url), **overrides), retry=FAST)

    return asyncio.run(asyncio.wait_for(main(), 60))


# ----------------------------------------------------------------------------- classification (pure)


@pytest.mark.parametrize(
    "exc, kind",
    [
        (ConnectionDropped("abnormal closure 1006"), "retryable"),
        (TimedOut("idle", 1.0), "retryable"),
        (HandshakeRejected(429), "retryable"),
        (HandshakeRejected(503), "retryable"),
        (ServerError("boom", error_type="server_error", code="InternalError"), "retryable"),
        (ServerError("slow down", error_type="invalid_request_error", code="Throttling.RateQuota"), "retryable"),
        (ServerError("bad voice", error_type="invalid_request_error", code="invalid_value"), "permanent"),
        (ServerError("flagged", error_type="data_inspection_error", code="DataInspectionFailed"), "permanent"),
        (MediaError("cannot decode"), "permanent"),
        (InputFileError("missing"), "permanent"),
        (ProtocolError("malformed JSON"), "retryable"),  # a broken frame says nothing about the item
        (HandshakeRejected(401), "fatal"),
        (HandshakeRejected(403), "fatal"),
        (ServerError("bad key", error_type="invalid_request_error", code="InvalidApiKey"), "fatal"),
        (ServerError("pay up", error_type="invalid_request_error", code="Arrearage"), "fatal"),
        (ServerError("no quota", error_type="invalid_request_error", code="AllocationQuota.Exhausted"), "fatal"),
        (BudgetExceeded("cap"), "fatal"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_throttling_is_recognised_and_backoff_is_bounded() -> None:
    assert is_throttling(HandshakeRejected(429))
    assert is_throttling(ServerError("x", code="Throttling"))
    assert not is_throttling(HandshakeRejected(503))
    delays = backoff_delays(base=0.5, cap=4.0, jitter="none")
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittered = backoff_delays(base=0.5, cap=4.0)
    assert all(0.0 <= next(jittered) <= 4.0 for _ in range(200))


# ----------------------------------------------------------------------------- the run


def test_retries_exhausted_give_a_failed_row_with_attempts(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 3)
    outcome = run_with(SimulatorConfig(disconnect_rate=1.0), source, tmp_path / "out", max_attempts=3)
    assert outcome.exit_code == runner.EXIT_SOME_FAILED
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [(r["status"], r["attempts"], r["error_type"]) for r in rows] == [("failed", 3, "connection_dropped")] * 3


def test_throttling_forever_fails_the_item_after_its_own_bound_and_cools_everyone(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 2)
    outcome = run_with(SimulatorConfig(), source, tmp_path / "out", url_suffix="?sim_fault=throttle", max_attempts=2)
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    # throttling does not use up --max-attempts (2): it has its own bound
    assert [(r["status"], r["error_code"], r["attempts"]) for r in rows] == [("failed", "429", FAST.max_throttled)] * 2
    assert outcome.summary["throttle_cooldowns"] > 0


def test_resume_skips_ok_retries_failed_and_notices_changed_content(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 5, missing=(3,))
    out = tmp_path / "out"
    first = run_with(SimulatorConfig(), source, out)
    assert first.exit_code == runner.EXIT_SOME_FAILED
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["i3"]["status"] == "failed" and rows["i3"]["error_type"] == "input_file"
    assert sum(r["status"] == "ok" for r in rows.values()) == 4

    write_audio(tmp_path / "in" / "clip3.wav", seconds=0.2, rate=16_000, channels=1, seed=3)  # now present
    write_audio(tmp_path / "in" / "clip1.wav", seconds=0.4, rate=16_000, channels=1, seed=99)  # changed
    second = run_with(SimulatorConfig(), source, out)
    assert second.exit_code == runner.EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_skipped_already_ok"] == 3
    assert summary["items_run_now"] == 2
    assert summary["items_changed_since_last_ok"] == 1
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["i1"]["input_audio_seconds"] == pytest.approx(0.4, abs=0.01)

    third = run_with(SimulatorConfig(), source, out)
    assert third.summary["items_run_now"] == 0 and third.summary["items_skipped_already_ok"] == 5


def test_budget_cap_refuses_before_any_session(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 3)
    with pytest.raises(BudgetExceeded, match="exceeds --max-cost"):
        run_with(SimulatorConfig(), source, tmp_path / "out", max_cost=1e-9)
    assert not (tmp_path / "out" / "journal.jsonl").exists()


def test_fatal_key_error_stops_at_once_and_keeps_the_key_out(tmp_path: Path) -> None:
    source = make_manifest(tmp_path / "in", 40)
    outcome = run_with(SimulatorConfig(api_keys=("sk-the-right-one",)), source, tmp_path / "out")
    assert outcome.exit_code == runner.EXIT_ABORTED
    assert outcome.reason.startswith("fatal: handshake rejected: the API key was refused")
    assert KEY not in json.dumps(outcome.summary)
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"pending"}  # nothing was billed, nothing marked failed


def test_an_unpurchased_model_fails_its_own_items_and_the_other_models_go_on(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for index in range(12):
        write_audio(folder / f"clip{index}.wav", seconds=0.2, rate=16_000, channels=1, seed=index)
        model = "qwen3.5-omni-plus-realtime" if index % 2 else "qwen3-omni-flash-realtime"
        rows.append({"id": f"i{index}", "audio": f"clip{index}.wav", "model": model})
    source = folder / "manifest.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio", "model"])
        writer.writeheader()
        writer.writerows(rows)
    sim = SimulatorConfig(unpurchased_models=("qwen3.5-omni-plus-realtime",))
    outcome = run_with(sim, source, tmp_path / "out", concurrency=1)
    assert outcome.exit_code == runner.EXIT_SOME_FAILED  # not aborted: the other model's items are ok
    results = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    refused = []
    for index in range(12):
        row = results[f"i{index}"]
        if index % 2 == 0:
            assert row["status"] == "ok"
            continue
        assert row["status"] == "failed" and row["error_code"] == "AccessDenied.Unpurchased"
        refused.append(row)
    # the first of them to reach the service is refused once, never retried; the others open no session
    # (preparation runs ahead and in parallel, so which one is first need not be the first in the manifest)
    assert sorted(row["attempts"] for row in refused) == [0, 0, 0, 0, 0, 1]
    for row in refused:
        if row["attempts"] == 0:
            assert row["error_type"] == "model_unavailable"
            assert "qwen3.5-omni-plus-realtime is not available to this key" in row["error_message"]


def test_decode_processes_auto_picks_processes_for_a_large_compressed_manifest_and_none_for_a_small_wav_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchqwen import manifest as manifest_module

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    small = make_manifest(tmp_path / "wav", 3)
    checked = manifest_module.check_manifest(small)
    assert checked.rows_with_compressed_media == 0
    assert runner.decode_processes_for(config_for(small, tmp_path / "o", "ws://x"), checked) == 0
    big = tmp_path / "mp3" / "manifest.csv"
    big.parent.mkdir()
    write_audio(big.parent / "a.mp3", seconds=0.2, seed=1)
    big.write_text("id,audio\n" + "".join(f"i{n},a.mp3\n" for n in range(200)), encoding="utf-8")
    checked = manifest_module.check_manifest(big)
    assert checked.rows_with_compressed_media == 200
    assert runner.decode_processes_for(config_for(big, tmp_path / "o", "ws://x"), checked) == 3  # a core kept
    limited = config_for(big, tmp_path / "o", "ws://x", limit=10)  # only 10 will run: not worth a pool
    assert runner.decode_processes_for(limited, checked) == 0
    given = config_for(big, tmp_path / "o", "ws://x", decode_processes=0)
    assert runner.decode_processes_for(given, checked) == 0  # a number given is kept
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 1)
    assert runner.decode_processes_for(config_for(big, tmp_path / "o", "ws://x"), checked) == 0


def test_preparation_runs_ahead_but_never_more_than_the_window(tmp_path: Path) -> None:
    """Items are prepared ahead of their sessions, at most the queue plus one per preparer ahead."""
    source = make_manifest(tmp_path / "in", 40)
    prepared: list[str] = []
    started: list[str] = []
    ahead_most = [0]
    original_prepare, original_session = runner.prepare, runner.session

    async def counting_prepare(item, ctx, *, decoder=None):  # type: ignore[no-untyped-def]
        ready = await original_prepare(item, ctx, decoder=decoder)
        prepared.append(item.id)
        ahead_most[0] = max(ahead_most[0], len(prepared) - len(started))
        return ready

    async def counting_session(ready, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(ready.item.id)
        return await original_session(ready, *args, **kwargs)

    runner.prepare, runner.session = counting_prepare, counting_session  # type: ignore[assignment]
    try:
        outcome = run_with(SimulatorConfig(latency_seconds=0.05), source, tmp_path / "out", concurrency=2)
    finally:
        runner.prepare, runner.session = original_prepare, original_session  # type: ignore[assignment]
    assert outcome.exit_code == runner.EXIT_OK
    assert sorted(prepared) == sorted(started) == sorted(f"i{n}" for n in range(40))  # each once
    preparers = max(runner.PREPARERS_PER_CORE * (runner.os.cpu_count() or 1), 0)
    window = 2 + runner.PREPARE_AHEAD + preparers
    assert 2 < ahead_most[0] <= window  # ahead of the sessions, never unbounded


def test_the_ramp_follows_the_quota() -> None:
    from batchqwen.limiter import RUN_RAMP_SECONDS

    assert runner.ramp_seconds_for(32, 60) == RUN_RAMP_SECONDS  # 60 a minute: 32 starts would take 32 s
    assert runner.ramp_seconds_for(8, 600) == pytest.approx(0.8)
    assert runner.ramp_seconds_for(32, 10**6) < 0.01  # a huge quota has no burst to fear
    assert runner.ramp_seconds_for(32, None) == 0.0


def test_a_preparation_that_breaks_stops_the_run_with_its_reason_not_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchqwen import media

    source = make_manifest(tmp_path / "in", 30)
    original = media.prepare_item
    calls = [0]

    def breaking(item, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 10:
            raise RuntimeError("the decoder process died")
        return original(item, **kwargs)

    monkeypatch.setattr(media, "prepare_item", breaking)
    outcome = run_with(SimulatorConfig(), source, tmp_path / "out", decode_processes=0)
    assert outcome.exit_code == runner.EXIT_ABORTED
    assert "preparation failed: RuntimeError: the decoder process died" in outcome.reason
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["status"] for r in rows} <= {"ok", "pending"} and any(r["status"] == "pending" for r in rows)


def test_a_long_outage_never_fails_an_item_however_many_probes_fail(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = make_manifest(tmp_path / "in", 20)
    policy = runner.RetryPolicy(base_delay=0.01, max_delay=0.05, max_connect_failures=2)

    async def main() -> runner.RunOutcome:
        config = config_for(source, tmp_path / "out", f"ws://127.0.0.1:{port}/x", concurrency=2, max_outage=3.0)
        return await runner.run(config, retry=policy)

    outcome = asyncio.run(asyncio.wait_for(main(), 60))
    assert outcome.exit_code == runner.EXIT_ENVIRONMENT
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"pending"}  # probes failed many times over; no item was charged
