"""The endpoint's process is restarted when it dies, ever less often while it keeps dying."""

from __future__ import annotations

import time

from tidegate.pgwire import runner


class _Dead:
    exitcode = 1

    def is_alive(self) -> bool:
        return False


def test_a_process_that_keeps_dying_is_restarted_with_backoff(monkeypatch):
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.01)
    monkeypatch.setattr(runner, "RESTART_MIN_SECONDS", 0.05)
    monkeypatch.setattr(runner, "RESTART_MAX_SECONDS", 0.4)
    spawned: list[float] = []
    endpoint = runner.PgProcess("127.0.0.1", 0, False)

    def spawn() -> None:  # a process that fails at once (a port taken, a broken certificate)
        spawned.append(time.monotonic())
        endpoint._process = _Dead()  # type: ignore[assignment]

    monkeypatch.setattr(endpoint, "_spawn", spawn)
    endpoint.start()
    deadline = time.monotonic() + 10
    while len(spawned) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    endpoint._stopping.set()
    gaps = [b - a for a, b in zip(spawned, spawned[1:], strict=False)]
    assert len(gaps) >= 5
    # 0.05, 0.1, 0.2, 0.4, 0.4 s (plus the watch's polling): doubling, capped; never a busy loop
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[3] >= 0.4 and gaps[4] >= 0.4
    assert gaps[4] < 2.0
