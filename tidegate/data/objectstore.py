"""An S3-compatible object store (AWS S3, MinIO, R2, Ceph) holding source parts and files.

Built on pyarrow's `S3FileSystem` (the AWS C++ SDK that pyarrow already ships: no second
S3 client in the server). Objects are addressed by their path relative to the data root,
exactly as on local disk (`<org>/<source>/<version>/part-NNNN.parquet`,
`<org>/files/<file>`), under `s3://bucket/prefix/`.

An S3 PUT is atomic: an object is either absent or complete, so there are no temp names
here. Every failure to reach the store becomes a 503 (`object_store_unavailable`); a
missing object stays FileNotFoundError for the caller to judge. The secret key is handed
to the SDK only, never logged or put in a message.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from tidegate.config import ObjectStoreSettings
from tidegate.errors import ServiceUnavailable

log = logging.getLogger("tidegate.data")

CONNECT_TIMEOUT = 3.0  # seconds: a store that does not answer is down, not slow
REQUEST_TIMEOUT = 60.0
MAX_ATTEMPTS = 3  # the SDK's own retries (with backoff) before a 503
COPY_CHUNK = 1024 * 1024


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "object_store_unavailable", "The object store holding the data is unreachable; retry shortly.", retry_after=5
    )


@dataclass(frozen=True)
class StoredObject:
    relative: str  # relative to the data root, e.g. "org_x/src_y/ver_z/part-0000.parquet"
    size: int
    mtime: float  # seconds since the epoch (LastModified)


class ObjectStore:
    def __init__(self, settings: ObjectStoreSettings):
        if not settings.enabled:
            raise ValueError("no object store configured")
        self.settings = settings
        self.root = "/".join(p for p in (settings.bucket, settings.prefix) if p)
        self._fs: tuple[int, pafs.S3FileSystem] | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"ObjectStore(s3://{self.root})"

    def _filesystem(self) -> pafs.S3FileSystem:
        # Built per process: the SDK's threads do not survive a fork.
        if self._fs is None or self._fs[0] != os.getpid():
            s = self.settings
            options: dict[str, object] = {
                "region": s.region,
                "connect_timeout": CONNECT_TIMEOUT,
                "request_timeout": REQUEST_TIMEOUT,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
                # Never create or delete buckets, and no "directory" marker objects.
                "allow_bucket_creation": False,
                "allow_bucket_deletion": False,
                "check_directory_existence_before_creation": False,
            }
            if s.access_key_id:
                options["access_key"] = s.access_key_id
                options["secret_key"] = s.secret_access_key
            if s.endpoint_url:
                scheme, _, host = s.endpoint_url.partition("://")
                options["endpoint_override"] = host
                options["scheme"] = scheme
            self._fs = (os.getpid(), pafs.S3FileSystem(**options))
        return self._fs[1]

    def _key(self, relative: str) -> str:
        if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in relative.split("/")):
            raise ValueError(f"not a relative object name: {relative!r}")
        return f"{self.root}/{relative}"

    def _fail(self, action: str, relative: str, exc: OSError) -> ServiceUnavailable:
        log.warning("object store: %s %s failed: %s", action, relative, str(exc)[:300])
        return unavailable()

    def put_file(self, relative: str, local: Path) -> None:
        """Upload `local` as the object `relative` (complete or absent, never partial)."""
        try:
            with open(local, "rb") as src, self._filesystem().open_output_stream(self._key(relative)) as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
        except OSError as exc:
            raise self._fail("upload", relative, exc) from None

    def download(self, relative: str, dst: BinaryIO) -> int:
        """Copy the object into the open file `dst`; its size. FileNotFoundError if absent."""
        size = 0
        try:
            with self._filesystem().open_input_stream(self._key(relative)) as src:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail("download", relative, exc) from None
        return size

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self._filesystem().open_input_stream(self._key(relative)) as src:
                return bytes(src.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail("read", relative, exc) from None

    def list(self) -> list[StoredObject]:
        """Every object under the prefix (directory markers left out)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        try:
            infos = self._filesystem().get_file_info(selector)
        except OSError as exc:
            raise self._fail("list", "", exc) from None
        found = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            found.append(StoredObject(info.path[len(self.root) + 1 :], info.size or 0, mtime))
        return found

    def delete(self, relative: str) -> None:
        try:
            self._filesystem().delete_file(self._key(relative))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail("delete", relative, exc) from None

    def check(self) -> None:
        """Reach the bucket (one listing request); 503 if it cannot be reached."""
        try:
            self._filesystem().get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        except OSError as exc:
            raise self._fail("check", "", exc) from None
