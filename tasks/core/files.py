"""Files that readers see whole, and a lock for work two processes must not do at once.

Every write goes to a hidden temporary file beside its target (``.<name>.<pid>.<thread>.tmp``:
ingestion and the stores never read names that start with '.') and is renamed over the target in
one step, so a reader sees the old file or the new one, never half of either; the temporary file
is removed when the write fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import pyarrow as pa


def temporary_beside(path: Path) -> Path:
    """The hidden temporary name a write of ``path`` by this process and thread goes to."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block ends
    without an error, removed otherwise. ``durable``: fsync the file and the folder as well (for
    data a producer drops once and never sends again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """The rename that ends a write streamed to ``temporary_beside(path)`` over several calls
    (where a ``with atomic_path(...)`` block cannot hold it)."""
    os.replace(tmp, path)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_bytes_atomic(path: Path, payload: bytes, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(payload)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any, **dumps: Any) -> None:
    """``data`` as JSON (``dumps`` passed to :func:`json.dumps`), with a final newline."""
    write_text_atomic(path, json.dumps(data, **dumps) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]], **dumps: Any) -> None:
    """One JSON object per line."""
    write_text_atomic(path, "".join(json.dumps(row, **dumps) + "\n" for row in rows))


def write_arrow_atomic(table: pa.Table, path: Path) -> None:
    """A table as an Arrow IPC file (its schema metadata kept)."""
    import pyarrow as pa

    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """A table as a zstd-compressed Parquet file."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory ``flock`` on ``path`` held for the block; a second holder waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_of(path: Path, opener: Callable[[Path], BinaryIO] | None = None) -> str:
    """The file's sha256 as hex, read in 1 MiB chunks (through ``opener``, default a plain
    binary open: ingestion passes one that refuses links)."""
    import hashlib

    digest = hashlib.sha256()
    with (opener or (lambda p: open(p, "rb")))(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
