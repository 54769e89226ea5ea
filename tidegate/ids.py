"""Resource identifiers: a type prefix plus a time-ordered random part (ULID layout).

Time order lets every list use the id itself as its pagination cursor. Hand-written rather
than a dependency because it is ten lines: 48 bits of milliseconds and 80 random bits,
in Crockford base32.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return "".join(reversed(chars))


def new_ulid() -> str:
    """The 26-character time-ordered part of an id."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return _encode(millis, 10) + _encode(rand, 16)


def new_id(prefix: str) -> str:
    return f"{prefix}_{new_ulid()}"


def id_floor(prefix: str, when_ms: int) -> str:
    """The smallest id of `prefix` made at or after `when_ms` (milliseconds since the epoch):
    a time bound on an id column, which an index on the id can range-scan."""
    return f"{prefix}_{_encode(when_ms, 10)}{'0' * 16}"
