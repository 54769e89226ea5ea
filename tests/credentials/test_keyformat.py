"""Key format and hashing: unit tests."""

from __future__ import annotations

import re
import zlib

from hypothesis import given
from hypothesis import strategies as st

from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import (
    BASE62,
    CHECKSUM_LENGTH,
    RANDOM_LENGTH,
    base62,
    checksum,
    display_prefix,
    generate_key,
    is_well_formed,
)


def test_generated_key_shape():
    key = generate_key()
    assert re.fullmatch(r"qk_[0-9A-Za-z]{38}", key)
    assert len(key) == 3 + RANDOM_LENGTH + CHECKSUM_LENGTH
    assert is_well_formed(key)


def test_checksum_is_crc32_of_random_part_in_base62():
    key = generate_key()
    random_part = key[3 : 3 + RANDOM_LENGTH]
    value = 0
    for ch in key[-CHECKSUM_LENGTH:]:
        value = value * 62 + BASE62.index(ch)
    assert value == zlib.crc32(random_part.encode())


def test_keys_are_unique():
    assert len({generate_key() for _ in range(2000)}) == 2000


def test_every_single_character_typo_is_refused():
    key = generate_key()
    for i in range(3, len(key)):
        for replacement in ("0", "z", "A"):
            if key[i] == replacement:
                continue
            typo = key[:i] + replacement + key[i + 1 :]
            assert not is_well_formed(typo), typo


def test_malformed_keys_refused():
    key = generate_key()
    for bad in [
        "",
        "qk_",
        key[:-1],
        key + "0",
        "sk_" + key[3:],
        key.upper(),
        key.replace("qk_", "QK_"),
        key[:10] + "-" + key[11:],
        " " + key,
    ]:
        assert not is_well_formed(bad), bad


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_base62_roundtrip_fits_six_chars(value):
    text = base62(value, CHECKSUM_LENGTH)
    assert len(text) == CHECKSUM_LENGTH
    decoded = 0
    for ch in text:
        decoded = decoded * 62 + BASE62.index(ch)
    assert decoded == value


@given(st.text(alphabet=BASE62, min_size=RANDOM_LENGTH, max_size=RANDOM_LENGTH))
def test_any_random_part_with_its_checksum_is_well_formed(random_part):
    assert is_well_formed("qk_" + random_part + checksum(random_part))


def test_display_prefix_identifies_without_revealing():
    key = generate_key()
    prefix = display_prefix(key)
    assert key.startswith(prefix) and len(prefix) == 12


def test_hash_is_keyed():
    key = generate_key()
    a, b = b"pepper-a" * 4, b"pepper-b" * 4
    assert hash_secret(a, key) != hash_secret(b, key)
    assert hash_secret(a, key) == hash_secret(a, key)
    assert key not in hash_secret(a, key)
    assert len(hash_secret(a, key)) == 64
