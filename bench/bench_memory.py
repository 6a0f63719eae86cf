"""Peak RSS of the batchqwen process (the CLI in a subprocess; ru_maxrss from wait4).

* dry run (``batchqwen run --dry-run``) over generated CSV manifests of growing size (up to 1,000,000
  rows reusing a few small WAV and JPEG files);
* simulated run (``batchqwen run --base-url`` to the simulator in another process) of growing size at
  concurrency 64, 1 s WAV items: memory must stay flat, not grow with the manifest.

    .venv/bin/python bench/bench_memory.py [--dry-rows 10000,1000000] [--sim-items 500,5000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import API_KEY, SimulatorProcess, make_media, run_child, table, write_manifest

CLI = "import sys; from batchqwen.cli import main; sys.exit(main())"


def dry_run(rows_list: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_mem_dry_") as tmp:
        folder = Path(tmp)
        media = make_media(folder, seconds=2.0, distinct=4, image=True, fmt="wav")
        for rows in rows_list:
            manifest = write_manifest(folder / f"m{rows}.csv", rows, media)
            child = run_child(["-c", CLI, "run", str(manifest), "--dry-run", "--out", str(folder / f"o{rows}"), "-q"])
            out.append(
                {
                    "kind": "dry run",
                    "items": rows,
                    "concurrency": "-",
                    "wall": child.wall_seconds,
                    "items_per_s": rows / child.wall_seconds,
                    "peak_rss_mb": child.max_rss_mb,
                }
            )
    return out


def simulated(items_list: list[int], concurrency: int = 64) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_mem_sim_") as tmp:
        folder = Path(tmp)
        media = make_media(folder, seconds=1.0, distinct=4, fmt="wav")
        with SimulatorProcess() as sim:
            for items in items_list:
                manifest = write_manifest(folder / f"m{items}.csv", items, media)
                args = [
                    "-c",
                    CLI,
                    "run",
                    str(manifest),
                    "--base-url",
                    sim.url,
                    "--out",
                    str(folder / f"o{items}"),
                    "-c",
                    str(concurrency),
                    "--rpm",
                    "1000000000",
                    "--tpm",
                    "1000000000",
                    "-q",
                ]
                child = run_child(args, env={"DASHSCOPE_API_KEY": API_KEY})
                out.append(
                    {
                        "kind": "simulated run",
                        "items": items,
                        "concurrency": str(concurrency),
                        "wall": child.wall_seconds,
                        "items_per_s": items / child.wall_seconds,
                        "peak_rss_mb": child.max_rss_mb,
                    }
                )
    return out


def render(rows: list[dict[str, Any]]) -> str:
    return table(
        ["run", "items", "concurrency", "wall s (whole process)", "items/s", "peak RSS MB"],
        [
            [
                r["kind"],
                f"{r['items']:,}",
                r["concurrency"],
                f"{r['wall']:.1f}",
                f"{r['items_per_s']:,.0f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-rows", default="10000,1000000")
    parser.add_argument("--sim-items", default="500,5000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = dry_run([int(n) for n in args.dry_rows.split(",") if n])
    rows += simulated([int(n) for n in args.sim_items.split(",") if n])
    print(json.dumps(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
