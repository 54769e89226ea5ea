"""`batching.Coalescer`: concurrent asks share a round trip, but never one that started
before they asked (that would hand a request an answer older than the request: a change
committed just before it could be missed), and a failed trip fails its waiters, never
leaves them hanging or hands them a stale answer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tidegate.batching import Coalescer


class Trips:
    """A `work` that answers each item with the number of the trip it was read in, and
    can be held mid-trip."""

    def __init__(self):
        self.count = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_next = False
        self.batches: list[list[str]] = []

    def __call__(self, items: list[str]) -> list[int]:
        self.count += 1
        trip = self.count
        self.batches.append(items)
        self.started.set()
        assert self.release.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the store is down")
        return [trip] * len(items)


async def wait_for(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.001)


def test_an_ask_during_a_trip_is_answered_by_a_later_trip():
    async def scenario():
        trips = Trips()
        coalescer = Coalescer(trips)
        trips.release.clear()
        first = asyncio.ensure_future(coalescer.ask("a"))
        await wait_for(trips.started)  # trip 1 is reading now
        late = [asyncio.ensure_future(coalescer.ask(x)) for x in "bcd"]  # asked after it started
        trips.release.set()
        return await first, await asyncio.gather(*late), trips

    first, late, trips = asyncio.run(scenario())
    assert first == 1
    assert late == [2, 2, 2]  # one later trip for all three, never trip 1's answer
    assert trips.batches == [["a"], ["b", "c", "d"]]


def test_concurrent_asks_share_few_trips():
    async def scenario():
        trips = Trips()
        coalescer = Coalescer(trips)
        answers = await asyncio.gather(*(coalescer.ask(str(i)) for i in range(200)))
        return answers, coalescer

    answers, coalescer = asyncio.run(scenario())
    assert len(answers) == 200 and coalescer.asks == 200
    assert coalescer.trips <= 2, coalescer.trips


def test_a_failed_trip_fails_each_of_its_waiters_and_the_next_trip_serves_again():
    async def scenario():
        trips = Trips()
        coalescer = Coalescer(trips)
        trips.fail_next = True
        failed = await asyncio.gather(*(coalescer.ask(x) for x in "abc"), return_exceptions=True)
        recovered = await coalescer.ask("d")
        return failed, recovered

    failed, recovered = asyncio.run(scenario())
    assert all(isinstance(f, ConnectionError) for f in failed), failed
    assert recovered == 2


def test_a_cancelled_waiter_does_not_disturb_the_others():
    async def scenario():
        trips = Trips()
        coalescer = Coalescer(trips)
        trips.release.clear()
        gone = asyncio.ensure_future(coalescer.ask("gone"))
        stays = asyncio.ensure_future(coalescer.ask("stays"))
        await wait_for(trips.started)
        gone.cancel()
        trips.release.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await stays, await coalescer.ask("next")

    assert asyncio.run(scenario()) == (1, 2)


def test_each_event_loop_has_its_own_queue():
    """A test client runs its own loop beside the server's: asks on either are answered."""
    trips = Trips()
    coalescer = Coalescer(trips)
    assert asyncio.run(coalescer.ask("a")) == 1
    assert asyncio.run(coalescer.ask("b")) == 2  # a new loop: not stuck behind the old one's queue
