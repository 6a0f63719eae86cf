"""Concurrency scaling: items per second of ``batchqwen run`` against the simulator in another process.

Items are 5 s of speech (MP3, 44.1 kHz stereo, decoded per item; ``--format wav``: 16 kHz mono WAV);
the simulator answers each response
after a fixed 1 s (``latency_seconds=1.0``), with no quota; the limiter is given rpm/tpm so high that
it never paces. ``t1`` (the time of one item alone) is measured at concurrency 1; the ideal at
concurrency c is c / t1 items per second. With N items and equal item times the run is ceil(N / c)
waves, so the reachable ideal is N / (ceil(N / c) * t1): both efficiencies are reported.

    .venv/bin/python bench/bench_scaling.py [--items 400] [--single 20] [--levels 1,8,32,128,256]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import SimulatorProcess, make_media, run_child, table, write_manifest

HERE = Path(__file__).resolve().parent


def measure(
    items: int,
    single: int,
    levels: list[int],
    *,
    latency: float = 1.0,
    fmt: str = "mp3",
    chunk_ms: int = 100,
    decode_processes: int = 0,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        folder = Path(tmp)
        media = make_media(folder, seconds=5.0, distinct=8, fmt=fmt)
        with SimulatorProcess(latency_seconds=latency) as sim:
            t1 = None
            for c in levels:
                n = single if c == 1 else items
                manifest = write_manifest(folder / f"m{c}.csv", n, media, prefix=f"c{c}")
                sim_cpu0 = sim.cpu_seconds()
                child = run_child(
                    [str(HERE / "drive.py"), "runner", str(manifest), sim.url, str(c), str(folder / f"out{c}")],
                    env={"BENCH_CHUNK_MS": str(chunk_ms), "BENCH_DECODE_PROCESSES": str(decode_processes)},
                )
                sim_cpu = sim.cpu_seconds() - sim_cpu0
                data = child.data
                rate = data["ok"] / data["session_wall"]
                if c == 1:
                    t1 = data["session_wall"] / n
                assert t1 is not None
                ideal = c / t1
                waves_ideal = n / (math.ceil(n / c) * t1)
                rows.append(
                    {
                        "concurrency": c,
                        "items": n,
                        "ok": data["ok"],
                        "session_wall": data["session_wall"],
                        "items_per_s": rate,
                        "ideal": ideal,
                        "efficiency": rate / ideal,
                        "efficiency_waves": rate / waves_ideal,
                        "mean_item_s": data["mean_item_seconds"],
                        "client_cpu_per_item_ms": 1000 * data["cpu"] / n,
                        "client_cpu_share": child.cpu_seconds / child.wall_seconds,
                        "sim_cpu_share": sim_cpu / child.wall_seconds,
                        "client_rss_mb": child.max_rss_mb,
                    }
                )
                print(f"  c={c}: {rate:.1f} items/s ({rate / ideal:.2f} of ideal)", file=sys.stderr, flush=True)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = [
        "concurrency",
        "items",
        "ok",
        "session s",
        "items/s",
        "ideal c/t1",
        "efficiency",
        "eff. vs waves",
        "mean item s",
        "client CPU ms/item",
        "client CPU",
        "sim CPU",
        "client RSS MB",
    ]
    body = [
        [
            str(r["concurrency"]),
            str(r["items"]),
            str(r["ok"]),
            f"{r['session_wall']:.2f}",
            f"{r['items_per_s']:.1f}",
            f"{r['ideal']:.1f}",
            f"{r['efficiency']:.2f}",
            f"{r['efficiency_waves']:.2f}",
            f"{r['mean_item_s']:.2f}",
            f"{r['client_cpu_per_item_ms']:.1f}",
            f"{100 * r['client_cpu_share']:.0f}%",
            f"{100 * r['sim_cpu_share']:.0f}%",
            f"{r['client_rss_mb']:.0f}",
        ]
        for r in rows
    ]
    return table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--single", type=int, default=20, help="items at concurrency 1")
    parser.add_argument("--levels", default="1,8,32,128,256")
    parser.add_argument(
        "--format", default="mp3", choices=["mp3", "wav"], help="mp3 44.1 kHz stereo or wav 16 kHz mono"
    )
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per append event (run --chunk-ms)")
    parser.add_argument("--decode-processes", type=int, default=0, help="run --decode-processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    rows = measure(
        args.items, args.single, levels, fmt=args.format, chunk_ms=args.chunk_ms, decode_processes=args.decode_processes
    )
    print(json.dumps(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
