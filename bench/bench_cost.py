"""Client CPU per item, split: decoding (``media.prepare_item``) and session work (``client.run_turn``).

Items are a 10 s speech clip (MP3, 44.1 kHz stereo) plus one 1280x720 JPEG, run one after another in
a client process (``drive.py cost``) against the simulator in another process (no latency), so
``time.process_time`` around each phase is that phase's CPU alone. The first few items warm up caches
and are included; imports are not.

    .venv/bin/python bench/bench_cost.py [--items 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import SimulatorProcess, make_media, run_child, table, write_manifest

HERE = Path(__file__).resolve().parent


def measure(items: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_cost_") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder / "m.csv", items, make_media(folder, seconds=10.0, distinct=4, image=True))
        with SimulatorProcess() as sim:
            sim0 = sim.cpu_seconds()
            data = run_child([str(HERE / "drive.py"), "cost", str(manifest), sim.url, str(items)]).data
            data["sim_cpu"] = (sim.cpu_seconds() - sim0) / items
    return data


def render(data: dict[str, Any]) -> str:
    decode, session = data["decode_cpu"], data["session_cpu"]
    return table(
        [
            "items (10 s MP3 + 1 JPEG)",
            "decode CPU ms/item",
            "session CPU ms/item",
            "client total ms/item",
            "simulator CPU ms/item",
        ],
        [
            [
                str(data["items"]),
                f"{1000 * decode:.1f}",
                f"{1000 * session:.1f}",
                f"{1000 * (decode + session):.1f}",
                f"{1000 * data['sim_cpu']:.1f}",
            ]
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = measure(args.items)
    print(json.dumps(data) if args.json else render(data))


if __name__ == "__main__":
    main()
