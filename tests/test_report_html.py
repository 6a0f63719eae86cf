"""The HTML report of a simulated run (ok, failed and pending items, a translation row), opened in headless
Chromium (Debian's ``chromium``, driven by Playwright without any browser download); and the text and HTML
reports of a run where everything failed."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio, write_image, write_text

from batchqwen import runner
from batchqwen.cli import main
from batchqwen.config import RunConfig
from batchqwen.errors import UsageError
from batchqwen.reporting import analysis
from batchqwen.reporting.html import render, write_html_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FIGURES = ("fig-status", "fig-cost", "fig-tokens", "fig-latency", "fig-throughput", "fig-failures")
LAUNCH_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    names = sorted({key for row in rows for key in row})
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_job(manifest: Path, out: Path, **options: Any) -> runner.RunOutcome:
    config = RunConfig(manifest=manifest, out=out, simulate=True, concurrency=4, pad_silence_seconds=1.0, **options)
    # in a thread of its own: Playwright's sync API keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(runner.run(config), 60)).result()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ok items (one with an image), a translation, a missing file, an unreadable image, two pending."""
    job = tmp_path_factory.mktemp("job")
    for index in range(3):
        write_audio(job / f"a{index}.wav", seconds=1.5 + index, rate=16_000, channels=1, seed=index)
    write_image(job / "drawing.png", 320, 240)
    write_text(job / "not-an-image.png")
    rows = [
        {"id": "ok-0", "audio": "a0.wav"},
        {"id": "ok-image", "audio": "a1.wav", "image": "drawing.png"},
        {"id": "translated", "audio": "a2.wav", "model": "qwen3-livetranslate-flash-realtime"},
        {"id": "missing-file", "audio": "nowhere.wav"},
        {"id": "bad-image", "audio": "a0.wav", "image": "not-an-image.png"},
        {"id": "ok-prompt", "prompt": "Say hello.", "instructions": "Be brief."},
        {"id": "later-1", "audio": "a1.wav"},
        {"id": "later-2", "audio": "a2.wav"},
    ]
    out = job / "out"
    outcome = run_job(write_manifest(job, rows), out, limit=6)
    assert outcome.exit_code == 1
    assert (out / "report.html").is_file()  # written at the end of every run
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS, viewport={"width": 1400, "height": 900}
        )
        try:
            yield context
        finally:
            context.close()


def test_the_report_in_chromium(mixed_run: Path, browser: Any) -> None:
    table = pq.read_table(mixed_run / "results.parquet").to_pandas()
    assert set(table["status"]) == {"ok", "failed", "pending"}
    failed_ids = set(table.loc[table["status"] == "failed", "id"])
    assert failed_ids == {"missing-file", "bad-image"}

    page = browser.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    def failed(request: Any) -> None:
        # a media element with preload=metadata stops its own download once it has the header: not a failure
        if not (request.resource_type == "media" and request.failure == "net::ERR_ABORTED"):
            problems.append(f"request failed: {request.url} {request.failure}")

    page.on("requestfailed", failed)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto((mixed_run / "report.html").resolve().as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=10_000)

    for figure in FIGURES:
        assert page.locator(f"#{figure} svg").count() == 1, figure
    header = page.inner_text("#run")
    assert re.search(r"exit\s+1", header) and "cn-beijing" in header and "CNY" in header
    assert "missing-file" in page.inner_text("#failed") and "input_file" in page.inner_text("#failed")
    assert page.locator("#rows tr").count() == len(table)

    page.select_option("#filter-status", label="failed")
    shown = page.eval_on_selector_all("#rows tr", "rows => rows.map(r => [r.dataset.id, r.dataset.status])")
    assert {row_id for row_id, _ in shown} == failed_ids and all(status == "failed" for _, status in shown)
    page.select_option("#filter-status", label="all")

    page.fill("#search", "→")  # only a translation row has utterances (source → translation)
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    assert page.inner_text("#rows tr").count("→") >= 1 and "translated" in page.inner_text("#rows tr")
    page.fill("#search", "")
    page.wait_for_function(f"() => document.querySelectorAll('#rows tr').length === {len(table)}")

    page.click("#sort-cost")  # most expensive first
    costs = page.eval_on_selector_all("#rows tr td.num:nth-last-child(2)", "cells => cells.map(c => c.textContent)")
    figures = [float(c.split()[0]) for c in costs if c]
    assert figures == sorted(figures, reverse=True) and len(figures) >= 3
    assert all(costs[: len(figures)]) and not any(costs[len(figures) :])  # items without a cost go last

    duration = page.evaluate(
        """() => new Promise((resolve) => {
            const audio = document.querySelector('#rows audio');
            if (audio.preload !== 'none') resolve('preload ' + audio.preload);
            audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            audio.addEventListener('error', () => resolve('error ' + audio.error.code));
            audio.preload = 'metadata';
            audio.load();
        })"""
    )
    assert isinstance(duration, float) and duration > 0.5, duration
    assert page.locator("#rows img").count() >= 1
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert not problems, problems
    assert all(url.startswith(("file://", "data:")) for url in requested), requested
    page.screenshot(path=str(mixed_run / "screenshot.png"), full_page=False)
    page.close()


class _Fields(HTMLParser):
    """The header's <dd> texts."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "dd":
            self.inside, self.values = True, [*self.values, ""]

    def handle_endtag(self, tag: str) -> None:
        self.inside = self.inside and tag != "dd"

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.values[-1] += data


def test_a_run_where_everything_failed_reports_no_blank_or_question_mark(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [{"id": f"gone-{i}", "audio": f"gone{i}.wav"} for i in range(5)])
    out = tmp_path / "out"
    assert run_job(manifest, out).exit_code == 1
    text = CliRunner().invoke(main, ["report", str(out)])
    assert text.exit_code == 0, text.output
    assert "?" not in text.output
    assert "exit 1 (finished, some items failed)" in text.output
    assert "5 failed items, by error type" in text.output and "input_file: 5" in text.output
    assert "gone-0 (row 1)" in text.output and "... and 2 more" in text.output
    assert f"all of them: {out / 'results.parquet'}" in text.output
    assert not re.search(r":\s*$", text.output, re.MULTILINE)  # no label without a value

    page = (out / "report.html").read_text(encoding="utf-8")
    fields = _Fields()
    fields.feed(page[page.index("<dl class='header'>") : page.index("</dl>")])
    assert len(fields.values) >= 12 and all(v.strip() and "?" not in v for v in fields.values), fields.values


def test_embed_audio_puts_the_wavs_inside_and_refuses_past_its_limit(mixed_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "shared.html"
    page = write_html_report(mixed_run, target, embed_audio=True).read_text(encoding="utf-8")
    embedded = json.loads(page[page.index('id="items-data">') + 16 : page.index("</script>")].replace("<\\/", "</"))
    wavs = [r[6] for r in embedded["rows"] if r[6]]
    assert len(wavs) == 4 and all(w.startswith("data:audio/wav;base64,") for w in wavs)
    assert embedded["thumbs"] and all(t.startswith("data:image/jpeg;base64,") for t in embedded["thumbs"])
    linked = render(mixed_run, tmp_path / "linked.html")
    text = linked.path.read_text(encoding="utf-8")
    data = json.loads(text[text.index('id="items-data">') + 16 : text.index("</script>")].replace("<\\/", "</"))
    assert data["prefix"].startswith("../")  # the run's folder, relative to where the report is
    assert (linked.path.parent / data["prefix"] / "audio" / "ok-0.wav").is_file()
    assert [r[6] for r in data["rows"] if r[0] == "ok-0"] == [1]  # audio/<id>.wav, spelled by the page
    with pytest.raises(UsageError, match="share the OUT folder"):
        write_html_report(mixed_run, tmp_path / "big.html", embed_audio=True, max_embed_bytes=1_000)
    result = CliRunner().invoke(main, ["report", str(mixed_run), "--embed-audio"])
    assert result.exit_code == 2 and "--embed-audio goes with --html" in result.output


def test_a_tool_calls_column_is_shown_when_the_results_have_one(mixed_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "with-tools"
    shutil.copytree(mixed_run, out)
    table = pq.read_table(out / "results.parquet")
    calls = [[{"name": "lookup_order", "arguments": '{"order": 42}'}] if i == 0 else [] for i in range(len(table))]
    if "tool_calls" in table.column_names:  # results have the column since tools landed: fill it in
        column = pa.array(calls, type=table.schema.field("tool_calls").type)
        table = table.set_column(table.column_names.index("tool_calls"), "tool_calls", column)
    else:
        table = table.append_column("tool_calls", pa.array(calls))
    pq.write_table(table, out / "results.parquet")
    page = render(out).path.read_text(encoding="utf-8")
    data = json.loads(page[page.index('id="items-data">') + 16 : page.index("</script>")].replace("<\\/", "</"))
    first = data["rows"][0]
    assert "lookup_order" in first[11] and '{\\"order\\": 42}' in first[11]
    assert all(row[11] == "" for row in data["rows"][1:])


def test_throttle_cool_downs_and_outages_become_pauses_on_the_timeline() -> None:
    events = [
        {"t": "2026-12-01T01:00:00+00:00", "event": "throttle", "cool_down_seconds": 4.0},
        {"t": "2026-12-01T01:02:00+00:00", "event": "breaker_open", "error": "refused"},
        {"t": "2026-12-01T01:02:30+00:00", "event": "breaker_probe_failed"},
        {"t": "2026-12-01T01:03:00+00:00", "event": "breaker_close", "outage_seconds": 60.0},
        {"t": "2026-12-01T01:10:00+00:00", "event": "breaker_open", "error": "503"},
        {"t": "2026-12-01T01:20:00+00:00", "event": "outage_exceeded"},
        {"t": "torn", "event": "throttle"},
    ]
    spans = [(kind, f"{at:%H:%M:%S}", seconds) for kind, at, seconds in analysis.pauses(events)]
    assert spans == [
        ("throttle cool-down", "01:00:00", 4.0),
        ("outage pause", "01:02:00", 60.0),
        ("outage pause", "01:10:00", 600.0),
    ]
