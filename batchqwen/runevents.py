"""The run event log: ``OUT/run_events.jsonl``, one JSON object per line for every event of the run as a
whole (not of one item): the breaker opening, probing and closing, throttling cool-downs, the outage
budget running out, the output disk filling up. A report draws them on the run's timeline.

Each line: ``{"t": "<ISO 8601 UTC>", "event": "<name>", ...fields}``; the names and fields are listed in
``docs/results_schema.md``. Writing is best effort: a run never fails because its event log cannot be
written (a full disk is reported where it matters: the journal and the summary).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_EVENTS_NAME = "run_events.jsonl"


class RunEvents:
    """Append-only, line-buffered; one writer (the run's event loop)."""

    def __init__(self, out_dir: Path, secrets: list[str] | None = None) -> None:
        self.path = Path(out_dir) / RUN_EVENTS_NAME
        self._secrets = [s for s in (secrets or []) if s]
        self._fd: int | None = None
        self.failed = False

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        record = {"t": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        line = json.dumps(record, ensure_ascii=False, default=str)
        for secret in self._secrets:
            line = line.replace(secret, "***")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, (line + "\n").encode("utf-8", "surrogatepass"))
        except OSError:
            self.failed = True  # best effort: the disk may be full; the journal and summary say so

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_run_events(out_dir: Path) -> list[dict[str, Any]]:
    """Every whole line of ``OUT/run_events.jsonl`` (a torn last line is skipped)."""
    path = Path(out_dir) / RUN_EVENTS_NAME
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
