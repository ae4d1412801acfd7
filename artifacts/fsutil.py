"""Durable local file operations: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def commit_file(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, then atomically give it its final name."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_files(paths: list[Path], root: Path | None = None) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to `root`: hashes the bytes, not live objects.

    A tokenizer object's hash can change after use, so callers hash its saved files.
    """
    out = {}
    for p in sorted(Path(p) for p in paths):
        name = str(p.relative_to(root)) if root else p.name
        out[name] = sha256_file(p)
    return out
