"""``batchqwen report OUT``: what a finished run cost, and how good its estimate was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchqwen.errors import UsageError

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
    currencies = {c for c in table.column("currency").to_pylist() if c}
    return RunReport(
        items=table.num_rows,
        status_counts=counts,
        lines=lines,
        estimated_cost=float(pc.sum(ok.column("est_cost")).as_py() or 0.0),
        actual_cost=float(pc.sum(table.column("cost")).as_py() or 0.0),
        currency=", ".join(sorted(currencies)) or "?",
        cost_bases=bases,
    )


def format_report(report: RunReport) -> str:
    status = ", ".join(f"{k} {v}" for k, v in sorted(report.status_counts.items()))
    rows = [
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
        "actual cost basis: " + ", ".join(f"{k} {v}" for k, v in sorted(report.cost_bases.items())),
    ]
    return "\n".join(rows)
