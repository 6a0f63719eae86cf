"""``batchqwen report OUT``: what a finished run cost, and how good its estimate was."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchqwen.cost import load_prices
from batchqwen.errors import UsageError
from batchqwen.reporting import analysis
from batchqwen.reporting.analysis import FailureGroup

MODALITIES = ("input_text", "input_audio", "input_image", "output_text", "output_audio")


@dataclass(frozen=True)
class ModalityLine:
    modality: str
    estimated: int
    reported: int

    @property
    def error(self) -> float | None:
        """Relative error of the estimate against the reported usage (None when nothing was reported)."""
        return None if self.reported == 0 else (self.estimated - self.reported) / self.reported


@dataclass(frozen=True)
class RunReport:
    items: int
    status_counts: dict[str, int]
    lines: list[ModalityLine]
    estimated_cost: float
    actual_cost: float
    currency: str
    cost_bases: dict[str, int]
    failures: list[FailureGroup] = field(default_factory=list)
    failure_lines: list[str] = field(default_factory=list)
    prices: str = ""  # where the prices came from (page, address, date read)
    header: list[str] = field(default_factory=list)  # how the run went: exit, times, model, limits
    calibrated: dict[str, Any] | None = None  # the last estimate made in OUT (estimate.json), if any


def _sum(table: object, column: str) -> int:
    values = table.column(column)  # type: ignore[attr-defined]
    total = pc.sum(values).as_py()
    return int(total or 0)


def build_report(out_dir: Path) -> RunReport:
    """Read ``OUT/results.parquet``; compare estimate and reported usage over the items that ran ok."""
    path = out_dir / "results.parquet"
    if not path.is_file():
        raise UsageError(f"no results in {out_dir}: {path.name} not found (has a run finished there?)")
    table = pq.read_table(path)
    statuses = table.column("status").to_pylist()
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    lines = [ModalityLine(m, _sum(ok, f"est_{m}_tokens"), _sum(ok, f"usage_{m}_tokens")) for m in MODALITIES]
    bases: dict[str, int] = {}
    for basis in ok.column("cost_basis").to_pylist():
        bases[str(basis)] = bases.get(str(basis), 0) + 1
    columns = ["id", "row", "status", "error_type", "error_code", "error_message", "currency"]
    data = analysis.load(out_dir, columns=[*columns, "started_at", "finished_at"])
    groups = analysis.failure_groups(data.frame)
    failed = counts.get("failed", 0)
    summary = data.summary
    prices = summary.get("prices_source") or ""
    if prices and summary.get("prices_source_url"):
        prices += f" <{summary['prices_source_url']}>"
    if prices and summary.get("prices_as_of"):
        prices += f", as of {summary['prices_as_of']}"
    return RunReport(
        items=table.num_rows,
        status_counts={s: counts.get(s, 0) for s in analysis.status_counts(data.frame)},
        lines=lines,
        estimated_cost=float(pc.sum(ok.column("est_cost")).as_py() or 0.0),
        actual_cost=float(pc.sum(table.column("cost")).as_py() or 0.0),
        currency=data.currency,
        cost_bases=bases,
        failures=groups,
        failure_lines=analysis.failure_lines(out_dir, groups, failed),
        prices=prices or load_prices().describe(),
        header=header_lines(data),
        calibrated=data.estimate if data.estimate and data.estimate.get("calibrated_from") else None,
    )


def header_lines(data: analysis.RunData) -> list[str]:
    """How the run went, from summary.json; a run without one (an old or interrupted run) says so."""
    s = data.summary
    if not s:
        return ["no summary.json: the run did not finish writing it (interrupted, or an older version)"]
    start, end = analysis.run_window(data)
    when = f"{start:%Y-%m-%d %H:%M:%S} - {end:%H:%M:%S} UTC" if start is not None and end is not None else "unknown"
    limits = s.get("limits") or {}
    rpm, tpm = limits.get("rpm"), limits.get("tpm")
    return [
        f"exit {analysis.exit_text(s)}",
        f"ran {when}, {float(s.get('duration_seconds') or 0.0):,.1f} s" + (" (simulated)" if s.get("simulate") else ""),
        f"model {s.get('model') or 'unknown'}; region {s.get('region') or 'unknown'};"
        f" concurrency {s.get('concurrency') or 'unknown'};"
        f" limits {rpm or 'none'} RPM, {tpm or 'none'} TPM ({limits.get('source') or 'unknown source'})",
    ]


def format_report(report: RunReport) -> str:
    status = ", ".join(f"{k} {v}" for k, v in report.status_counts.items())
    rows = [
        *report.header,
        f"{report.items} items: {status}",
        "",
        f"{'tokens (ok items)':<18}{'estimated':>12}{'reported':>12}{'error':>9}",
    ]
    for line in report.lines:
        error = "-" if line.error is None else f"{line.error:+.1%}"
        rows.append(f"{line.modality:<18}{line.estimated:>12,}{line.reported:>12,}{error:>9}")
    est_in = sum(line.estimated for line in report.lines if line.modality.startswith("input"))
    rep_in = sum(line.reported for line in report.lines if line.modality.startswith("input"))
    verdict = "matches exactly" if est_in == rep_in else f"differs by {est_in - rep_in:+,} tokens"
    rows += [
        "",
        f"input estimate {verdict} ({est_in:,} estimated, {rep_in:,} reported)",
        f"cost: estimated {report.estimated_cost:.4f}, actual {report.actual_cost:.4f} {report.currency}"
        + (
            f" (estimate error {(report.estimated_cost - report.actual_cost) / report.actual_cost:+.1%})"
            if report.actual_cost
            else ""
        ),
        "actual cost basis: " + (", ".join(f"{k} {v}" for k, v in sorted(report.cost_bases.items())) or "none"),
        f"prices: {report.prices}",
    ]
    if report.calibrated is not None:
        rows.append(calibrated_line(report.calibrated, report.actual_cost, report.currency))
    if report.failure_lines:
        rows += ["", *report.failure_lines]
    return "\n".join(rows)


def calibrated_line(estimate: dict[str, Any], actual: float, currency: str) -> str:
    """The calibrated estimate made in OUT before the run, against what the run cost."""
    central = estimate.get("estimated_cost")
    sources = ", ".join(estimate.get("calibrated_from") or [])
    if central is None:
        return f"calibrated estimate (from {sources}): unknown (some model has no known price)"
    spread = estimate.get("cost_range")
    within = ""
    if spread:
        inside = "inside" if spread[0] <= actual <= spread[1] else "outside"
        within = f", p10-p90 {spread[0]:.4f} - {spread[1]:.4f} ({inside})"
    error = f"; error {(central - actual) / actual:+.1%}" if actual else ""
    return f"calibrated estimate (from {sources}): {central:.4f} {currency}{within}{error}"
