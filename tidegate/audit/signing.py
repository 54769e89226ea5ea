"""The Ed25519 key that signs audit checkpoints.

Generated on first use into `$TIDEGATE_HOME/audit-signing-key.pem` (PKCS#8 PEM, 0600), or
given as TIDEGATE_AUDIT_SIGNING_KEY (the 32-byte private seed, base64): every node of a
deployment must sign with the same key, as they share the pepper. The verifying key is
shown by `GET /api/v1/audit/public-key` and `tidegate audit public-key`: base64 of its 32
raw bytes. A key id is the first 16 hex digits of SHA-256 over those bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = "audit-signing-key.pem"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def encode_public(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    """A verifying key: base64 of the 32 raw bytes, or a PEM SubjectPublicKeyInfo. ValueError if neither."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
        return True
    except (InvalidSignature, binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode()


def load_signer(home: Path, seed: bytes | None = None) -> Signer:
    """The configured key, or the one in `home` (created, 0600, if there is none yet)."""
    if seed is not None:
        return Signer(Ed25519PrivateKey.from_private_bytes(seed))
    path = home / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # another process won the race: use its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return Signer(key)
