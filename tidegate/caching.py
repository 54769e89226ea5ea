"""Process caches that hold only immutable values.

A cache outlives the request (and the database session) that filled it, and is shared by
every thread. So what it holds must be a value no one can change and that needs no session:
never an ORM object (after the filling request's session rolls back or closes, it is expired
and detached, and the next reader gets `DetachedInstanceError`), never a list or dict another
thread could mutate. `require_immutable` enforces that at the moment a value is stored, so
putting the wrong thing in a cache fails at once, in tests, rather than under load.

`LRUCache` is the one bounded cache to use; anything keeping values across requests goes
through it (or calls `require_immutable` itself, as the byte-bounded result caches do).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from decimal import Decimal
from typing import Any, Generic, TypeVar

import pyarrow as pa
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import NoInspectionAvailable

from tidegate import metrics

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ATOMS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    Decimal,
    dt.date,
    dt.time,
    dt.timedelta,
    dt.tzinfo,
    uuid.UUID,
    enum.Enum,
)
# Arrow data is immutable once built (no API changes a Table's buffers in place).
_ARROW = (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray, pa.Schema, pa.DataType, pa.Scalar)


def _is_mapped(value: Any) -> bool:
    """A SQLAlchemy ORM instance (of any mapped class)."""
    try:
        state = sa_inspect(value, raiseerr=False)
    except NoInspectionAvailable:
        return False
    return state is not None and hasattr(state, "mapper") and hasattr(state, "session_id")


def require_immutable(value: V, *, where: str = "value") -> V:
    """`value` unchanged if it is immutable all the way down; TypeError otherwise.

    Immutable: None, numbers, str, bytes, dates and times, enums, Arrow data, and tuples,
    frozensets and frozen dataclasses made only of those. Refused: ORM instances, lists,
    dicts, sets, and any other object.
    """
    _check(value, where)
    return value


def _check(value: Any, where: str) -> None:
    if isinstance(value, _ATOMS) or isinstance(value, _ARROW):
        return
    if isinstance(value, (tuple, frozenset)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    if _is_mapped(value):
        raise TypeError(
            f"{where} is a database object ({type(value).__name__}): caches hold frozen snapshots, "
            f"never ORM instances (they expire with the session that loaded them)"
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not type(value).__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{where} is a dataclass that is not frozen ({type(value).__name__})")
        for field in dataclasses.fields(value):
            _check(getattr(value, field.name), f"{where}.{field.name}")
        return
    raise TypeError(
        f"{where} is a mutable or unknown {type(value).__name__}: caches hold only immutable values "
        f"(tuples, frozensets, frozen dataclasses, str, numbers, Arrow data)"
    )


class LRUCache(Generic[K, V]):
    """A thread-safe LRU of at most `max_entries` immutable values (checked on `put`)."""

    def __init__(self, max_entries: int, *, name: str = "cache"):
        self.max_entries = max_entries
        self.name = name
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        require_immutable(key, where=f"{self.name} key")
        require_immutable(value, where=f"{self.name} value")
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[K]:
        """The keys, least recently used first (a copy)."""
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __getitem__(self, key: K) -> V:
        with self._lock:
            return self._entries[key]


class ByteLRUCache(Generic[K, V]):
    """A thread-safe LRU of immutable values (checked on `put`) bounded by their total size
    in bytes, as given; one value may take at most `max_entry_fraction` of it."""

    def __init__(
        self, max_bytes: int, *, name: str = "cache", max_entry_fraction: float = 0.25, meter: str | None = None
    ):
        self.max_bytes = max_bytes
        self.name = name
        self.meter = meter  # the cache's name in the metrics, if its lookups are counted
        self.max_entry_bytes = int(max_bytes * max_entry_fraction)
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if self.meter is not None:
            metrics.cache_lookup(self.meter, entry is not None)
        return entry[0] if entry is not None else None

    def put(self, key: K, value: V, size: int) -> bool:
        """Keep `value` (False: too large to keep, not kept)."""
        require_immutable(key, where=f"{self.name} key")
        require_immutable(value, where=f"{self.name} value")
        if size > self.max_entry_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
