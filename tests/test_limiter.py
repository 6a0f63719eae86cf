"""The limiter on its own: short real windows, many concurrent acquirers, no sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from batchqwen.errors import AdmissionClosed, BudgetExceeded
from batchqwen.limiter import Limiter


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rpm_window_never_exceeded_under_many_concurrent_acquirers() -> None:
    starts: list[float] = []

    async def main() -> None:
        limiter = Limiter(concurrency=50, rpm=10, tpm=None, window=0.5, margin=0.02)

        async def session() -> None:
            reservation = await limiter.acquire(tokens=1, cost=0.0)
            starts.append(time.monotonic())
            await asyncio.sleep(0.01)
            limiter.release(reservation, tokens=1, cost=0.0)

        await asyncio.gather(*(session() for _ in range(40)))

    began = time.monotonic()
    run(main)
    assert len(starts) == 40
    assert max_in_window(starts, 0.5) <= 10
    # and it does not idle: 40 sessions at 10 per 0.52 s need three waits, not many more
    assert time.monotonic() - began < 4 * 0.52 + 0.5


def test_concurrency_bound() -> None:
    peak = 0
    active = 0

    async def main() -> None:
        limiter = Limiter(concurrency=3, rpm=None, tpm=None)

        async def session() -> None:
            nonlocal peak, active
            reservation = await limiter.acquire(tokens=0, cost=0.0)
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            limiter.release(reservation, tokens=None, cost=0.0)

        await asyncio.gather(*(session() for _ in range(20)))

    run(main)
    assert peak == 3


def test_tpm_charged_by_estimate_then_corrected_by_usage() -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=1000, window=0.4, margin=0.0)
        first = await limiter.acquire(tokens=900, cost=0.0)
        # the estimate fills the window: a second 200-token session must wait ...
        waiter = asyncio.create_task(limiter.acquire(tokens=200, cost=0.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        # ... until the session reports it used only 300: then it may start at once
        limiter.release(first, tokens=300, cost=0.0)
        t0 = time.monotonic()
        second = await asyncio.wait_for(waiter, 0.5)
        assert time.monotonic() - t0 < 0.1  # woken by the correction, not by the window rolling
        assert limiter._tokens_in_window == 500
        limiter.release(second, tokens=None, cost=0.0)  # unknown usage keeps the estimate
        assert limiter._tokens_in_window == 500
        # usage above the estimate counts too: the next big one waits for the window to roll
        third = await limiter.acquire(tokens=100, cost=0.0)
        limiter.release(third, tokens=600, cost=0.0)
        t0 = time.monotonic()
        fourth = await limiter.acquire(tokens=100, cost=0.0)
        assert time.monotonic() - t0 > 0.2
        limiter.release(fourth, tokens=100, cost=0.0)

    run(main)


def test_a_session_larger_than_the_tpm_quota_waits_for_an_empty_window() -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=100, window=0.3, margin=0.0)
        small = await limiter.acquire(tokens=90, cost=0.0)
        limiter.release(small, tokens=90, cost=0.0)
        t0 = time.monotonic()
        big = await limiter.acquire(tokens=150, cost=0.0)  # over the quota alone: it cannot share a window
        assert time.monotonic() - t0 > 0.25
        assert limiter._tokens_in_window == 150
        limiter.release(big, tokens=150, cost=0.0)

    run(main)


def test_budget_cap_counts_spent_and_in_flight() -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=None, max_cost=1.0)
        a = await limiter.acquire(tokens=0, cost=0.4)
        b = await limiter.acquire(tokens=0, cost=0.4)
        with pytest.raises(BudgetExceeded, match="budget cap 1 reached"):
            await limiter.acquire(tokens=0, cost=0.4)  # 0.8 in flight + 0.4 > 1.0
        limiter.release(a, tokens=None, cost=0.1)  # really cost less
        c = await limiter.acquire(tokens=0, cost=0.4)  # 0.1 spent + 0.8 in flight
        limiter.release(b, tokens=None, cost=0.5)
        limiter.release(c, tokens=None, cost=0.4)
        assert limiter.spent == pytest.approx(1.0)
        with pytest.raises(BudgetExceeded):
            await limiter.acquire(tokens=0, cost=0.01)

    run(main)


def test_cool_down_pauses_every_worker() -> None:
    starts: list[float] = []

    async def main() -> None:
        limiter = Limiter(concurrency=8, rpm=None, tpm=None)
        t0 = time.monotonic()
        limiter.cool_down(0.3)  # one worker was throttled

        async def session() -> None:
            reservation = await limiter.acquire(tokens=0, cost=0.0)
            starts.append(time.monotonic() - t0)
            limiter.release(reservation, tokens=None, cost=0.0)

        await asyncio.gather(*(session() for _ in range(6)))
        assert limiter.cooldowns == 1
        limiter.cool_down(0.5)
        limiter.cool_down(0.1)  # inside the current pause: does not shorten it nor count again
        assert limiter.cooldowns == 2

    run(main)
    assert len(starts) == 6 and min(starts) >= 0.29


def test_close_wakes_waiters_and_refuses_new_sessions() -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=2, rpm=1, tpm=None, window=30.0)
        first = await limiter.acquire(tokens=0, cost=0.0)
        waiting = asyncio.create_task(limiter.acquire(tokens=0, cost=0.0))  # would wait 30 s
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        limiter.close()
        with pytest.raises(AdmissionClosed):
            await waiting
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(AdmissionClosed):
            await limiter.acquire(tokens=0, cost=0.0)
        limiter.release(first, tokens=None, cost=0.0)  # the open session still ends normally

    run(main)


# ----------------------------------------------------------------------------- ramp-up


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ramp_opens_one_slot_at_a_time_from_the_first_admission() -> None:
    clock = FakeClock(10.0)

    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=None, ramp_seconds=2.0, clock=clock)
        assert limiter.open_slots(0.0) == 4  # nothing admitted yet: the ramp has not started
        first = await limiter.acquire(tokens=0, cost=0.0)  # at 10.0: the ramp starts here
        assert [limiter.open_slots(t) for t in (10.0, 10.49, 10.5, 11.0, 11.49, 11.5, 12.0, 99.0)] == [
            1, 1, 2, 3, 3, 4, 4, 4,
        ]  # fmt: skip
        clock.now = 20.0
        limiter.ramp_up()  # e.g. after an outage: from one slot again
        assert limiter.open_slots(20.0) == 1 and limiter.open_slots(21.0) == 3
        limiter.release(first, tokens=None, cost=0.0)

    run(main)


def test_ramp_waiter_goes_when_its_slot_opens_or_a_session_ends() -> None:
    clock = FakeClock(0.0)

    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=None, ramp_seconds=40.0, clock=clock)
        first = await limiter.acquire(tokens=0, cost=0.0)
        waiting = asyncio.create_task(limiter.acquire(tokens=0, cost=0.0))  # slot 2 opens at t=10
        await asyncio.sleep(0.05)
        assert not waiting.done()
        limiter.release(first, tokens=None, cost=0.0)  # the one open slot is free again: in at once
        second = await asyncio.wait_for(waiting, 0.5)
        clock.now = 10.0  # slot 2 is open: a second session goes without waiting
        third = await asyncio.wait_for(limiter.acquire(tokens=0, cost=0.0), 0.5)
        assert limiter.sessions_started == 3
        limiter.release(second, tokens=None, cost=0.0)
        limiter.release(third, tokens=None, cost=0.0)

    run(main)


def test_ramp_in_real_time_spreads_the_first_starts() -> None:
    starts: list[float] = []

    async def main() -> None:
        limiter = Limiter(concurrency=4, rpm=None, tpm=None, ramp_seconds=0.6)
        t0 = time.monotonic()

        async def session() -> None:
            reservation = await limiter.acquire(tokens=0, cost=0.0)
            starts.append(time.monotonic() - t0)
            await asyncio.sleep(1.0)  # longer than the ramp: only the ramp lets the next one in
            limiter.release(reservation, tokens=None, cost=0.0)

        await asyncio.gather(*(session() for _ in range(4)))

    run(main)
    assert starts[0] < 0.05
    assert 0.14 <= starts[1] < 0.3 and 0.29 <= starts[2] < 0.45 and 0.44 <= starts[3] < 0.6


def test_ramp_zero_is_the_default_and_negative_is_refused() -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=3, rpm=None, tpm=None)
        held = [await asyncio.wait_for(limiter.acquire(tokens=0, cost=0.0), 0.1) for _ in range(3)]
        assert limiter.open_slots(0.0) == 3
        for reservation in held:
            limiter.release(reservation, tokens=None, cost=0.0)
        with pytest.raises(ValueError, match="ramp_seconds"):
            Limiter(concurrency=1, rpm=None, tpm=None, ramp_seconds=-1)

    run(main)
