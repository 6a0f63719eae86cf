"""Admission control shared by every worker of a run: concurrency, sessions per minute, tokens per minute,
a throttling cool-down that pauses everyone, and the budget cap.

The windows are sliding (a log of start times / token charges over the last ``window`` seconds), which is
how the service counts; a small ``margin`` on the window keeps clock skew between us and the service from
turning the last session of a window into a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from batchqwen.errors import AdmissionClosed, BudgetExceeded


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.max_cost = max_cost
        self.window = window + margin
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

    def _wait_needed(self, now: float, tokens: int) -> float:
        """Seconds until a session charging ``tokens`` may start (0 when it may start now)."""
        self._expire(now)
        wait = max(0.0, self._cool_until - now)
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
