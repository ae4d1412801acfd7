"""Durable local file operations: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
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


FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)


def copy_file(src: Path, dst: Path) -> None:
    """A new file `dst` with `src`'s bytes: a reflink where the file system has them (no second copy of
    the weights), else a copy; never a hard link, so writing either file never changes the other."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(fin, fout, CHUNK)


def seal(folder: Path) -> None:
    """Make a published artifact's files read-only (a stray write by its owner fails instead of
    changing a shared artifact; removal and repair still work, as the folder stays writable)."""
    for p in Path(folder).iterdir():
        if p.is_file() and not p.is_symlink():
            p.chmod(0o444)


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


@contextlib.contextmanager
def work_folder(parent: Path, prefix: str):
    """A new folder `parent/PREFIX-<uuid>` for work in progress (a pull, a fetched shard), held under its
    `.lock` while in use (`idle` tells; `adpa cache gc` skips it) and removed afterwards."""
    path = Path(parent) / f"{prefix}-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    try:
        with exclusive_folder(path, "work folder"):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def idle(path: Path):
    """Yields whether `path` is free to remove, holding its `.lock` meanwhile: False while a live process
    holds it (work_folder, exclusive_folder) or once it is gone. A plain file, or a folder without a lock
    file (not yet held: its owner's exclusive_folder makes it again), is free."""
    if not Path(path).is_dir():
        yield Path(path).exists()
        return
    try:
        fd = os.open(Path(path) / ".lock", os.O_RDWR)  # never created here: a remover must not leave one behind
    except FileNotFoundError:
        yield Path(path).is_dir()
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class FolderInUse(OSError):
    """Another process holds the folder (the message names it and that process)."""


@contextlib.contextmanager
def exclusive_folder(path: Path, what: str = "folder"):
    """Hold `path/.lock` (an advisory flock the kernel releases when the holder dies) or raise
    FolderInUse at once, naming the holder's pid: two writers never interleave in one folder."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderInUse(f"{what} {path} is in use by another process (pid {holder}); wait for it, or "
                              f"choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
