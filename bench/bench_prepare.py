"""Preparation ahead of the sessions: 32 sessions of 5 s MP3 + one 1280x720 JPEG, before and after.

The version before the speed issue (an export of its commit, run through ``drive.py`` with
``BENCH_PACKAGE_ROOT``) and the current one run the same manifest against the simulator in another
process (1 s latency before each response, no quota; rpm/tpm so high that the limiter never paces), with
every other option at its default: no ``--decode-processes`` given. ``t1`` (one item alone) is measured
at concurrency 1 for each version; the ideal at concurrency c is c / t1, and with N = k * c items the
run is k waves, so the ideal is also the wave bound.

    .venv/bin/python bench/bench_prepare.py [--old COMMIT] [--items 160] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, SimulatorProcess, make_media, run_child, table, write_manifest

HERE = Path(__file__).resolve().parent
BEFORE = "3b1769c"  # the last commit before the speed issue's preparation stage


def export(commit: str, folder: Path) -> Path:
    """The ``batchqwen`` package as it was at ``commit``, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "batchqwen"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def measure(items: int, concurrency: int, *, old: str = BEFORE, single: int = 8) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        folder = Path(tmp)
        media = make_media(folder, seconds=5.0, distinct=8, image=True, fmt="mp3")
        versions = {f"before ({old})": str(export(old, folder / "old")), "now": ""}
        with SimulatorProcess(latency_seconds=1.0) as sim:
            for name, root in versions.items():
                env = {"BENCH_PACKAGE_ROOT": root} if root else {}
                one = write_manifest(folder / f"one-{len(rows)}.csv", single, media, prefix="one")
                child = run_child(
                    [str(HERE / "drive.py"), "runner", str(one), sim.url, "1", str(folder / f"o1-{len(rows)}")], env=env
                )
                t1 = child.data["session_wall"] / single
                many = write_manifest(folder / f"many-{len(rows)}.csv", items, media, prefix="many")
                out = folder / f"oc-{len(rows)}"
                child = run_child(
                    [str(HERE / "drive.py"), "runner", str(many), sim.url, str(concurrency), str(out)], env=env
                )
                data = child.data
                rate = data["ok"] / data["session_wall"]
                rows.append(
                    {
                        "version": name,
                        "items": items,
                        "ok": data["ok"],
                        "t1": t1,
                        "items_per_s": rate,
                        "ideal": concurrency / t1,
                        "efficiency": rate / (concurrency / t1),
                        "client_cpu_per_item_ms": 1000 * data["cpu"] / items,
                        "client_cpu_share": child.cpu_seconds / child.wall_seconds,
                    }
                )
                print(f"  {name}: {rate:.1f} items/s ({rows[-1]['efficiency']:.2f} of ideal)", file=sys.stderr)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = ["version", "items", "ok", "t1 s", "items/s", "ideal c/t1", "efficiency", "client CPU ms/item", "CPU"]
    body = [
        [
            r["version"],
            str(r["items"]),
            str(r["ok"]),
            f"{r['t1']:.2f}",
            f"{r['items_per_s']:.1f}",
            f"{r['ideal']:.1f}",
            f"{r['efficiency']:.2f}",
            f"{r['client_cpu_per_item_ms']:.1f}",
            f"{100 * r['client_cpu_share']:.0f}%",
        ]
        for r in rows
    ]
    return table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=BEFORE, help="the commit to compare with")
    parser.add_argument("--items", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.items, args.concurrency, old=args.old)
    print(json.dumps(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
