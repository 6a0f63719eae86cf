"""One row per protocol family: items/s and client CPU per item of ``batchqwen run`` at concurrency 32.

Each family's current model runs the same manifest against the simulator in another process: 5 s of
speech-like audio per item (16 kHz mono WAV, so decoding costs next to nothing and the protocol path is
what is measured), a fixed 1 s latency before each response, no quota, rpm/tpm so high that the limiter
never paces. LiveTranslate models translate into English (``--translate-to en``): the simulator's speech
detection answers every utterance it hears and the client drains them to ``session.finished``. The
last column is the client CPU per item relative to the 2025 Omni path (qwen3-omni-flash-realtime).

    .venv/bin/python bench/bench_families.py [--items 192] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import SimulatorProcess, make_media, run_child, table, write_manifest

HERE = Path(__file__).resolve().parent

#: family -> (its current model, --translate-to)
FAMILY_MODELS: dict[str, tuple[str, str]] = {
    "omni": ("qwen3-omni-flash-realtime", ""),
    "omni (3.5)": ("qwen3.5-omni-plus-realtime", ""),
    "omni_v38": ("qwen3.8-omni-flash-realtime", ""),
    "qwen_audio": ("qwen-audio-3.0-realtime-plus", ""),
    "livetranslate": ("qwen3-livetranslate-flash-realtime", "en"),
    "livetranslate_v38": ("qwen3.8-livetranslate-flash-realtime", "en"),
}


def measure(items: int, concurrency: int, *, latency: float = 1.0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_families_") as tmp:
        folder = Path(tmp)
        media = make_media(folder, seconds=5.0, distinct=8, fmt="wav")
        manifest = write_manifest(folder / "m.csv", items, media)
        with SimulatorProcess(latency_seconds=latency) as sim:
            for family, (model, target) in FAMILY_MODELS.items():
                out = folder / f"out-{model}"
                child = run_child(
                    [str(HERE / "drive.py"), "runner", str(manifest), sim.url, str(concurrency), str(out)],
                    env={"BENCH_MODEL": model, "BENCH_TRANSLATE_TO": target},
                )
                data = child.data
                rows.append(
                    {
                        "family": family,
                        "model": model,
                        "items": items,
                        "ok": data["ok"],
                        "items_per_s": data["ok"] / data["session_wall"],
                        "mean_item_s": data["mean_item_seconds"],
                        "client_cpu_per_item_ms": 1000 * data["cpu"] / items,
                    }
                )
                print(f"  {model}: {rows[-1]['items_per_s']:.1f} items/s", file=sys.stderr, flush=True)
    base = rows[0]["client_cpu_per_item_ms"]
    for row in rows:
        row["cpu_vs_omni"] = row["client_cpu_per_item_ms"] / base
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = ["family", "model", "items", "ok", "items/s", "mean item s", "client CPU ms/item", "CPU vs omni"]
    body = [
        [
            r["family"],
            r["model"],
            str(r["items"]),
            str(r["ok"]),
            f"{r['items_per_s']:.1f}",
            f"{r['mean_item_s']:.2f}",
            f"{r['client_cpu_per_item_ms']:.1f}",
            f"{r['cpu_vs_omni']:.2f}",
        ]
        for r in rows
    ]
    return table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.items, args.concurrency)
    print(json.dumps(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
