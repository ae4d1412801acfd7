"""A local, content-addressed artifact store: `<root>/<kind>-<hash of inputs>/`.

An artifact folder holds Arrow shards and, once complete, `manifest.json`; the manifest is
written last and atomically, so its presence is what "complete" means. Producers of one key
serialize on an advisory lock in `<root>/.locks/`, which the kernel releases if they die.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from schemas.keys import parse_key
from schemas import manifest as mf

MANIFEST = "manifest.json"
LOCKS = ".locks"
INCOMING = ".incoming"
PROGRESS = ".progress"


def default_root() -> Path:
    return Path(os.environ.get("ADPA_STORE", "store"))


class StoreError(Exception):
    """A store operation that cannot go on; the message is one line naming the artifact."""


def repair_hint(key: str) -> str:
    """What to run about a damaged artifact, said wherever one is found."""
    return (f"repair it: adpa cache repair {key} URL (a good copy from another store), or adpa cache repair {key} "
            f"(removes it), then run the command that made it again")


class Store:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, key: str) -> Path:
        parse_key(key)
        return self.root / key

    # ---- manifests ---------------------------------------------------------------------
    def manifest(self, key: str) -> dict | None:
        """The validated manifest of a complete artifact, None when incomplete or absent."""
        p = self.path(key) / MANIFEST
        if not p.exists():
            return None
        return read_manifest(p, key)

    def is_complete(self, key: str) -> bool:
        return (self.path(key) / MANIFEST).exists()

    # ---- locks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str, blocking: bool = True, quiet: bool = False):
        """Exclusive lock on a key (or `KEY.rNNN`, one rank's part of it); yields False (and holds nothing)
        when non-blocking and taken."""
        parse_key(key.split(".")[0])
        (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCKS / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    yield False
                    return
                if not quiet:
                    print(f"waiting for another producer of {key} ...", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)  # closing releases the flock

    # ---- listing -----------------------------------------------------------------------
    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            try:
                parse_key(p.name)
            except ValueError:
                continue
            if p.is_dir():
                out.append(p.name)
        return out

    def entry(self, key: str) -> dict:
        """One `adpa cache ls` line: complete artifacts from their manifest, others from disk."""
        p = self.path(key)
        e = {"key": key, "kind": parse_key(key), "path": str(p.resolve()), "complete": False,
             "rows": None, "tokens": None, "bytes": None, "created": None}
        try:
            m = self.manifest(key)
        except mf.ManifestError as err:
            return e | {"error": str(err)}
        if m is None:
            files = [f for f in p.iterdir() if f.is_file()]
            e["bytes"] = sum(f.stat().st_size for f in files)
            e["created"] = _iso(p.stat().st_mtime)
            return e
        t = m["totals"]
        return e | {"complete": True, "rows": t["rows"], "tokens": t["tokens"], "bytes": t["bytes"],
                    "created": m.get("created"), "input_rows": m["input_rows"]}

    # ---- garbage collection ------------------------------------------------------------
    def gc(self, older_than_s: float, dry_run: bool = False) -> list[Path]:
        """Remove incomplete leftovers untouched for `older_than_s` whose producers are gone.

        A complete artifact is never touched; a folder whose key or rank lock is held is in use.
        """
        removed = []
        now = time.time()
        for key in self.keys():
            p = self.path(key)
            if (p / MANIFEST).exists() or now - _newest_mtime(p) < older_than_s:
                continue
            names = [key] + sorted(f.name[: -len(".lock")] for f in (self.root / LOCKS).glob(f"{key}.r*.lock"))
            with contextlib.ExitStack() as held:
                if all(held.enter_context(self.lock(n, blocking=False)) for n in names) \
                        and not (p / MANIFEST).exists():
                    removed.append(p)
                    if not dry_run:
                        shutil.rmtree(p)
        inc = self.root / INCOMING
        if inc.is_dir():
            for p in inc.iterdir():
                if now - _newest_mtime(p) >= older_than_s:
                    removed.append(p)
                    if not dry_run:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
        return removed


def read_manifest(path: Path, key: str | None = None) -> dict:
    """Read and validate a manifest file, bounding its size before parsing it."""
    size = path.stat().st_size
    if size > mf.MAX_MANIFEST_BYTES:
        raise mf.ManifestError(f"{path}: {size} bytes exceeds the manifest bound of {mf.MAX_MANIFEST_BYTES}")
    try:
        m = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise mf.ManifestError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise mf.ManifestError(f"{path}: nested deeper than {mf.MAX_DEPTH} levels") from None
    try:
        return mf.validate(m, key)
    except mf.ManifestError as e:
        raise mf.ManifestError(f"{path}: {e}") from None


def _newest_mtime(p: Path) -> float:
    t = p.stat().st_mtime
    if p.is_dir():
        for q in p.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                t = max(t, q.stat().st_mtime)
    return t


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def now_iso() -> str:
    return _iso(time.time())
