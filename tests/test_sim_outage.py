"""The simulator's outage switch over real sockets on 127.0.0.1: refused connections, HTTP 503, windows."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from batchqwen.sim.server import Simulator, SimulatorConfig, SimulatorThread

FLASH = "qwen3-omni-flash-realtime"
KEY = "sk-test"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))


async def session_created(sim: Simulator) -> ClientConnection:
    ws = await connect(sim.url_for(FLASH), additional_headers=HEADERS, open_timeout=2)
    assert '"session.created"' in str(await asyncio.wait_for(ws.recv(), 2))
    return ws


def tcp_connect_errno(port: int) -> int:
    """0 when a TCP connection to 127.0.0.1:port is accepted, else the errno (ECONNREFUSED when refused)."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port))


def test_refuse_outage_is_a_real_econnrefused_then_the_same_port_listens_again() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(api_keys=(KEY,))) as sim:
            port = sim.port
            before = await session_created(sim)  # open across the outage
            await sim.start_outage(0.6)
            assert sim.outage == "refuse"
            assert await asyncio.to_thread(tcp_connect_errno, port) == errno.ECONNREFUSED
            with pytest.raises(ConnectionRefusedError):
                await connect(sim.url_for(FLASH), additional_headers=HEADERS, open_timeout=2)
            # the session opened before the outage is not cut
            await before.send('{"type": "session.update", "session": {"modalities": ["text"]}}')
            assert '"session.updated"' in str(await asyncio.wait_for(before.recv(), 2))
            await asyncio.sleep(0.8)
            assert sim.outage is None and sim.port == port
            after = await session_created(sim)
            await after.close()
            await before.close()
            assert sim.stats.outages == 1
            assert sim.stats.sessions == 2  # nothing reached the process during the window

    run(main)


def test_503_outage_answers_every_handshake_and_is_counted() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(api_keys=(KEY,))) as sim:
            await sim.start_outage(0.5, mode="503")
            for _ in range(3):
                with pytest.raises(InvalidStatus) as caught:
                    await connect(sim.url_for(FLASH), additional_headers=HEADERS, open_timeout=2)
                assert caught.value.response.status_code == 503
            with pytest.raises(RuntimeError, match="already in progress"):
                await sim.start_outage(1.0)
            await asyncio.sleep(0.7)
            ws = await session_created(sim)
            await ws.close()
            assert sim.stats.outage_refusals == 3
            assert sim.stats.handshakes_refused == {503: 3}
            assert sim.stats.outages == 1

    run(main)


def test_scheduled_window_relative_to_start() -> None:
    config = SimulatorConfig(api_keys=(KEY,), outage_mode="refuse", outage_start_seconds=0.4, outage_seconds=0.6)

    async def main() -> None:
        async with Simulator(config) as sim:
            started = time.monotonic()
            ws = await session_created(sim)  # before the window
            await ws.close()
            await asyncio.sleep(max(0.0, started + 0.55 - time.monotonic()))
            assert sim.outage == "refuse"
            assert await asyncio.to_thread(tcp_connect_errno, sim.port) == errno.ECONNREFUSED
            await asyncio.sleep(max(0.0, started + 1.2 - time.monotonic()))
            assert sim.outage is None
            ws = await session_created(sim)
            await ws.close()
            assert sim.stats.outages == 1

    run(main)


def test_end_outage_early_and_close_during_an_outage() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig()) as sim:
            await sim.start_outage(30)
            await sim.end_outage()
            ws = await session_created(sim)
            await ws.close()
            await sim.start_outage(30)  # closing the simulator mid-outage ends it cleanly
        assert sim.outage is None

    run(main)


def test_thread_runner_outage_for_synchronous_callers() -> None:
    with SimulatorThread(SimulatorConfig()) as sim:
        port = sim.simulator.port
        sim.start_outage(0.5)
        assert tcp_connect_errno(port) == errno.ECONNREFUSED
        time.sleep(0.7)
        assert tcp_connect_errno(port) == 0
        sim.start_outage(5, mode="503")
        sim.end_outage()
        assert sim.stats.outages == 2


def test_outage_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="outage_mode"):
        SimulatorConfig(outage_mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        SimulatorConfig(outage_mode="503", outage_seconds=-1)
