"""The qk_ key format: `qk_` + 32 random base62 characters + a 6-character checksum.

The checksum is CRC32 of the random part in base62 (GitHub's token layout), so a mistyped
or truncated key is refused before any database lookup, and secret scanners can tell one
of our keys from random text.
"""

from __future__ import annotations

import re
import secrets
import zlib

PREFIX = "qk_"
RANDOM_LENGTH = 32  # 62**32 ~ 2**190 possibilities
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so every CRC32 fits
DISPLAY_PREFIX_LENGTH = 12  # `qk_` + 9 characters kept in clear to recognise a key

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PATTERN = re.compile(rf"^qk_[0-9A-Za-z]{{{RANDOM_LENGTH}}}[0-9A-Za-z]{{{CHECKSUM_LENGTH}}}$")


def base62(value: int, width: int) -> str:
    chars = []
    while value:
        value, rem = divmod(value, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars)).rjust(width, "0")


def checksum(random_part: str) -> str:
    return base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LENGTH))
    return PREFIX + random_part + checksum(random_part)


def is_well_formed(key: str) -> bool:
    """Shape and checksum only: says nothing about whether the key exists."""
    if not KEY_PATTERN.match(key):
        return False
    body = key[len(PREFIX) :]
    return secrets.compare_digest(checksum(body[:RANDOM_LENGTH]), body[RANDOM_LENGTH:])


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]
