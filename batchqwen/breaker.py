"""The run-level circuit breaker: an outage is the service's, not the items'.

Per-item retries are right for a flaky item and wrong for an outage, which every session sees at once.
Connection-level failures (DNS, refused, TLS, a handshake answered 5xx, a connect timeout) with no
success in between open the breaker after ``threshold`` in a row, counted across all workers. While it is
open every worker waits in :meth:`Breaker.admit`; one of them at a time is let through as the probe after
a growing, jittered, capped cool-down, and the first success closes the breaker for everyone. When the
service stays unreachable for ``max_outage`` seconds the breaker gives up: :meth:`admit` raises
:class:`~batchqwen.errors.ServiceUnreachable` in every waiting worker and the run stops admitting.

States::

    CLOSED --threshold connection failures in a row--> OPEN
    OPEN --cool-down over, one worker admitted as the probe--> PROBING
    PROBING --probe fails--> OPEN (longer cool-down)   | --probe succeeds--> CLOSED
    OPEN | PROBING --outage longer than max_outage--> GAVE_UP (admit raises for everyone, for good)

Logging: one line when it opens (the error and the host), at most one per ``log_every`` seconds while
probes fail, one when it closes (with the outage's length). Every transition also goes to ``on_event``
(the run event log) with its time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batchqwen.errors import AdmissionClosed, ServiceUnreachable
from batchqwen.retry import backoff_delays

log = logging.getLogger("batchqwen")

#: called with (event name, fields) for the run event log
EventSink = Callable[[str, dict[str, Any]], None]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"
    GAVE_UP = "gave_up"


class Breaker:
    """Shared by every worker of one run (one event loop)."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 3.0,  # a probe costs nothing when refused; the run resumes soon after the service
        max_outage: float = 600.0,
        log_every: float = 30.0,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.max_outage = max_outage
        self.log_every = log_every
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._rng = rng or random.Random()
        self._on_event = on_event
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._in_a_row = 0
        self._outage_since: float | None = None  # clock time of the first failure of the current run of them
        self._outage_wall: datetime | None = None
        self._next_probe_at = 0.0
        self._delays = self._new_delays()
        self._changed = asyncio.Event()
        self._last_log = 0.0
        self.probes = 0
        self.outages = 0
        self.outage_seconds = 0.0  # summed over outages that ended
        self.last_error = ""
        self.last_host = ""
        self.gave_up: ServiceUnreachable | None = None
        self._closed = False

    # ------------------------------------------------------------------ what workers call

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED

    async def admit(self) -> bool:
        """Wait until a session may start. Returns True when the caller is the breaker's probe.

        Raises ServiceUnreachable once the outage has lasted ``max_outage``.
        """
        while True:
            if self.gave_up is not None:
                raise self.gave_up
            if self._closed:
                raise AdmissionClosed("the run is stopping")
            if self.state is BreakerState.CLOSED:
                return False
            now = self._clock()
            if self._outage_since is not None and now - self._outage_since >= self.max_outage:
                self._give_up(now)
                continue
            if self.state is BreakerState.OPEN and now >= self._next_probe_at:
                self.state = BreakerState.PROBING
                self.probes += 1
                self._event("breaker_probe", probe=self.probes)
                return True
            wake_at = self._next_probe_at if self.state is BreakerState.OPEN else now + self.max_outage
            if self._outage_since is not None:
                wake_at = min(wake_at, self._outage_since + self.max_outage)
            self._changed.clear()
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def failure(self, error: str, host: str, *, probe: bool = False) -> None:
        """A connection-level failure (the session never got going)."""
        now = self._clock()
        self.last_error, self.last_host = error, host
        if self.gave_up is not None:
            return
        if self._outage_since is None:
            self._outage_since = now
            self._outage_wall = datetime.now(UTC)
        self._in_a_row += 1
        if self.state is BreakerState.CLOSED:
            if self._in_a_row >= self.threshold:
                self._open(now, error, host)
        elif probe:  # the probe failed: wait longer before the next one
            self.state = BreakerState.OPEN
            self._next_probe_at = now + next(self._delays)
            elapsed = now - (self._outage_since or now)
            self._event("breaker_probe_failed", probe=self.probes, error=error, host=host, outage_seconds=elapsed)
            if now - self._last_log >= self.log_every:
                self._last_log = now
                log.warning("service still unreachable after %.0f s (host %s): %s", elapsed, host, error)
            self._notify()

    def success(self, *, probe: bool = False) -> None:
        """A session got through to the service. While the breaker is open only the probe's word counts:
        a session that connected before the outage began says nothing about now."""
        now = self._clock()
        if self.state is not BreakerState.CLOSED and not probe:
            return
        if self.state is not BreakerState.CLOSED and self.gave_up is None:
            length = now - (self._outage_since or now)
            self.outage_seconds += length
            log.warning("service reachable again (host %s) after an outage of %.1f s", self.last_host, length)
            self._event("breaker_close", outage_seconds=round(length, 3), host=self.last_host)
            self.state = BreakerState.CLOSED
            self._delays = self._new_delays()
            self._notify()
        self._in_a_row = 0
        self._outage_since = None
        self._outage_wall = None

    def close(self) -> None:
        """The run is stopping: every waiting worker leaves :meth:`admit` with AdmissionClosed."""
        self._closed = True
        self._notify()

    def release_probe(self) -> None:
        """The probe ended without saying anything about the connection (e.g. the item was local-bad)."""
        if self.state is BreakerState.PROBING:
            self.state = BreakerState.OPEN
            self._notify()

    def summary(self) -> dict[str, Any]:
        """What the run summary records about outages."""
        return {
            "outages": self.outages,
            "outage_seconds": round(self.outage_seconds, 3),
            "probes": self.probes,
            "state": self.state.value,
        }

    # ------------------------------------------------------------------ internals

    def _new_delays(self) -> Any:
        return backoff_delays(base=self._base_delay, cap=self._max_delay, jitter="decorrelated", rng=self._rng)

    def _open(self, now: float, error: str, host: str) -> None:
        self.state = BreakerState.OPEN
        self.outages += 1
        self._next_probe_at = now + next(self._delays)
        self._last_log = now
        log.warning(
            "service unreachable (host %s): %s; %d connection failures in a row: every session pauses, one probe"
            " at a time retries (giving up after --max-outage %g s)",
            host,
            error,
            self._in_a_row,
            self.max_outage,
        )
        self._event("breaker_open", error=error, host=host, failures_in_a_row=self._in_a_row)
        self._notify()

    def _give_up(self, now: float) -> None:
        since = self._outage_wall.isoformat(timespec="seconds") if self._outage_wall else "?"
        message = f"service unreachable since {since}: {self.last_error}, host {self.last_host}"
        self.gave_up = ServiceUnreachable(message)
        self.state = BreakerState.GAVE_UP
        self.outage_seconds += now - (self._outage_since or now)
        log.error("%s; stopping after --max-outage %g s", message, self.max_outage)
        self._event("outage_exceeded", error=self.last_error, host=self.last_host, since=since)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    def _event(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, fields)
