"""``batchqwen check`` against the simulator on 127.0.0.1: real sockets, the CLI through CliRunner."""

from __future__ import annotations

import asyncio
import csv
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batchqwen.check import CheckSettings, check_models, models_to_check
from batchqwen.cli import main
from batchqwen.models import REGISTRY
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

KEY = "sk-check-SECRET-0123456789abcdef"
FLASH = "qwen3-omni-flash-realtime"
PLUS = "qwen3.5-omni-plus-realtime"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check(*args: str, key: str = KEY) -> tuple[Result, float]:
    started = time.monotonic()
    result = CliRunner().invoke(main, ["check", *args], env={"DASHSCOPE_API_KEY": key, "DASHSCOPE_WORKSPACE": None})
    return result, time.monotonic() - started


def test_ok_for_a_valid_key_and_model_and_nothing_billed() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        result, _ = check("--base-url", sim.url)
        stats = sim.stats
        port = sim.simulator.port
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[0]
    assert line.startswith(f"{FLASH}: ok (host 127.0.0.1:{port}, handshake ")
    assert "session.updated after" in line
    assert KEY not in result.output
    # one session, no response asked for, none made, nothing answered
    assert stats.sessions == 1 and stats.responses_completed == 0 and stats.responses_cancelled == 0
    assert stats.delivered == {}
    assert f"quotas (from http://127.0.0.1:{port}/api/v1/quotas):" in result.output


def test_refused_key_exits_3_in_plain_words_within_5_s() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        result, elapsed = check("--base-url", sim.url, key="sk-wrong-SECRET-key")
    assert result.exit_code == 3, result.output
    assert f"{FLASH}: key refused: the API key was refused (HTTP 401" in result.output
    assert "sk-wrong-SECRET-key" not in result.output
    assert elapsed < 5


def test_unknown_model_exits_1() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        result, elapsed = check("--base-url", sim.url, "--model", "gpt-4o")
        stats = sim.stats
    assert result.exit_code == 1, result.output
    assert "gpt-4o: model refused: unknown model: the service has no model 'gpt-4o' (Model.NotExist" in result.output
    assert stats.responses_completed == 0 and elapsed < 5


def test_unpurchased_model_exits_1_and_is_not_in_the_quotas() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), unpurchased_models=(PLUS,))) as sim:
        result, elapsed = check("--base-url", sim.url, "--model", PLUS)
    assert result.exit_code == 1, result.output
    assert f"{PLUS}: model refused: the model is not purchased for this account (AccessDenied.Unpurchased" in (
        result.output
    )
    assert f"  {PLUS}: none listed for this key" in result.output
    assert elapsed < 5


def test_a_port_nobody_listens_on_exits_4_within_5_s() -> None:
    port = free_port()
    result, elapsed = check("--base-url", f"ws://127.0.0.1:{port}/api-ws/v1/realtime")
    assert result.exit_code == 4, result.output
    assert f"{FLASH}: unreachable: cannot connect to 127.0.0.1:{port}: connection refused" in result.output
    assert f"quotas: not read: cannot reach http://127.0.0.1:{port}/api/v1/quotas" in result.output
    assert elapsed < 5


def test_an_outage_answering_503_exits_4() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        sim.start_outage(30, mode="503")
        result, elapsed = check("--base-url", sim.url)
        sim.end_outage()
    assert result.exit_code == 4, result.output
    assert "unreachable: the service at 127.0.0.1" in result.output and "is unavailable (HTTP 503" in result.output
    assert elapsed < 5


def test_prints_the_quota_of_30_sessions_a_minute() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), rpm=30, tpm=50_000)) as sim:
        result, _ = check("--base-url", sim.url)
    assert result.exit_code == 0, result.output
    assert (
        f"  {FLASH}: 30 requests per 60 s (30 RPM); 50000 total_tokens per 60 s (50000 TPM); account limit"
        in result.output
    )


def test_quota_refusal_exits_1(tmp_path: Path) -> None:
    # a manifest naming two models; the quota admits one session a minute: the other is refused
    source = tmp_path / "manifest.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "audio", "model"], ["a", "a.wav", FLASH], ["b", "b.wav", PLUS], ["c", "c.wav", ""]])
    assert models_to_check(FLASH, source) == [FLASH, PLUS]
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), rpm=1)) as sim:
        result, elapsed = check(str(source), "--base-url", sim.url)
        stats = sim.stats
    assert result.exit_code == 1, result.output
    assert "quota refused: the quota refused the session (HTTP 429" in result.output
    assert stats.sessions == 1 and stats.responses_completed == 0 and elapsed < 5


def test_every_registered_model_and_family_is_usable_on_the_simulator() -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        report = asyncio.run(check_models(list(REGISTRY), CheckSettings(base_url=sim.url, api_key=KEY)))
        stats = sim.stats
    assert [(c.model, c.outcome, c.message) for c in report.models] == [(name, "ok", "") for name in REGISTRY]
    assert report.exit_code == 0
    assert stats.sessions == len(REGISTRY) and stats.responses_completed == 0


def test_simulate_flag_and_missing_key() -> None:
    result = CliRunner().invoke(main, ["check", "--simulate"], env={"DASHSCOPE_API_KEY": None})
    assert result.exit_code == 0, result.output
    assert f"{FLASH}: ok (host 127.0.0.1:" in result.output
    result = CliRunner().invoke(main, ["check"], env={"DASHSCOPE_API_KEY": None})
    assert result.exit_code == 2 and "no API key" in result.output


def test_without_a_workspace_the_quota_is_not_asked() -> None:
    settings = CheckSettings(base_url=f"ws://127.0.0.1:{free_port()}/x", api_key=KEY, ask_quota=False)
    report = asyncio.run(check_models([FLASH], settings))
    assert report.exit_code == 4
    assert report.lines()[-1].startswith("quotas: not read (no workspace")


@pytest.mark.parametrize("bad", ["http://example.com/x", ""])
def test_a_bad_base_url_is_a_usage_error(bad: str) -> None:
    result, _ = check("--base-url", bad) if bad else check("--model", " ")
    assert result.exit_code == 2, result.output
