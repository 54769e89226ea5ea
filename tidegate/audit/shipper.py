"""The audit shipper process that `tidegate serve` runs beside its workers.

Shipping costs ~20 us of Python per event (reading the journal, building the insert), paid
while holding the GIL. In a thread of a worker that is a pause for every request the worker
is serving: measured, a third of a worker's throughput at 4,000 requests/s. So under
`tidegate serve` workers only append and rotate their segments, and this one process ships
them (`journal.ship_pending`, which is idempotent and serialized by a lock file, so a
shipper killed mid-batch loses nothing: the next one ships the batch again).

The server restarts the shipper if it dies, and the shipper exits, after a last round,
when the server stops it or is gone (checked every round: a single-worker server killed by
SIGTERM re-raises it after uvicorn's graceful shutdown, so its own `finally` never runs).
`create_app` used on its own (tests, another ASGI server) ships in a thread as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

from tidegate.audit import chainer
from tidegate.audit.journal import AfterInsert, backoff, brief_error, private_directory, ship_pending
from tidegate.audit.signing import Signer

log = logging.getLogger("tidegate.audit")

# Set by `tidegate serve` for its workers: a shipper process exists, do not ship in-process.
# Not a setting (neither in Settings nor in the README's table): an operator never sets it.
# It is the parent's signal to the uvicorn workers it spawns, and the environment is the one
# channel that reaches them (uvicorn imports the app factory by name, without arguments).
ENV_FLAG = "TIDEGATE_AUDIT_SHIPPER"


def ships_elsewhere() -> bool:
    return os.environ.get(ENV_FLAG) == "process"


# Where the shipper process finds the checkpoint signing key: ($TIDEGATE_HOME, configured seed).
ChainKey = tuple[str, bytes | None]


def _run(
    directory: str,
    database_url: str,
    parent_pid: int,
    interval: float,
    stop: Event,
    after_insert: AfterInsert | None,
    chain_key: ChainKey | None = None,
) -> None:
    # Signals to the whole process group (Ctrl-C, a service manager's SIGTERM) are for the
    # server: it stops us through `stop`, or we see it gone. Either way we ship once more.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signer = chainer.signer_for(*chain_key) if chain_key else None
    failures = 0
    while True:
        failures = 0 if _ship_round(directory, database_url, after_insert, signer) else failures + 1
        if stop.is_set() or os.getppid() != parent_pid:
            return
        # While the database is down, wait longer between rounds (at most journal.MAX_BACKOFF).
        stop.wait(backoff(interval, failures))
        if stop.is_set() or os.getppid() != parent_pid:
            _ship_round(directory, database_url, after_insert, signer)
            return


def _ship_round(
    directory: str, database_url: str, after_insert: AfterInsert | None, signer: Signer | None = None
) -> bool:
    try:
        ship_pending(Path(directory), database_url, after_insert=after_insert)
    except Exception as exc:  # keep the segments; the next round retries
        log.warning("audit shipping failed (%s); will retry", brief_error(exc))
        return False
    if signer is not None:  # here, not in the workers: hashing holds the GIL (see audit.chainer)
        try:
            chainer.run_if_due(database_url, signer)
        except Exception as exc:  # the next round retries
            log.warning("audit chain round failed (%s); will retry", brief_error(exc))
    return True


class ShipperProcess:
    """Runs `_run` in a child process and restarts it if it dies."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        interval: float = 1.0,
        *,
        after_insert: AfterInsert | None = None,
        chain_key: ChainKey | None = None,
    ):
        self.directory = directory
        self.database_url = database_url
        self.after_insert = after_insert  # a module-level function: the spawned child imports it
        self.chain_key = chain_key  # None: this process does not run the chainer
        self.interval = interval
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stop = self._context.Event()  # seen by the child and by the watch thread
        self._watch: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _spawn(self) -> None:
        self._process = process = self._context.Process(
            target=_run,
            args=(
                str(self.directory),
                self.database_url,
                os.getpid(),
                self.interval,
                self._stop,
                self.after_insert,
                self.chain_key,
            ),
            name="tidegate-audit-shipper",
            daemon=True,
        )
        process.start()

    def start(self) -> None:
        private_directory(self.directory)
        self._spawn()

        def watch() -> None:
            while not self._stop.wait(1.0):
                process = self._process
                if process is not None and not process.is_alive() and not self._stop.is_set():
                    log.warning("audit shipper exited (code %s); restarting it", process.exitcode)
                    self._spawn()

        self._watch = threading.Thread(target=watch, name="tidegate-audit-shipper-watch", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        """Stop the shipper after its last round, then ship what is left from here."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
        if self._process is not None:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()  # safe: shipping is idempotent and transactional
                self._process.join(timeout=5)
        if not _ship_round(str(self.directory), self.database_url, self.after_insert):
            log.warning("audit events stay in %s until the next start", self.directory)
        if self.chain_key is not None:  # chain what is left, and sign every moved head
            chainer.last_round(self.database_url, chainer.signer_for(*self.chain_key))
