"""The HTML report at 100,000 items: render time, file size, and time to interactive in Chromium.

A results folder is made by script (no sessions): ``results.parquet`` in the real schema (95% ok, 3%
failed over four error types, 2% pending; two models, one a translator with utterances; answers as long
as the simulator's length model makes them), a WAV per ok item (hard links to one real WAV), a manifest
naming 500 distinct JPEGs, ``summary.json`` and a run event log with throttle cool-downs and an outage.
Then ``batchqwen report OUT --html`` is timed in its own process (start-up included), and the page is
opened in headless Chromium (Debian's ``chromium`` through Playwright): time to interactive (navigation
to the page's ready mark), then filtering to "failed", searching and sorting by cost.

    .venv/bin/python bench/bench_report.py [--items 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import PYTHON, ROOT
from media_factory import write_audio, write_image

from batchqwen.results import RESULT_SCHEMA
from batchqwen.sim import lengths

MODELS = ("qwen3-omni-flash-realtime", "qwen3-livetranslate-flash-realtime")
ERRORS = (
    ("input_file", None, "row {row} (id '{id}'): file not found or unreadable: /data/calls/{id}.wav"),
    ("media", None, "not an image Pillow can read: /data/photos/{id}.png"),
    ("server_error", "InternalError", "Internal server error, please retry later"),
    ("timeout", None, "no event from the service for 30 s while waiting for response.done"),
)
FILLER = " ".join(lengths.FILLER)


def make_folder(out: Path, items: int) -> dict[str, Any]:
    rng = random.Random(7)
    out.mkdir(parents=True)
    media = out / "media"
    media.mkdir()
    images = [write_image(media / f"photo{i}.jpg", 640, 480, seed=i) for i in range(500)]
    one_wav = write_audio(out / "answer.wav", seconds=2.0, rate=24_000, channels=1)
    (out / "audio").mkdir()
    start = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    columns: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
    manifest_rows = []
    for n in range(items):
        item_id = f"call-{n:06d}"
        model = MODELS[1] if n % 10 == 0 else MODELS[0]
        draw = rng.random()
        status = "ok" if draw < 0.95 else "failed" if draw < 0.98 else "pending"
        seconds = round(rng.uniform(1.0, 30.0), 2)
        image = images[n % len(images)] if n % 3 == 0 else None
        manifest_rows.append([item_id, f"calls/{item_id}.wav", f"media/{image.name}" if image else ""])
        row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA.names)
        row.update(id=item_id, row=n + 1, status=status, model=model, modalities="text,audio", attempts=1,
                   content_hash="0" * 64, utterances=[], notes=[], response_ids=[], currency="CNY")  # fmt: skip
        if status == "failed":
            kind, code, message = ERRORS[n % len(ERRORS)]
            row.update(error_type=kind, error_code=code, error_message=message.format(row=n + 1, id=item_id))
        if status == "ok":
            words = lengths.target_words(seconds, 4, f"{n:016x}", translation=model == MODELS[1])
            answer = f"I heard {seconds:.1f} s of audio (2 speech segments, loudest -12 dBFS) and saw no image. "
            answer += (FILLER + " ") * max(0, (words - 16) // len(lengths.FILLER))
            began = start + timedelta(seconds=n * 0.6 + rng.random())
            total = rng.lognormvariate(0.3, 0.4)
            row.update(
                input_transcript=f"[speech 0.1–{seconds / 2:.1f} s] [speech {seconds / 2 + 0.4:.1f}–{seconds:.1f} s]",
                output_transcript=answer.strip(),
                output_wav=f"audio/{item_id}.wav",
                output_audio_seconds=round(words * 0.06, 3),
                input_audio_seconds=seconds,
                image_count=1 if image else 0,
                est_input_audio_tokens=round(seconds * 12.5),
                est_output_audio_tokens=100,
                est_cost=0.0078,
                usage_input_audio_tokens=round(seconds * 12.5),
                usage_output_audio_tokens=round(words * 0.06 * 12.5),
                usage_output_text_tokens=words,
                usage_total_tokens=round(seconds * 12.5) + round(words * 0.06 * 12.5) + words,
                cost=round(seconds * 12.5 * 18.9e-6 + words * 0.06 * 12.5 * 75.1e-6, 6),
                cost_basis="usage",
                started_at=began,
                finished_at=began + timedelta(seconds=total),
                connect_seconds=round(rng.uniform(0.05, 0.3), 3),
                first_audio_seconds=round(total * 0.4, 3),
                total_seconds=round(total, 3),
            )
            if model == MODELS[1]:
                row["utterances"] = [
                    {"start_seconds": 0.1, "end_seconds": seconds / 2, "source_text": "[speech]", "text": answer[:80]}
                ]
            source = out / f"answer{n // 50_000}.wav"  # a file takes at most 65,000 links
            if not source.exists():
                shutil.copyfile(one_wav, source)
            os.link(source, out / "audio" / f"{item_id}.wav")
        for name in RESULT_SCHEMA.names:
            columns[name].append(row[name])
    pq.write_table(pa.table(columns, schema=RESULT_SCHEMA), out / "results.parquet")
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio", "image"])
        writer.writerows(manifest_rows)
    end = start + timedelta(seconds=items * 0.6 + 5)
    summary = {
        "items": items, "manifest": str(out / "manifest.csv"), "model": MODELS[0], "simulate": False,
        "exit_code": 1, "exit_reason": "completed", "duration_seconds": (end - start).total_seconds(),
        "started_at": start.isoformat(), "finished_at": end.isoformat(), "region": "cn-beijing",
        "concurrency": 32, "limits": {"rpm": 120, "tpm": 1_000_000, "source": "flags"},
        "prices_source": "Alibaba Cloud Model Studio: Model pricing (Qwen-Omni-Realtime)", "prices_as_of": "2026-11",
        "cost": {"CNY": sum(c or 0.0 for c in columns["cost"])},
        "estimated_cost": {"CNY": sum(c or 0.0 for c in columns["est_cost"])},
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    events = [{"t": (start + timedelta(minutes=m)).isoformat(), "event": "throttle", "cool_down_seconds": 30.0}
              for m in (40, 300, 700)]  # fmt: skip
    events += [
        {"t": (start + timedelta(minutes=200)).isoformat(), "event": "breaker_open", "error": "refused"},
        {"t": (start + timedelta(minutes=212)).isoformat(), "event": "breaker_close", "outage_seconds": 720},
    ]
    (out / "run_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return summary


def render(out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "-m", "batchqwen.cli", "report", str(out), "--html"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started, (out / "report.html").stat().st_size


def browse(out: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, float] = {}
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True, args=flags
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        started = time.perf_counter()
        page.goto((out / "report.html").resolve().as_uri(), wait_until="commit")
        page.wait_for_selector("body[data-ready=true]")
        figures["interactive_s"] = time.perf_counter() - started
        figures["in_page_ready_ms"] = page.evaluate("() => performance.now()")

        def sort_by_cost() -> None:
            page.fill("#search", "")
            page.select_option("#filter-status", label="all")
            page.click("#sort-cost")

        for name, action in (
            ("filter_failed_s", lambda: page.select_option("#filter-status", label="failed")),
            ("search_s", lambda: page.fill("#search", "call-0999")),
            ("sort_cost_s", sort_by_cost),
        ):
            began = time.perf_counter()
            action()
            page.wait_for_function("() => document.querySelectorAll('#rows tr').length > 0")
            figures[name] = time.perf_counter() - began
        figures["rows_in_dom"] = page.evaluate("() => document.querySelectorAll('#rows tr').length")
        context.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="make the folder here and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    out = base / "out"
    try:
        made = time.perf_counter()
        make_folder(out, args.items)
        print(f"results folder: {args.items:,} items in {time.perf_counter() - made:.1f} s ({out})")
        first, size = render(out)
        again, _ = render(out)  # thumbnails made by the first render are reused
        print(f"report render: {first:.2f} s the first time (500 thumbnails made), {again:.2f} s again;"
              f" report.html {size / 1e6:.2f} MB without audio")  # fmt: skip
        figures = browse(out)
        print(
            f"chromium: interactive in {figures['interactive_s']:.2f} s"
            f" (page's own clock {figures['in_page_ready_ms']:.0f} ms);"
            f" filter to failed {figures['filter_failed_s']:.3f} s; search {figures['search_s']:.3f} s;"
            f" sort by cost {figures['sort_cost_s']:.3f} s; rows in the DOM {figures['rows_in_dom']:.0f}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
