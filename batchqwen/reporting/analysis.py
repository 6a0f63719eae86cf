"""What a run's folder says, read with pandas: results, summary, run events, the last estimate; and the
aggregates the reports show (counts, failures by type, cost by model and modality, latency quantiles,
items finished per minute, the timeline's pauses). Pure reading: nothing here writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from batchqwen.cost import MODALITIES, PriceBook, cost_breakdown, load_prices
from batchqwen.errors import UsageError
from batchqwen.estimate import ESTIMATE_SUMMARY
from batchqwen.results import RESULTS_NAME, STATUS_FAILED, STATUS_OK, STATUSES, SUMMARY_NAME
from batchqwen.runevents import read_run_events

#: what each exit code of a run means (batchqwen/exitcodes.py), for the reports' first line
EXIT_MEANINGS = {
    0: "every item ok",
    1: "finished, some items failed",
    2: "usage or configuration error",
    3: "aborted",
    4: "the environment failed",
    130: "interrupted (SIGINT)",
    143: "interrupted (SIGTERM)",
}
FAILURE_EXAMPLES = 3  # ids shown per error type; the rest are in results.parquet
LATENCY_COLUMNS = ("connect_seconds", "first_audio_seconds", "total_seconds")


@dataclass(frozen=True)
class FailureGroup:
    """The failed items of one error type: how many, and the first few (id, row, code, message)."""

    error_type: str
    count: int
    examples: list[tuple[str, int, str, str]]


@dataclass
class RunData:
    """Everything a report reads from OUT."""

    out: Path
    frame: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    estimate: dict[str, Any] | None = None

    @property
    def currency(self) -> str:
        """The run's currency: the rows', else the summary's cost keys, else the shipped price table's."""
        values = [c for c in self.frame["currency"].dropna().unique() if c]
        if values:
            return ", ".join(sorted(str(c) for c in values))
        keys = [k for k in (self.summary.get("cost") or {}) if k]
        return ", ".join(sorted(keys)) if keys else load_prices().currency


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load(out: Path, *, columns: list[str] | None = None) -> RunData:
    """Read OUT; a folder without ``results.parquet`` is a usage error."""
    out = Path(out)
    path = out / RESULTS_NAME
    if not path.is_file():
        raise UsageError(f"no results in {out}: {RESULTS_NAME} not found (has a run finished there?)")
    frame = pd.read_parquet(path, columns=columns)
    return RunData(
        out=out,
        frame=frame,
        summary=_json(out / SUMMARY_NAME) or {},
        events=read_run_events(out),
        estimate=_json(out / ESTIMATE_SUMMARY),
    )


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Items per status, every known status present (0 when none), others after them."""
    counts = frame["status"].fillna("pending").value_counts()
    result = {status: int(counts.get(status, 0)) for status in STATUSES}
    result.update({str(k): int(v) for k, v in counts.items() if k not in result})
    return result


def failure_groups(frame: pd.DataFrame, *, examples: int = FAILURE_EXAMPLES) -> list[FailureGroup]:
    """Failed items grouped by error type, the largest group first, each with its first few items."""
    failed = frame[frame["status"] == STATUS_FAILED]
    if failed.empty:
        return []
    kinds = failed["error_type"].fillna("unknown")
    groups = []
    for kind, rows in failed.groupby(kinds, sort=False):
        head = rows.head(examples)
        shown = [
            (
                str(item_id),
                int(str(row)),
                code if isinstance(code, str) else "",
                message if isinstance(message, str) else "(no message)",
            )
            for item_id, row, code, message in head[["id", "row", "error_code", "error_message"]].itertuples(
                index=False
            )
        ]
        groups.append(FailureGroup(str(kind), len(rows), shown))
    return sorted(groups, key=lambda g: (-g.count, g.error_type))


def failure_lines(out: Path, groups: list[FailureGroup], total: int) -> list[str]:
    """Failed items for people: per error type the count, then the first few ids with their messages."""
    if not groups:
        return []
    lines = [f"{total:,} failed items, by error type"]
    for group in groups:
        lines.append(f"  {group.error_type}: {group.count:,}")
        for item_id, row, code, message in group.examples:
            code_text = f" [{code}]" if code else ""
            lines.append(f"    {item_id} (row {row}){code_text}: {_one_line(message, 160)}")
        if group.count > len(group.examples):
            lines.append(f"    ... and {group.count - len(group.examples):,} more")
    lines.append(f"  all of them: {out / RESULTS_NAME} (status == 'failed'; error_type, error_code, error_message)")
    return lines


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cost_by_model_modality(frame: pd.DataFrame, prices: PriceBook, region: str) -> pd.DataFrame:
    """Money by model and modality, estimated and actual, over the items that ran ok.

    Actual: the reported usage split by modality (as the rows' ``cost`` was computed), the estimate where a
    row has no usage. Columns: model, modality, estimated, actual. Models without a known price are left out.
    """
    ok = frame[frame["status"] == STATUS_OK]
    records = []
    for (model, modalities), rows in ok.groupby([ok["model"].fillna(""), ok["modalities"].fillna("text,audio")]):
        price = prices.lookup(str(model), region)
        if price is None:
            continue
        est_in_media = rows["est_input_audio_tokens"].fillna(0) + rows["est_input_image_tokens"].fillna(0)
        for text_only, part in rows.groupby(est_in_media == 0):
            sums: dict[str, dict[str, int]] = {"estimated": {}, "actual": {}}
            for m in MODALITIES:
                est = part[f"est_{m}_tokens"].fillna(0)
                used = part[f"usage_{m}_tokens"].fillna(est)
                sums["estimated"][m], sums["actual"][m] = int(est.sum()), int(used.sum())
            audio_output = "audio" in str(modalities)
            money = {
                kind: cost_breakdown(price, **tokens, text_only_input=bool(text_only), audio_output=audio_output)
                for kind, tokens in sums.items()
            }
            for m in MODALITIES:
                records.append((str(model), m, money["estimated"][m], money["actual"][m]))
    table = pd.DataFrame(records, columns=["model", "modality", "estimated", "actual"])
    return table.groupby(["model", "modality"], as_index=False, sort=False).sum()


def latency_quantiles(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """p50 / p90 / p99 / max of each latency column over the ok items (seconds)."""
    ok = frame[frame["status"] == STATUS_OK]
    result: dict[str, dict[str, float]] = {}
    for column in LATENCY_COLUMNS:
        values = ok[column].dropna()
        if values.empty:
            continue
        q = values.quantile([0.5, 0.9, 0.99])
        result[column] = {"p50": float(q[0.5]), "p90": float(q[0.9]), "p99": float(q[0.99]), "max": float(values.max())}
    return result


def run_window(data: RunData) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """When the run started and finished (UTC): the summary's clock, else the rows' earliest and latest."""
    start = _timestamp(data.summary.get("started_at"))
    end = _timestamp(data.summary.get("finished_at"))
    if start is None and data.frame["started_at"].notna().any():
        start = data.frame["started_at"].min()
    if end is None and data.frame["finished_at"].notna().any():
        end = data.frame["finished_at"].max()
    return start, end


def _timestamp(value: Any) -> pd.Timestamp | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = pd.Timestamp(datetime.fromisoformat(value))
    except ValueError:
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def finished_per_minute(frame: pd.DataFrame, start: pd.Timestamp) -> pd.Series:
    """Items finished (ok or failed) in each minute since ``start``: index minutes from the start."""
    done = frame.loc[frame["status"].isin([STATUS_OK, STATUS_FAILED]), "finished_at"].dropna()
    if done.empty:
        return pd.Series(dtype="int64")
    minutes = ((done - start).dt.total_seconds() // 60).clip(lower=0).astype("int64")
    counts = minutes.value_counts().sort_index()
    return counts.reindex(range(int(counts.index.max()) + 1), fill_value=0)


def pauses(events: list[dict[str, Any]]) -> list[tuple[str, pd.Timestamp, float]]:
    """(kind, start, seconds) of every pause on the timeline: throttle cool-downs and outages."""
    spans: list[tuple[str, pd.Timestamp, float]] = []
    opened: pd.Timestamp | None = None
    for event in events:
        stamp = _timestamp(event.get("t"))
        if stamp is None:
            continue
        name = event.get("event")
        if name == "throttle":
            spans.append(("throttle cool-down", stamp, float(event.get("cool_down_seconds") or 0.0)))
        elif name == "breaker_open":
            opened = stamp
        elif name in ("breaker_close", "outage_exceeded") and opened is not None:
            spans.append(("outage pause", opened, (stamp - opened).total_seconds()))
            opened = None
    if opened is not None:  # the run ended inside an outage
        last = max((s for s in (_timestamp(e.get("t")) for e in events) if s is not None), default=opened)
        spans.append(("outage pause", opened, (last - opened).total_seconds()))
    return spans


def exit_text(summary: dict[str, Any]) -> str:
    """``1 (finished, some items failed): completed``; says so when the run recorded no exit."""
    if "exit_code" not in summary:
        return "unknown (no summary.json: the run was stopped before it wrote one)"
    code = summary["exit_code"]
    meaning = EXIT_MEANINGS.get(code, "see batchqwen/exitcodes.py")
    return f"{code} ({meaning}): {summary.get('exit_reason') or 'no reason recorded'}"
