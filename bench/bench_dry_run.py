"""Benchmark of the offline dry run: items per second and peak memory over a 10,000-row manifest.

The manifest mixes WAV, MP3, FLAC, JPEG and PNG. To keep generation quick, a pool of distinct small
files (``--distinct`` per kind, 100 by default: 500 files) is reused across the rows; since the speed
issue the estimator probes a shared file once (its probe cache), so this measures the per-row cost of a
manifest that repeats its files. ``bench/bench_estimate.py`` measures 10,000 distinct files.

    .venv/bin/python bench/bench_dry_run.py [--rows 10000] [--distinct 100] [--workers 8] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from batchqwen.cost import OutputAssumption, load_prices
from batchqwen.estimate import DEFAULT_WORKERS, EstimateReport, estimate_manifest, format_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from media_factory import write_audio


def make_media(folder: Path, distinct: int) -> dict[str, list[str]]:
    """``distinct`` files of each kind, short (0.5-4 s audio, 64-1280 px images), names relative to folder."""
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    kinds: dict[str, list[str]] = {"wav": [], "mp3": [], "flac": [], "jpg": [], "png": []}
    for i in range(distinct):
        seconds = float(rng.uniform(0.5, 4.0))
        for suffix in ("wav", "mp3", "flac"):
            write_audio(media / f"a{i}.{suffix}", seconds=seconds, rate=16_000, channels=1, seed=i)
        size = (int(rng.integers(64, 1280)), int(rng.integers(64, 1280)))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        Image.new("RGB", size, color).save(media / f"i{i}.jpg", quality=80)
        Image.new("RGB", size, color).save(media / f"i{i}.png")
        for kind in kinds:
            kinds[kind].append(f"media/{'i' if kind in ('jpg', 'png') else 'a'}{i}.{kind}")
    return kinds


def make_manifest(folder: Path, rows: int, kinds: dict[str, list[str]]) -> Path:
    """Rows cycle through audio-only, audio+JPEG, audio+PNG, image-only and prompt-only items."""
    path = folder / "manifest.csv"
    audio = kinds["wav"] + kinds["mp3"] + kinds["flac"]
    images = kinds["jpg"] + kinds["png"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "audio", "image", "prompt"])
        for n in range(rows):
            shape = n % 5
            a = audio[n % len(audio)] if shape in (0, 1, 2) else ""
            img = images[n % len(images)] if shape in (1, 2, 3) else ""
            prompt = f"Question {n}: what do you hear and see?" if shape in (3, 4) else ""
            writer.writerow([f"item-{n}", a, img, prompt])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=100, help="distinct files per kind (reused across rows)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_dry_run_"))
    try:
        started = time.perf_counter()
        kinds = make_media(folder, args.distinct)
        manifest = make_manifest(folder, args.rows, kinds)
        print(
            f"generated {args.distinct * 5} media files and {args.rows:,} rows in {time.perf_counter() - started:.1f} s"
        )

        prices = load_prices()

        def estimate() -> EstimateReport:
            return estimate_manifest(
                manifest,
                default_model="qwen3-omni-flash-realtime",
                region="cn-beijing",
                prices=prices,
                output=OutputAssumption(),
                modalities=("text", "audio"),
                instructions="Answer briefly.",
                limit=None,
                pad_silence_seconds=1.0,
                workers=args.workers,
                out_dir=folder / "out",
            )

        # pass 1, timed: tracemalloc slows Python code several-fold, so it is off here
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = estimate()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        # pass 2, for the Python heap's peak only
        tracemalloc.start()
        estimate()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        print(format_report(report))
        print()
        print(f"rows: {report.items:,} ({report.problem_count} problems), workers {args.workers}")
        rate = report.items / report.elapsed_seconds
        print(f"elapsed: {report.elapsed_seconds:.2f} s -> {rate:,.0f} items/s")
        print(f"tracemalloc peak during an estimate (2nd pass): {peak / 2**20:.1f} MiB")
        print(f"ru_maxrss: {rss_before / 1024:.0f} MiB before, {rss_after / 1024:.0f} MiB after (process peak)")
        if args.keep:
            print(f"kept: {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
