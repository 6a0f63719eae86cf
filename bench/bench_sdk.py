"""batchqwen against the official dashscope SDK: same items, same simulator process, same concurrency.

Items are 5 s of speech (MP3, 44.1 kHz stereo) plus one 1280x720 JPEG. The SDK is driven as its samples
do (``OmniRealtimeConversation``, a callback object, a thread per session: connect, update_session,
append_audio in 100 ms chunks, append_video, commit, create_response, wait for response.done,
end_session, close), decoding with the same ``media.prepare_item`` and writing a WAV per item. Neither
client paces audio in real time (the samples do; here both stream as fast as the socket takes it).
Two simulator settings: a fixed 1 s response latency (latency-bound) and none (CPU-bound).

    .venv/bin/python bench/bench_sdk.py [--items 160] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import SimulatorProcess, make_media, run_child, table, write_manifest

HERE = Path(__file__).resolve().parent


def measure(items: int, concurrency: int, latencies: tuple[float, ...] = (1.0, 0.0)) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_sdk_") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder / "m.csv", items, make_media(folder, seconds=5.0, distinct=8, image=True))
        for latency in latencies:
            with SimulatorProcess(latency_seconds=latency) as sim:
                for client in ("runner", "sdk"):
                    out = folder / f"out_{client}_{latency:g}"
                    sim0 = sim.cpu_seconds()
                    child = run_child(
                        [str(HERE / "drive.py"), client, str(manifest), sim.url, str(concurrency), str(out)]
                    )
                    data = child.data
                    rows.append(
                        {
                            "client": "batchqwen" if client == "runner" else "dashscope SDK",
                            "latency": latency,
                            "concurrency": concurrency,
                            "items": data["items"],
                            "ok": data["ok"],
                            "session_wall": data["session_wall"],
                            "items_per_s": data["ok"] / data["session_wall"],
                            "cpu_ms_per_item": 1000 * data["cpu"] / data["items"],
                            "process_cpu_s": child.cpu_seconds,
                            "sim_cpu_ms_per_item": 1000 * (sim.cpu_seconds() - sim0) / data["items"],
                            "threads_rss_mb": child.max_rss_mb,
                        }
                    )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = [
        "client",
        "sim latency s",
        "concurrency",
        "items",
        "ok",
        "session s",
        "items/s",
        "client CPU ms/item",
        "sim CPU ms/item",
        "peak RSS MB",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["client"],
                f"{r['latency']:g}",
                str(r["concurrency"]),
                str(r["items"]),
                str(r["ok"]),
                f"{r['session_wall']:.2f}",
                f"{r['items_per_s']:.1f}",
                f"{r['cpu_ms_per_item']:.1f}",
                f"{r['sim_cpu_ms_per_item']:.1f}",
                f"{r['threads_rss_mb']:.0f}",
            ]
        )
    ratios = []
    for latency in sorted({r["latency"] for r in rows}, reverse=True):
        ours = next(r for r in rows if r["latency"] == latency and r["client"] == "batchqwen")
        sdk = next(r for r in rows if r["latency"] == latency and r["client"] != "batchqwen")
        ratios.append(
            [
                f"{latency:g}",
                f"{ours['items_per_s'] / sdk['items_per_s']:.2f}x",
                f"{sdk['cpu_ms_per_item'] / ours['cpu_ms_per_item']:.2f}x",
            ]
        )
    return (
        table(header, body)
        + "\n\n"
        + table(["sim latency s", "throughput batchqwen / SDK", "CPU per item SDK / batchqwen"], ratios)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.items, args.concurrency)
    print(json.dumps(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
