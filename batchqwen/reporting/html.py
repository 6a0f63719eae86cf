"""``batchqwen report OUT --html``: one self-contained HTML file to look at and listen to a run.

Everything is inside the file (CSS, the table's script, the figures as inline SVG made by
:mod:`batchqwen.reporting.charts`); nothing is fetched from the network. The WAVs and the image thumbnails
(small JPEGs made under ``OUT/thumbs/``) are linked relatively, so the OUT folder can be zipped and
shared; ``embed_audio`` puts the WAVs (and thumbnails) inside instead, up to ``MAX_EMBED_BYTES``.

The items travel as compact JSON in a ``<script type="application/json">`` (a list of rows, strings
shared through small lookup tables); the page draws one page of rows at a time, so 100,000 items open
quickly. To keep the file under 15 MB, its texts get ``TEXT_BUDGET_BYTES``: long ones are clipped only when
the whole run's text would not fit (the page says so; ``results.parquet`` keeps everything).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batchqwen.cost import load_prices
from batchqwen.errors import UsageError
from batchqwen.reporting import analysis, charts
from batchqwen.results import atomic_write_bytes

REPORT_NAME = "report.html"
THUMBS_DIR = "thumbs"
THUMB_PX = 96
MAX_THUMBNAILS = 5_000  # distinct images thumbnailed per report (made once, reused by later reports)
MAX_EMBED_BYTES = 50 * 1024 * 1024  # --embed-audio refuses WAVs (and thumbnails) beyond this in total
TEXT_BUDGET_BYTES = 8_000_000  # errors, transcripts, answers in the file (UTF-8); beyond it texts are clipped


@dataclass(frozen=True)
class ReportFile:
    path: Path
    items: int
    bytes: int
    clipped_to: int | None  # characters each text was clipped to, None when nothing was clipped


def write_html_report(
    out: Path, target: Path | None = None, *, embed_audio: bool = False, max_embed_bytes: int = MAX_EMBED_BYTES
) -> Path:
    """Write the report of the run in ``out`` to ``target`` (default ``OUT/report.html``); return its path."""
    return render(out, target, embed_audio=embed_audio, max_embed_bytes=max_embed_bytes).path


def render(
    out: Path, target: Path | None = None, *, embed_audio: bool = False, max_embed_bytes: int = MAX_EMBED_BYTES
) -> ReportFile:
    out = Path(out)
    target = Path(target) if target is not None else out / REPORT_NAME
    data = analysis.load(out)
    frame = data.frame
    currency = data.currency
    region = str(data.summary.get("region") or "cn-beijing")
    prices = load_prices()
    links = Links(out, target.parent, embed=embed_audio, max_bytes=max_embed_bytes)
    thumbs = thumbnails(out, data, links)
    counts = analysis.status_counts(frame)
    groups = analysis.failure_groups(frame)
    start, _ = analysis.run_window(data)
    per_minute = analysis.finished_per_minute(frame, start) if start is not None else pd.Series(dtype="int64")
    spans = [
        (kind, (at - start).total_seconds() / 60, seconds / 60)
        for kind, at, seconds in analysis.pauses(data.events)
        if start is not None
    ]
    rpm = (data.summary.get("limits") or {}).get("rpm")
    figures = [
        ("fig-status", "Items by status", charts.status_chart(counts)),
        ("fig-cost", "Cost by model and modality", charts.cost_chart(
            analysis.cost_by_model_modality(frame, prices, region), currency, unpriced(frame, prices, region))),
        ("fig-tokens", "Tokens per item against input seconds", charts.tokens_chart(frame)),
        ("fig-latency", "Latency distributions", charts.latency_chart(frame)),
        ("fig-throughput", "Items finished per minute, RPM limit, pauses", charts.throughput_chart(
            per_minute, rpm, spans)),
        ("fig-failures", "Failures by type", charts.failures_chart([(g.error_type, g.count) for g in groups])),
    ]  # fmt: skip
    items, clipped_to = item_rows(frame, links, thumbs)
    page = _template()
    replacements = {
        "<!--TITLE-->": html.escape(f"batchqwen report: {out.resolve().name}"),
        "<!--HEADER-->": header_html(data, counts, currency, frame),
        "<!--FAILURES-->": failures_html(out, groups, counts.get("failed", 0)),
        "<!--FIGURES-->": "\n".join(
            f'<figure id="{fid}" class="chart"><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>'
            for fid, caption, svg in figures
        ),
        "<!--NOTES-->": notes_html(clipped_to, thumbs, links),
        "/*ITEMS*/": _script_json(items),
    }
    for marker, value in replacements.items():
        page = page.replace(marker, value)  # the title appears twice; the other markers once
    payload = page.encode("utf-8", "surrogatepass")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, payload)
    return ReportFile(target, len(frame), len(payload), clipped_to)


def unpriced(frame: pd.DataFrame, prices: Any, region: str) -> list[str]:
    """The models of ok items that have no known price (left out of the cost figure, and it says so)."""
    models = frame.loc[frame["status"] == "ok", "model"].dropna().unique()
    return sorted(str(m) for m in models if prices.lookup(str(m), region) is None)


def _template() -> str:
    return resources.files("batchqwen.reporting").joinpath("template.html").read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no closing tag or comment opener can appear in it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


# ----------------------------------------------------------------------------- files the page links


class Links:
    """How the page refers to a file under OUT: a path relative to the report, or (embedded) a data URI."""

    def __init__(self, out: Path, report_dir: Path, *, embed: bool, max_bytes: int) -> None:
        self.out = out
        self.prefix = os.path.relpath(out.resolve(), report_dir.resolve()).replace(os.sep, "/")
        self.embed = embed
        self.max_bytes = max_bytes
        self.embedded = 0

    def __call__(self, relative: str, mime: str) -> str:
        if not self.embed:
            return relative if self.prefix == "." else f"{self.prefix}/{relative}"
        data = (self.out / relative).read_bytes()
        self.embedded += len(data)
        if self.embedded > self.max_bytes:
            raise UsageError(
                f"--embed-audio: the audio and thumbnails pass {self.max_bytes / 1e6:,.0f} MB (the limit for one"
                " self-contained file); share the OUT folder with the report linking them instead"
            )
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _existing(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder) if entry.is_file()}
    except OSError:
        return set()


def thumbnails(out: Path, data: analysis.RunData, links: Links) -> dict[str, list[str]]:
    """id -> links of its input images' thumbnails, made under ``OUT/thumbs/`` (once per distinct file)."""
    from PIL import Image, ImageOps

    from batchqwen.manifest import iter_items

    manifest = data.summary.get("manifest_path") or data.summary.get("manifest")
    if not manifest or not Path(manifest).is_file():
        return {}
    folder = out / THUMBS_DIR
    made = _existing(folder)
    by_id: dict[str, list[str]] = {}
    done: dict[str, str | None] = {}  # source key -> thumbnail name (None: could not be read)
    keys: dict[Path, str | None] = {}  # image path -> source key (None: gone)
    linked: dict[str, str] = {}  # thumbnail name -> how the page refers to it
    try:
        items: Iterable[Any] = iter_items(Path(manifest), with_hash=False)
        for item in items:
            names = []
            for image in item.images:
                if not isinstance(image, Path):
                    continue  # in a bucket or behind a URL: no thumbnail (nothing is fetched for the report)
                if image not in keys:
                    try:
                        stat = image.stat()
                    except OSError:
                        keys[image] = None
                        continue
                    keys[image] = hashlib.sha1(f"{image}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
                key = keys[image]
                if key is None:
                    continue
                if key not in done:
                    name = f"{key}.jpg"
                    if name not in made and len(done) < MAX_THUMBNAILS:
                        try:
                            folder.mkdir(parents=True, exist_ok=True)
                            with Image.open(image) as picture:
                                picture.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
                                small = ImageOps.exif_transpose(picture).convert("RGB")
                                small.thumbnail((THUMB_PX, THUMB_PX))
                                small.save(folder / name, "JPEG", quality=70)
                            made.add(name)
                        except (OSError, ValueError):
                            pass
                    done[key] = name if name in made else None
                thumb = done[key]
                if thumb is not None:
                    if thumb not in linked:  # one link (one data URI when embedded) per thumbnail
                        linked[thumb] = links(f"{THUMBS_DIR}/{thumb}", "image/jpeg")
                    names.append(linked[thumb])
            if names:
                by_id[item.id] = names
    except UsageError:
        raise
    except Exception:
        return by_id
    return by_id


# ----------------------------------------------------------------------------- the items' data


def _texts(values: pd.Series) -> list[str]:
    return ["" if not isinstance(v, str) else v for v in values.tolist()]


def _utterances(value: Any) -> str:
    if value is None or len(value) == 0:
        return ""
    lines = []
    for u in value:
        start, end = u.get("start_seconds"), u.get("end_seconds")
        when = f"{start:.1f}–{end:.1f} s: " if start is not None and end is not None else ""
        lines.append(f"{when}{u.get('source_text') or ''} → {u.get('text') or ''}")
    return "\n".join(lines)


def _tool_calls(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple) and len(value) == 0:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _clip_length(lengths: np.ndarray[Any, Any], budget: int) -> int | None:
    """The largest per-text length that keeps the sum under ``budget``; None when nothing needs clipping."""
    if int(lengths.sum()) <= budget:
        return None
    ordered = np.sort(lengths)
    # with every text clipped to ordered[k], the total is the k shorter ones plus the rest at ordered[k]
    totals = np.cumsum(ordered) + ordered * (len(ordered) - 1 - np.arange(len(ordered)))
    k = int(np.searchsorted(totals, budget, side="right"))
    if k == 0:
        return max(20, budget // max(1, len(ordered)))
    clip = int(ordered[k - 1])
    rest = len(ordered) - k
    spare = budget - int(np.cumsum(ordered)[k - 1]) - clip * rest
    return max(20, clip + (spare // rest if rest else 0))


def item_rows(frame: pd.DataFrame, links: Links, thumbs: dict[str, list[str]]) -> tuple[dict[str, Any], int | None]:
    """The items as the page's JSON: lookup tables (statuses, models, thumbnails), then one short list per
    item. A WAV at its usual place (``audio/<id>.wav``) is written as 1 and the page spells the path."""
    statuses = sorted(frame["status"].fillna("pending").unique().tolist())
    models = sorted(frame["model"].fillna("").unique().tolist())
    status_index = {s: i for i, s in enumerate(statuses)}
    model_index = {m: i for i, m in enumerate(models)}
    thumb_links = sorted({link for names in thumbs.values() for link in names})
    thumb_index = {link: i for i, link in enumerate(thumb_links)}
    errors = []
    for kind, code, message in zip(frame["error_type"], frame["error_code"], frame["error_message"], strict=True):
        if not isinstance(kind, str):
            errors.append("")
            continue
        code_text = f" [{code}]" if isinstance(code, str) and code else ""
        errors.append(f"{kind}{code_text}: {message if isinstance(message, str) else ''}")
    answers = [t or x for t, x in zip(_texts(frame["output_transcript"]), _texts(frame["output_text"]), strict=True)]
    inputs = _texts(frame["input_transcript"])
    utterances = [_utterances(v) for v in frame["utterances"].tolist()]
    tools = [_tool_calls(v) for v in frame["tool_calls"].tolist()] if "tool_calls" in frame else [""] * len(frame)
    texts = (errors, inputs, answers, utterances, tools)
    sizes = np.array([len(text.encode()) for column in texts for text in column], dtype=np.int64)
    clip = _clip_length(sizes, TEXT_BUDGET_BYTES)

    def cut(text: str) -> str:
        if clip is None or len(text) <= clip // 4:  # at most 4 bytes a character
            return text
        raw = text.encode()
        return text if len(raw) <= clip else raw[: clip - 3].decode("utf-8", "ignore") + "…"

    audio_files = _existing(links.out / "audio")
    rows = []
    columns = ["id", "status", "model", "output_wav", "cost", "total_seconds"]
    for index, (item_id, status, model, wav, cost, seconds) in enumerate(frame[columns].itertuples(index=False)):
        wav = wav if isinstance(wav, str) else ""
        if wav and Path(wav).name not in audio_files:
            wav = ""  # never a link the browser cannot load
        audio: str | int = ""
        if wav:
            audio = 1 if wav == f"audio/{item_id}.wav" and not links.embed else links(wav, "audio/wav")
        rows.append(
            [
                item_id,
                status_index[status if isinstance(status, str) else "pending"],
                model_index[model if isinstance(model, str) else ""],
                cut(errors[index]),
                cut(inputs[index]),
                cut(answers[index]),
                audio,
                [thumb_index[link] for link in thumbs.get(item_id, ())],
                None if cost is None or math.isnan(cost) else float(f"{cost:.6g}"),
                None if seconds is None or math.isnan(seconds) else round(float(seconds), 3),
                cut(utterances[index]),
                cut(tools[index]),
            ]
        )
    currency = next((c for c in frame["currency"].dropna().unique() if c), "")
    prefix = "" if links.prefix == "." else links.prefix + "/"
    data = {"statuses": statuses, "models": models, "thumbs": thumb_links, "prefix": prefix, "currency": currency}
    return {**data, "rows": rows}, clip


# ----------------------------------------------------------------------------- the page's text parts


def _cell(label: str, value: str) -> str:
    return f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>"


def header_html(data: analysis.RunData, counts: dict[str, int], currency: str, frame: pd.DataFrame) -> str:
    """The run at a glance; every field says something (``unknown`` and why, never blank or ``?``)."""
    s = data.summary
    start, end = analysis.run_window(data)
    limits = s.get("limits") or {}
    models = sorted(str(m) for m in frame["model"].dropna().unique()) or [str(s.get("model") or "unknown")]
    cost = s.get("cost") or {}
    estimated = s.get("estimated_cost") or {}
    actual_total = float(sum(cost.values())) if cost else float(frame["cost"].fillna(0).sum())
    estimated_total = float(sum(estimated.values())) if estimated else float(frame["est_cost"].fillna(0).sum())
    no_summary = "unknown (no summary.json)"
    cells = [
        _cell("exit", analysis.exit_text(s)),
        _cell("started", f"{start:%Y-%m-%d %H:%M:%S} UTC" if start is not None else "unknown (no item started)"),
        _cell("finished", f"{end:%Y-%m-%d %H:%M:%S} UTC" if end is not None else "unknown (no item finished)"),
        _cell("duration", f"{float(s['duration_seconds']):,.1f} s" if "duration_seconds" in s else no_summary),
        _cell("models", ", ".join(models)),
        _cell("region", str(s.get("region") or "unknown (not recorded by this run)")),
        _cell("concurrency", str(s.get("concurrency") or "unknown (not recorded by this run)")),
        _cell("limits", f"{limits.get('rpm') or 'no'} RPM, {limits.get('tpm') or 'no'} TPM"
              f" ({limits.get('source') or 'source not recorded'})" if limits else no_summary),
        _cell("budget cap", f"{s['max_cost']:g} {currency}" if s.get("max_cost") is not None else "none"),
        _cell("items", ", ".join(f"{k} {v:,}" for k, v in counts.items())),
        _cell("cost", f"{actual_total:.4f} {currency} actual, {estimated_total:.4f} {currency} estimated"),
        _cell("prices", _prices_text(s)),
        _cell("simulated", "yes (the built-in simulator)" if s.get("simulate") else "no"),
    ]  # fmt: skip
    if data.estimate and data.estimate.get("calibrated_from"):
        from batchqwen.report import calibrated_line

        cells.append(_cell("calibrated", calibrated_line(data.estimate, actual_total, currency)))
    cells.append(_cell("report made", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"))
    return "<dl class='header'>" + "".join(cells) + "</dl>"


def _prices_text(summary: dict[str, Any]) -> str:
    source = summary.get("prices_source")
    if not source:
        return load_prices().describe() + " (the shipped table; the run did not record its own)"
    url = summary.get("prices_source_url")
    return f"{source}{f' <{url}>' if url else ''}, as of {summary.get('prices_as_of') or 'an unrecorded date'}"


def failures_html(out: Path, groups: list[analysis.FailureGroup], total: int) -> str:
    if not groups:
        return "<p class='none'>No item failed.</p>"
    parts = [f"<p>{total:,} failed items by error type (all in <code>{html.escape(str(out / 'results.parquet'))}"
             "</code>, status <code>failed</code>):</p><ul class='failures'>"]  # fmt: skip
    for group in groups:
        shown = "".join(
            f"<li><code>{html.escape(i)}</code> (row {row}){html.escape(f' [{code}]' if code else '')}:"
            f" {html.escape(message[:300])}</li>"
            for i, row, code, message in group.examples
        )
        more = group.count - len(group.examples)
        tail = f"<li>… and {more:,} more</li>" if more > 0 else ""
        parts.append(f"<li><b>{html.escape(group.error_type)}</b>: {group.count:,}<ul>{shown}{tail}</ul></li>")
    parts.append("</ul>")
    return "".join(parts)


def notes_html(clipped_to: int | None, thumbs: dict[str, list[str]], links: Links) -> str:
    notes = []
    if clipped_to is not None:
        notes.append(f"Long texts are clipped to {clipped_to:,} bytes to keep this file small; results.parquet has"
                     " them whole.")  # fmt: skip
    if links.embed:
        notes.append(f"Audio and thumbnails are embedded ({links.embedded / 1e6:,.1f} MB).")
    else:
        notes.append("Audio and thumbnails are linked from the run's folder: keep this file beside it.")
    return "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
