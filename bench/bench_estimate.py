"""``batchqwen estimate`` at scale, before and now: 10,000 rows naming 10,000 distinct files, and
1,000,000 rows over those files, each timed as a whole command (start-up included) in its own process.

The files are small and real: WAV, MP3 and FLAC speech (0.5-4 s, in turn), and on every other row a JPEG
or a PNG (64-1280 px). The version before the speed issue runs from an export of its commit (as
``bench/drive.py`` does with ``BENCH_PACKAGE_ROOT``), beside the current one, in one run.

    .venv/bin/python bench/bench_estimate.py [--rows 10000] [--million] [--old COMMIT] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import PYTHON, ROOT, table
from media_factory import write_audio

BEFORE = "3b1769c"  # the last commit before the speed issue
AUDIO_KINDS = ("wav", "mp3", "flac")
IMAGE_KINDS = ("jpg", "png")

# the command, through the package at BENCH_PACKAGE_ROOT when it is set (the older version)
_LAUNCH = (
    "import os, sys\n"
    "root = os.environ.get('BENCH_PACKAGE_ROOT')\n"
    "if root:\n"
    "    sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in type(f).__module__]\n"
    "    sys.path.insert(0, root)\n"
    "from batchqwen.cli import main\n"
    "sys.argv = ['batchqwen', *sys.argv[1:]]\n"
    "main()\n"
)


def make_files(folder: Path, count: int) -> list[tuple[str, str]]:
    """``count`` distinct audio files, and an image for every other one: (audio, image) names."""
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pairs = []
    for n in range(count):
        audio = media / f"a{n}.{AUDIO_KINDS[n % 3]}"
        if not audio.exists():
            write_audio(audio, seconds=float(rng.uniform(0.5, 4.0)), rate=16_000, channels=1, seed=n)
        image = ""
        if n % 2:
            path = media / f"i{n}.{IMAGE_KINDS[(n // 2) % 2]}"
            if not path.exists():
                size = (int(rng.integers(64, 1280)), int(rng.integers(64, 1280)))
                Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3))).save(path)
            image = f"media/{path.name}"
        pairs.append((f"media/{audio.name}", image))
    return pairs


def write_manifest(path: Path, rows: int, pairs: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio", "image"])
        for n in range(rows):
            writer.writerow([f"item-{n}", *pairs[n % len(pairs)]])
    return path


def timed_estimate(manifest: Path, out: Path, package_root: str = "") -> dict[str, Any]:
    """One ``batchqwen estimate`` as a whole process: wall seconds and the child's peak RSS."""
    env = {**os.environ, "BENCH_PACKAGE_ROOT": package_root} if package_root else dict(os.environ)
    env.pop("BENCH_PACKAGE_ROOT", None) if not package_root else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "-c", _LAUNCH, "estimate", str(manifest), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"estimate failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall": wall, "rss_mb": max(rss, before) / 1024}


def export(commit: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "batchqwen"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def peak_rss(manifest: Path, out: Path) -> float:
    """Peak RSS (MB) of one estimate in a fresh process (RUSAGE_CHILDREN keeps the largest child's)."""
    probe = (
        "import resource, subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {_LAUNCH!r}, 'estimate', sys.argv[1], '--out', sys.argv[2]],"
        " check=True, capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    done = subprocess.run([PYTHON, "-c", probe, str(manifest), str(out)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def duration_methods(parquet: Path) -> dict[str, int]:
    """Rows per ``duration_method`` (header, file_size, packet_scan, decode, ...) of an estimate."""
    import pyarrow.parquet as pq

    names = pq.read_table(parquet).schema.names
    if "duration_method" not in names:
        return {}
    counts: dict[str, int] = {}
    for value in pq.read_table(parquet, columns=["duration_method"]).column(0).to_pylist():
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--old", default=BEFORE)
    parser.add_argument("--million", action="store_true", help="also 1,000,000 rows over the same files")
    parser.add_argument("--keep", type=Path, default=None, help="make (or reuse) the files in this folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_estimate_"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pairs = make_files(folder, args.rows)
    print(f"files ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    distinct = write_manifest(folder / "distinct.csv", args.rows, pairs)
    one = write_manifest(folder / "one.csv", 1, pairs)
    old_root = str(export(args.old, folder / "old"))
    rows: list[dict[str, Any]] = []
    for label, root in ((f"before ({args.old})", old_root), ("now", "")):
        timed_estimate(one, folder / "warm", root)  # warm the file cache and the imports
        small = timed_estimate(one, folder / "o1", root)
        big = timed_estimate(distinct, folder / "o2", root)
        rows.append({"version": label, "one_row_s": small["wall"], "distinct_s": big["wall"], "rows": args.rows})
        print(f"  {label}: {big['wall']:.2f} s for {args.rows:,} distinct rows", file=sys.stderr)
    rows[1]["ratio"] = rows[1]["distinct_s"] / rows[0]["distinct_s"]
    methods = duration_methods(folder / "o2" / "estimate.parquet")
    rows[0]["ratio"] = 1.0
    memory: dict[str, float] = {}
    if args.million:
        million = write_manifest(folder / "million.csv", 1_000_000, pairs)
        memory = {"one_row_mb": peak_rss(one, folder / "m1"), "million_mb": peak_rss(million, folder / "m2")}
    if args.json:
        print(json.dumps({"rows": rows, "memory": memory, "duration_methods": methods}))
        return
    header = ["version", f"{args.rows:,} distinct rows s", "1 row s", "vs before"]
    body = [[r["version"], f"{r['distinct_s']:.2f}", f"{r['one_row_s']:.2f}", f"{r['ratio']:.2f}"] for r in rows]
    print(table(header, body))
    counted = ", ".join(f"{name} {count:,}" for name, count in sorted(methods.items()))
    print(f"\nhow the rows' audio was measured (estimate.parquet, column duration_method), now: {counted}")
    if memory:
        print(
            f"\npeak RSS, now: one row {memory['one_row_mb']:.0f} MB, 1,000,000 rows over those files"
            f" {memory['million_mb']:.0f} MB ({memory['million_mb'] / memory['one_row_mb']:.2f} x)"
        )


if __name__ == "__main__":
    main()
