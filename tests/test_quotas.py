"""The account's quota: URL mapping, the documented response shape, the simulator's endpoint, and a run
that takes its limits from it. Real sockets on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from media_factory import write_audio

from batchqwen import quotas, runner
from batchqwen.config import RunConfig
from batchqwen.models import get_model
from batchqwen.quotas import ModelQuota, QuotaLookupFailed, fetch_quotas, parse_quotas, quota_url, resolve_limits
from batchqwen.realtime.gateways import REGIONS, gateway_url
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

KEY = "sk-quota-SECRET-0123456789"
FLASH = "qwen3-omni-flash-realtime"
TURBO = "qwen-omni-turbo-realtime"

#: the response of "List model quotas" as the page documents it (output.quotas[].model_limit / workspace_limit)
DOCUMENTED = {
    "request_id": "5b1e5c4e-0000-0000-0000-000000000000",
    "output": {
        "total": 4,
        "page_no": 1,
        "page_size": 20,
        "quotas": [
            {
                "model": "qwen3-omni-flash-realtime",
                "workspace_id": "llm-abc",
                "model_limit": {
                    "request_limit": 60,
                    "request_limit_period": 60,
                    "usage_limit": 100000,
                    "usage_limit_field": "total_tokens",
                    "usage_limit_period": 60,
                    "async_user_queue_limit": None,
                    "async_user_concurrency_limit": None,
                },
                "workspace_limit": None,
            },
            {
                "model": "qwen3-max",
                "workspace_id": "llm-abc",
                "model_limit": {"request_limit": 10, "request_limit_period": 1, "usage_limit": None},
                "workspace_limit": None,
            },
            {
                "model": "qwen-plus",
                "workspace_id": "llm-abc",
                "model_limit": {
                    "request_limit": 600,
                    "request_limit_period": 60,
                    "usage_limit": 1000000,
                    "usage_limit_field": "total_tokens",
                    "usage_limit_period": 60,
                },
                "workspace_limit": {
                    "request_limit": 120,
                    "request_limit_period": 60,
                    "usage_limit": 5000000,
                    "usage_limit_field": "total_tokens",
                    "usage_limit_period": 60,
                },
            },
            {"model": "broken", "model_limit": {"request_limit": "many"}, "workspace_limit": None},
        ],
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the URL


def test_quota_url_is_the_gateways_host_over_https() -> None:
    realtime = "wss://llm-abc.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/realtime?model=x"
    assert quota_url(realtime) == "https://llm-abc.ap-southeast-1.maas.aliyuncs.com/api/v1/quotas"
    assert quota_url("ws://127.0.0.1:8765/api-ws/v1/realtime") == "http://127.0.0.1:8765/api/v1/quotas"
    assert (
        quota_url("wss://dashscope.aliyuncs.com/api-ws/v1/realtime") == "https://dashscope.aliyuncs.com/api/v1/quotas"
    )
    assert quota_url("ws://user:pw@localhost:9/x") == "http://localhost:9/api/v1/quotas"  # no user info
    with pytest.raises(Exception, match="not a ws"):
        quota_url("ftp://example.com/x")


@pytest.mark.parametrize("region", ["ap-southeast-1", "cn-beijing", "cn-hongkong", "eu-central-1", "us-east-1"])
def test_workspace_gateways_map_to_the_pages_endpoints(region: str) -> None:
    # the page's table: https://{WorkspaceId}.{region}.maas.aliyuncs.com/api/v1/quotas
    assert region in REGIONS
    assert quota_url(gateway_url(region, "llm-abc")) == f"https://llm-abc.{region}.maas.aliyuncs.com/api/v1/quotas"


# ----------------------------------------------------------------------------- the documented shape


def test_parse_the_documented_shape() -> None:
    found = parse_quotas(DOCUMENTED)
    assert set(found) == {"qwen3-omni-flash-realtime", "qwen3-max", "qwen-plus"}  # "broken" left out
    flash = found["qwen3-omni-flash-realtime"]
    assert (flash.rpm, flash.tpm, flash.scope, flash.workspace_id) == (60, 100000, "account", "llm-abc")
    qps = found["qwen3-max"]  # request_limit_period 1: QPS, converted to RPM by x60
    assert (qps.requests, qps.request_period, qps.rpm, qps.tpm) == (10, 1.0, 600, None)
    assert qps.describe() == "10 QPS (600 RPM); no token limit; account limit"
    plus = found["qwen-plus"]  # the workspace's own limit is tighter on requests, the account's on tokens
    assert (plus.rpm, plus.tpm, plus.scope) == (120, 1000000, "workspace")
    assert parse_quotas({"output": {"quotas": "nope"}}) == {}
    assert parse_quotas({}) == {}


def test_scaled_to_the_limiters_window() -> None:
    quota = ModelQuota(FLASH, requests=30, request_period=2.0, tokens=1000, token_period=2.0)
    assert quota.requests_per(2.0) == 30 and quota.tokens_per(2.0) == 1000
    assert quota.rpm == 900 and quota.tpm == 30000
    assert quota.describe() == "30 requests per 2 s (900 RPM); 1000 total_tokens per 2 s (30000 TPM); account limit"


def test_resolve_limits_flags_then_quota_then_registry() -> None:
    model = get_model(FLASH)
    quota = ModelQuota(FLASH, requests=30, request_period=60, tokens=None, token_period=60)
    flags = resolve_limits(rpm_flag=5, tpm_flag=500, model=model, quota=quota)
    assert (flags.rpm, flags.tpm, flags.source) == (5, 500, "flags")
    read = resolve_limits(rpm_flag=None, tpm_flag=None, model=model, quota=quota)
    assert (read.rpm, read.tpm, read.source) == (30, None, "quota endpoint")
    mixed = resolve_limits(rpm_flag=None, tpm_flag=777, model=model, quota=quota)
    assert (mixed.rpm, mixed.tpm, mixed.source) == (30, 777, "flags + quota endpoint")
    fallback = resolve_limits(rpm_flag=None, tpm_flag=None, model=model, quota=None, quota_error="HTTP 500")
    assert (fallback.rpm, fallback.tpm, fallback.source) == (60, 100_000, "registry defaults")
    assert "HTTP 500" in fallback.detail
    assert fallback.as_dict() == {"rpm": 60, "tpm": 100_000, "source": "registry defaults", "detail": fallback.detail}


# ----------------------------------------------------------------------------- the simulator's endpoint


def test_simulator_answers_the_quota_it_enforces_in_the_pages_shape() -> None:
    config = SimulatorConfig(api_keys=(KEY,), rpm=30, unpurchased_models=(TURBO,))
    with SimulatorThread(config) as sim:
        headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-WorkSpace": "llm-abc"}
        answer = httpx.get(sim.quota_url, params={"model": FLASH}, headers=headers, timeout=5)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert set(body) == {"request_id", "output"}
        assert body["output"]["total"] == 1 and body["output"]["page_no"] == 1 and body["output"]["page_size"] == 20
        (entry,) = body["output"]["quotas"]
        assert entry["model"] == FLASH and entry["workspace_id"] == "llm-abc" and entry["workspace_limit"] is None
        assert entry["model_limit"] == {
            "request_limit": 30,
            "request_limit_period": 60,
            "usage_limit": 100_000,  # no token quota enforced: the registry default, as a default account has
            "usage_limit_field": "total_tokens",
            "usage_limit_period": 60,
            "async_user_queue_limit": None,
            "async_user_concurrency_limit": None,
        }
        # fuzzy name, pages; the unpurchased model has no quota; an unknown model none either
        listed = httpx.get(sim.quota_url, params={"name": "omni", "page_size": 2}, headers=headers, timeout=5).json()
        assert listed["output"]["page_size"] == 2 and len(listed["output"]["quotas"]) == 2
        names = [q["model"] for q in listed["output"]["quotas"]]
        assert TURBO not in names and all("omni" in name for name in names)
        unknown = httpx.get(sim.quota_url, params={"model": "gpt-4o"}, headers=headers, timeout=5).json()
        assert unknown["output"] == {"total": 0, "page_no": 1, "page_size": 20, "quotas": []}
        refused = httpx.get(sim.quota_url, headers={"Authorization": "Bearer sk-wrong"}, timeout=5)
        assert refused.status_code == 401 and refused.json()["code"] == "InvalidApiKey"
        stats = sim.stats
    assert stats.quota_requests == 4
    assert stats.connections == 0 and stats.sessions == 0  # no realtime session was counted


def test_fetch_quotas_against_the_simulator_and_its_failures() -> None:
    config = SimulatorConfig(api_keys=(KEY,), rpm=30, tpm=5000, window_seconds=2.0)
    with SimulatorThread(config) as sim:
        found = asyncio.run(fetch_quotas(sim.url, KEY, [FLASH, FLASH, "gpt-4o"], timeout=2))
        assert set(found) == {FLASH}
        assert (found[FLASH].requests, found[FLASH].request_period, found[FLASH].tokens) == (30, 2.0, 5000)
        assert found[FLASH].requests_per(2.0) == 30 and found[FLASH].rpm == 900
        with pytest.raises(QuotaLookupFailed) as refused:
            asyncio.run(fetch_quotas(sim.url, "sk-wrong-SECRET-key", [FLASH], timeout=2))
        assert refused.value.status == 401 and "InvalidApiKey" in str(refused.value)
        assert "sk-wrong-SECRET-key" not in str(refused.value)
        sim.start_outage(5, mode="503")
        with pytest.raises(QuotaLookupFailed, match="HTTP 503"):
            asyncio.run(fetch_quotas(sim.url, KEY, [FLASH], timeout=2))
        sim.end_outage()
    started = time.monotonic()
    with pytest.raises(QuotaLookupFailed) as unreachable:
        asyncio.run(fetch_quotas(f"ws://127.0.0.1:{free_port()}/api-ws/v1/realtime", KEY, [FLASH], timeout=2))
    assert time.monotonic() - started < 2.5 and KEY not in str(unreachable.value)


def test_run_limits_sources() -> None:
    model = get_model(FLASH)
    common: dict[str, Any] = {"api_key": KEY, "model": model, "rpm_flag": None, "tpm_flag": None, "workspace": None}
    dead = f"ws://127.0.0.1:{free_port()}/api-ws/v1/realtime"
    fallback = asyncio.run(quotas.run_limits(url=dead, base_url=dead, simulate=False, timeout=1, **common))
    assert (fallback.rpm, fallback.tpm, fallback.source) == (60, 100_000, "registry defaults")
    assert "could not be read" in fallback.detail and KEY not in fallback.detail
    builtin = asyncio.run(quotas.run_limits(url=dead, base_url=None, simulate=True, **common))
    assert (builtin.rpm, builtin.tpm, builtin.source) == (None, None, "built-in simulator (unlimited)")
    # no workspace and no base URL: the documented endpoint is workspace-scoped, so it is not asked
    legacy = asyncio.run(
        quotas.run_limits(
            url="wss://dashscope.aliyuncs.com/api-ws/v1/realtime", base_url=None, simulate=False, **common
        )
    )
    assert legacy.source == "registry defaults" and "could not be read" not in legacy.detail


# ----------------------------------------------------------------------------- a run that keeps to the quota


def test_a_run_without_rpm_keeps_to_the_quota_it_read(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for index in range(70):
        write_audio(folder / f"clip{index}.wav", seconds=0.2, rate=16_000, channels=1, seed=index)
        rows.append({"id": f"item-{index:03d}", "audio": f"clip{index}.wav"})
    source = folder / "manifest.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio"])
        writer.writeheader()
        writer.writerows(rows)
    # 30 sessions per window, the window scaled down to 2 s so that the quota bites within seconds
    config = SimulatorConfig(api_keys=(KEY,), rpm=30, tpm=10**7, window_seconds=2.0)
    with SimulatorThread(config) as sim:
        run_config = RunConfig(
            manifest=source, out=tmp_path / "out", base_url=sim.url, api_key=KEY, concurrency=16, pad_silence_seconds=0
        )
        started = time.monotonic()
        outcome = asyncio.run(runner.run(run_config, window=2.0, window_margin=0.1))
        elapsed = time.monotonic() - started
        stats = sim.stats

    assert outcome.exit_code == 0, outcome.reason
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["limits"]["source"] == "quota endpoint"
    assert (summary["limits"]["rpm"], summary["limits"]["tpm"]) == (30, 10**7)
    assert FLASH in summary["limits"]["detail"] and KEY not in json.dumps(summary)
    assert {row["status"] for row in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()} == {"ok"}
    assert stats.faults.get("throttle", 0) == 0 and stats.handshakes_refused == {}  # no throttling refusal
    assert stats.quota_requests == 1 and stats.sessions == 70
    assert elapsed > 2 * 2.0  # 70 sessions at 30 per 2 s need two full windows of waiting
    assert summary["throttle_cooldowns"] == 0
