"""The HTML report's figures: matplotlib, rendered to SVG text at report time (no script in the page draws
them). Object-oriented matplotlib (``Figure``, no pyplot): no global state, no display needed. Large point
clouds are rasterised inside the SVG so a figure stays small at 100,000 items."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from batchqwen.reporting.analysis import LATENCY_COLUMNS

STATUS_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "pending": "#9e9e9e", "skipped": "#f9a825"}
ESTIMATE_COLOUR, ACTUAL_COLOUR = "#90caf9", "#1565c0"
LATENCY_LABELS = {"connect_seconds": "connect", "first_audio_seconds": "first audio", "total_seconds": "total"}
LATENCY_COLOURS = ("#8e24aa", "#1e88e5", "#43a047")
RASTERISE_FROM = 2_000  # points: above this a scatter is drawn as an image inside the SVG


def _svg(figure: Figure, name: str) -> str:
    """The figure as SVG text for inline use: text kept as text, ids unique to this figure, no date."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})  # the constrained layout fits it
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # the XML prologue and doctype do not belong inside HTML


def _figure(width: float = 6.4, height: float = 3.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def status_chart(counts: dict[str, int]) -> str:
    figure = _figure(6.4, 2.2)
    ax = figure.add_subplot()
    names = list(counts)
    bars = ax.barh(names, [counts[n] for n in names], color=[STATUS_COLOURS.get(n, "#607d8b") for n in names])
    ax.bar_label(bars, labels=[f"{counts[n]:,}" for n in names], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("items")
    ax.set_title("Items by status")
    ax.margins(x=0.15)
    return _svg(figure, "status")


def cost_chart(table: pd.DataFrame, currency: str, unpriced: list[str] | None = None) -> str:
    figure = _figure(6.4, 3.4)
    ax = figure.add_subplot()
    if unpriced:
        note = f"not shown, no known price: {', '.join(unpriced)}"
        ax.text(0.99, 0.98, note, ha="right", va="top", transform=ax.transAxes, fontsize=7, color="#555555")
    shown = table[(table["estimated"] > 0) | (table["actual"] > 0)]
    if shown.empty:
        _empty(ax, "no priced item ran ok: no cost to compare")
    else:
        labels = [f"{m}\n{mod.replace('_', ' ')}" for m, mod in zip(shown["model"], shown["modality"], strict=True)]
        positions = range(len(labels))
        ax.bar([p - 0.2 for p in positions], shown["estimated"], 0.4, label="estimate", color=ESTIMATE_COLOUR)
        ax.bar([p + 0.2 for p in positions], shown["actual"], 0.4, label="actual", color=ACTUAL_COLOUR)
        ax.set_xticks(list(positions), labels, fontsize=7)
        ax.legend()
    ax.set_ylabel(currency)
    ax.set_title(f"Cost by model and modality, estimate vs actual ({currency}, items that ran ok)")
    return _svg(figure, "cost")


def tokens_chart(frame: pd.DataFrame) -> str:
    figure = _figure()
    ax = figure.add_subplot()
    ok = frame[frame["status"] == "ok"]
    tokens = ok["usage_total_tokens"].astype("float64")
    points = ok.assign(tokens=tokens).dropna(subset=["tokens", "input_audio_seconds"])
    if points.empty:
        _empty(ax, "no item ran ok: no tokens to show")
    else:
        for model, rows in points.groupby(points["model"].fillna("unknown")):
            ax.scatter(
                rows["input_audio_seconds"],
                rows["tokens"],
                s=8,
                alpha=0.6,
                label=str(model),
                rasterized=len(points) > RASTERISE_FROM,
            )
        ax.legend(fontsize=7)
        ax.set_xlabel("input audio seconds")
        ax.set_ylabel("tokens reported")
    ax.set_title("Tokens per item against input seconds")
    return _svg(figure, "tokens")


def latency_chart(frame: pd.DataFrame) -> str:
    """Connect, first audio and total seconds as three step histograms on one axis (one axis is a third
    of the drawing time of three), each with its p90 marked."""
    figure = _figure()
    ax = figure.add_subplot()
    ok = frame[frame["status"] == "ok"]
    shown = [(c, ok[c].dropna()) for c in LATENCY_COLUMNS if ok[c].notna().any()]
    if not shown:
        _empty(ax, "no item ran ok: no latency measured")
    else:
        every = pd.concat([values for _, values in shown])
        bins = np.linspace(0.0, float(every.max()) * 1.02 or 1.0, 41).tolist()
        for (column, values), colour in zip(shown, LATENCY_COLOURS, strict=False):
            p90 = float(values.quantile(0.9))
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, color=colour,
                    label=f"{LATENCY_LABELS[column]} (p50 {values.median():.2f} s, p90 {p90:.2f} s)")  # fmt: skip
            ax.axvline(p90, color=colour, linestyle=":", linewidth=1)
        ax.legend(fontsize=7)
        ax.set_xlabel("seconds from the start of the attempt")
        ax.set_ylabel("items")
    ax.set_title("Latency distributions (items that ran ok; dotted: p90)")
    return _svg(figure, "latency")


def throughput_chart(per_minute: pd.Series, rpm: int | None, spans: list[tuple[str, float, float]]) -> str:
    """Items finished per minute against the RPM limit; throttle cool-downs and outage pauses shaded."""
    figure = _figure(7.2, 3.2)
    ax = figure.add_subplot()
    if per_minute.empty:
        _empty(ax, "no item finished in this run")
    else:
        edges = list(range(len(per_minute) + 1))  # one path however long the run: stairs, not a bar a minute
        ax.stairs(per_minute.to_numpy(), edges, fill=True, color="#26a69a", label="items finished")
        if rpm:
            ax.axhline(rpm, color="#c62828", linestyle="--", linewidth=1, label=f"RPM limit ({rpm:,})")
        colours = {"throttle cool-down": "#ffb74d", "outage pause": "#e57373"}
        labelled: set[str] = set()
        for kind, start_minute, minutes in spans:
            label = None if kind in labelled else kind
            labelled.add(kind)
            ax.axvspan(start_minute, start_minute + max(minutes, 0.02), color=colours[kind], alpha=0.35, label=label)
        ax.set_xlabel("minutes since the run started")
        ax.set_ylabel("items a minute")
        ax.legend(fontsize=7)
    ax.set_title("Items finished per minute against the RPM limit, with pauses")
    return _svg(figure, "throughput")


def failures_chart(groups: list[tuple[str, int]]) -> str:
    figure = _figure(6.4, max(1.8, 0.4 * len(groups) + 1.0))
    ax = figure.add_subplot()
    if not groups:
        _empty(ax, "no failed items")
    else:
        names = [name for name, _ in groups]
        bars = ax.barh(names, [count for _, count in groups], color=STATUS_COLOURS["failed"])
        ax.bar_label(bars, labels=[f"{count:,}" for _, count in groups], padding=3)
        ax.invert_yaxis()
        ax.set_xlabel("items")
        ax.margins(x=0.15)
    ax.set_title("Failures by error type")
    return _svg(figure, "failures")
