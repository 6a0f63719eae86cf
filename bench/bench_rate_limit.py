"""The limiter against a simulator that enforces a sessions-per-window quota: how close to the quota, how many refusals.

    .venv/bin/python bench/bench_rate_limit.py            # two scaled-down windows + one real minute (~4 min)
    .venv/bin/python bench/bench_rate_limit.py --quick    # scaled-down windows only (~1 min)

Each row: workers loop acquire -> a real session (run_turn over a socket) -> release, for ``windows`` windows;
the simulator (own thread and loop) refuses with HTTP 429 past ``quota`` sessions per sliding
window (``window_seconds``).

Figures:
- in_k_windows: sessions accepted in the first k windows after the first start, over k * quota (bursty
  sliding windows flatter this one; 1.0 is the most a client may do).
- long_run: window / mean(start[i + quota] - start[i]): the steady rate as a fraction of the quota; at best
  window / (window + margin), since the limiter adds the margin to every window. What a long nightly run gets.
- refused: handshakes the simulator refused with 429 (the goal is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import numpy as np

from batchqwen.errors import HandshakeRejected
from batchqwen.items import PreparedInput, TurnRequest
from batchqwen.limiter import Limiter
from batchqwen.models import get_model
from batchqwen.realtime.client import ClientSettings, run_turn
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

MODEL = "qwen3-omni-flash-realtime"
KEY = "sk-bench"


@dataclass
class Row:
    window: float
    quota: int
    margin: float
    concurrency: int
    windows: int
    accepted: int = 0
    refused: int = 0
    in_k_windows: float = 0.0
    long_run: float = 0.0
    seconds: float = 0.0


def pcm(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


async def drive(row: Row, url: str) -> list[float]:
    model = get_model(MODEL)
    request = TurnRequest(
        model=model, voice=model.default_voice, modalities=("text",), media=PreparedInput(pcm16=pcm(0.2))
    )
    settings = ClientSettings(base_url=url, api_key=KEY, idle_timeout=10.0)
    limiter = Limiter(concurrency=row.concurrency, rpm=row.quota, tpm=None, window=row.window, margin=row.margin)
    starts: list[float] = []
    t0 = time.monotonic()
    deadline = t0 + row.windows * row.window + 2 * row.margin

    async def worker() -> None:
        while True:
            reservation = await limiter.acquire(tokens=0, cost=0.0)
            if time.monotonic() >= deadline:
                limiter.release(reservation, tokens=None, cost=0.0)
                return
            started = time.monotonic()
            try:
                await run_turn(request, settings)
                starts.append(started)
            except HandshakeRejected as exc:
                if exc.status != 429:
                    raise
                row.refused += 1
            limiter.release(reservation, tokens=None, cost=0.0)

    await asyncio.gather(*(worker() for _ in range(row.concurrency)))
    row.seconds = time.monotonic() - t0
    return starts


def measure(row: Row) -> Row:
    config = SimulatorConfig(api_keys=(KEY,), rpm=row.quota, window_seconds=row.window)
    with SimulatorThread(config) as sim:
        starts = asyncio.run(drive(row, sim.url))
        refused = sim.stats.handshakes_refused.get(429, 0)
    starts.sort()
    row.accepted = len(starts)
    row.refused = max(row.refused, refused)
    first = starts[0]
    row.in_k_windows = sum(1 for s in starts if s < first + row.windows * row.window) / (row.windows * row.quota)
    gaps = [starts[i + row.quota] - starts[i] for i in range(len(starts) - row.quota)]
    row.long_run = row.window / (sum(gaps) / len(gaps)) if gaps else 0.0
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down windows only")
    args = parser.parse_args()
    rows = [
        Row(window=10.0, quota=60, margin=0.5 * 10 / 60, concurrency=8, windows=4),
        Row(window=10.0, quota=200, margin=0.5 * 10 / 60, concurrency=16, windows=4),
    ]
    if not args.quick:
        rows.append(Row(window=60.0, quota=60, margin=0.5, concurrency=8, windows=3))
    header = (
        f"{'window s':>8} {'quota':>6} {'margin s':>8} {'conc':>4} {'windows':>7} {'accepted':>8} "
        f"{'refused':>7} {'in_k_win':>8} {'long_run':>8} {'secs':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        measure(row)
        print(
            f"{row.window:8.1f} {row.quota:6d} {row.margin:8.3f} {row.concurrency:4d} {row.windows:7d} "
            f"{row.accepted:8d} {row.refused:7d} {row.in_k_windows:8.3f} {row.long_run:8.3f} {row.seconds:6.1f}",
            flush=True,
        )
    sys.exit(0 if all(r.refused == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()
