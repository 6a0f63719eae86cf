"""Admission control shared by every worker of a run: concurrency, sessions per minute, tokens per minute,
a throttling cool-down that pauses everyone, a ramp-up at the start, and the budget cap.

The windows are sliding (a log of start times / token charges over the last ``window`` seconds), which is
how the service counts; a small ``margin`` on the window keeps clock skew between us and the service from
turning the last session of a window into a refusal.

The ramp-up (``ramp_seconds``) opens the concurrency slots one by one over the first seconds after the
first admission instead of all at once: Model Studio refuses traffic that rises too fast with a burst
limit of its own, apart from RPM/TPM ("Rate limits", 2026). :meth:`Limiter.ramp_up` starts it again,
e.g. after an outage, when every worker would otherwise rush in together.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from batchqwen.errors import AdmissionClosed, BudgetExceeded

#: the ramp-up of a run against the service: slots open over these first seconds (0: all at once)
RUN_RAMP_SECONDS = 5.0


@dataclass
class Reservation:
    """What one admitted session was charged; settled with the real figures when it ends."""

    tokens: int
    cost: float
    charged_at: float


class Limiter:
    """Bounded concurrency + RPM + TPM + budget for one run (one event loop).

    ``acquire`` waits until a session may start, charges it, and returns a :class:`Reservation`;
    ``release`` must follow with what the session really used (tokens and money, 0 when unknown).
    """

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: int | None,
        tpm: int | None,
        max_cost: float | None = None,
        window: float = 60.0,
        margin: float = 0.5,
        ramp_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if ramp_seconds < 0:
            raise ValueError("ramp_seconds must not be negative")
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.max_cost = max_cost
        self.window = window + margin
        self.ramp_seconds = ramp_seconds
        self._ramp_start: float | None = None  # set by the first admission (and by ramp_up)
        self._active = 0  # sessions admitted and not yet released
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._starts: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        self._cool_until = 0.0
        self._admit = asyncio.Lock()  # one admission at a time keeps the windows exact
        self._closed = False
        self._wake = asyncio.Event()  # set by close() and by a release that frees tokens
        self.spent = 0.0
        self.in_flight_cost = 0.0
        self.sessions_started = 0
        self.cooldowns = 0

    # ------------------------------------------------------------------ windows
    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._tokens_in_window -= self._tokens.popleft()[1]

    def open_slots(self, now: float) -> int:
        """How many sessions may be open at ``now``: one at the ramp's start, one more every
        ``ramp_seconds / concurrency`` seconds, all of them from ``ramp_seconds`` on."""
        if self.ramp_seconds <= 0 or self._ramp_start is None:
            return self.concurrency
        elapsed = now - self._ramp_start
        if elapsed >= self.ramp_seconds:
            return self.concurrency
        return min(self.concurrency, 1 + math.floor(elapsed * self.concurrency / self.ramp_seconds + 1e-9))

    def ramp_up(self) -> None:
        """Start the ramp again from one open slot (sessions already open stay open)."""
        if self.ramp_seconds > 0:
            self._ramp_start = self._clock()

    def _ramp_wait(self, now: float) -> float:
        """Seconds until one more slot opens, when the open ones are all taken (0 otherwise)."""
        if self._active < self.open_slots(now):
            return 0.0
        assert self._ramp_start is not None
        # slot number active + 1 opens at active * ramp / concurrency after the ramp's start
        return max(0.0, self._ramp_start + self._active * self.ramp_seconds / self.concurrency - now) + 1e-6

    def _wait_needed(self, now: float, tokens: int) -> float:
        """Seconds until a session charging ``tokens`` may start (0 when it may start now)."""
        self._expire(now)
        wait = max(0.0, self._cool_until - now)
        if self.ramp_seconds > 0:
            if self._ramp_start is None:
                self._ramp_start = now  # the ramp runs from the first admission, not from construction
            wait = max(wait, self._ramp_wait(now))
        if self.rpm is not None and len(self._starts) >= self.rpm:
            wait = max(wait, self._starts[len(self._starts) - self.rpm] + self.window - now)
        if self.tpm is not None and self._tokens and self._tokens_in_window + tokens > self.tpm:
            # wait until enough old charges leave the window
            excess = self._tokens_in_window + tokens - self.tpm
            for charged_at, amount in self._tokens:
                excess -= amount
                if excess <= 0:
                    wait = max(wait, charged_at + self.window - now)
                    break
            else:  # larger than the quota by itself: it waits for an empty window, then goes alone
                wait = max(wait, self._tokens[-1][0] + self.window - now)
        return wait

    def check_budget(self, cost: float) -> None:
        """Raise BudgetExceeded when starting a session of estimated ``cost`` could pass the cap."""
        if self.max_cost is not None and self.spent + self.in_flight_cost + cost > self.max_cost + 1e-12:
            raise BudgetExceeded(
                f"budget cap {self.max_cost:g} reached: spent {self.spent:.4f}, in flight {self.in_flight_cost:.4f},"
                f" next item estimated at {cost:.4f}"
            )

    # ------------------------------------------------------------------ public
    async def acquire(self, *, tokens: int, cost: float) -> Reservation:
        await self._slots.acquire()
        try:
            async with self._admit:
                while True:
                    if self._closed:
                        raise AdmissionClosed("the run is stopping: no new sessions")
                    self.check_budget(cost)
                    now = self._clock()
                    wait = self._wait_needed(now, tokens)
                    if wait <= 0:
                        break
                    # woken early by close() or by freed tokens; a cool-down set meanwhile is seen next pass
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                self._starts.append(now)
                self._tokens.append((now, tokens))
                self._tokens_in_window += tokens
                self.in_flight_cost += cost
                self.sessions_started += 1
                self._active += 1
                return Reservation(tokens=tokens, cost=cost, charged_at=now)
        except BaseException:
            self._slots.release()
            raise

    def release(self, reservation: Reservation, *, tokens: int | None, cost: float) -> None:
        """End a session: correct its token charge to what was reported, move its cost to spent."""
        self.in_flight_cost -= reservation.cost
        self.spent += cost
        if tokens is not None and tokens != reservation.tokens:
            # the charge stays at its original time: the service counts the session when it ran
            for index, (charged_at, amount) in enumerate(self._tokens):
                if charged_at == reservation.charged_at and amount == reservation.tokens:
                    self._tokens[index] = (charged_at, tokens)
                    self._tokens_in_window += tokens - amount
                    if tokens < amount:
                        self._wake.set()
                    break
        self._active -= 1
        if self.open_slots(self._clock()) < self.concurrency:
            self._wake.set()  # during the ramp a freed session lets a waiter in before the next slot opens
        self._slots.release()

    def close(self) -> None:
        """Refuse every waiting and future ``acquire`` (AdmissionClosed); sessions already open go on."""
        self._closed = True
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def cool_down(self, seconds: float) -> None:
        """Pause every new admission for ``seconds`` (after throttling), not just the refused worker's."""
        until = self._clock() + seconds
        if until > self._cool_until:
            self._cool_until = until
            self.cooldowns += 1
