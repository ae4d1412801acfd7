"""A content-addressed artifact store: `<root>/<kind>-<hash of inputs>/`.

An artifact folder holds Arrow shards and, once complete, `manifest.json`; the manifest is
written last and atomically, so its presence is what "complete" means. Producers of one key
serialize on an advisory lock in `<root>/.locks/`, which the kernel releases if they die.

The store may also be an fsspec URL (s3://, gs://, memory://): then `root` is its local working copy
(locks, the shard being written, models pulled for loading) and artifacts live at the URL
(artifacts/remote.py says how producers write there without rename or flock).
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

from adpa.artifacts.fsutil import idle
from adpa.artifacts.remote import Remote, RemoteArtifact, RemoteError, is_url, working_copy
from adpa.schemas.keys import parse_key
from adpa.schemas import manifest as mf

MANIFEST = "manifest.json"
LOCKS = ".locks"
INCOMING = ".incoming"
PROGRESS = ".progress"


class StoreError(Exception):
    """A store operation that cannot go on; the message is one line naming the artifact."""


def repair_hint(key: str) -> str:
    """What to run about a damaged artifact, said wherever one is found."""
    return (f"repair it: adpa cache repair {key} URL (a good copy from another store), or adpa cache repair {key} "
            f"(removes it), then run the command that made it again")


class Store:
    """`root`: a folder, or an fsspec URL (ADPA_STORE when None); `remote` is None for a folder.
    `workdir`: a URL store's working copy (default: artifacts.remote.working_copy)."""

    def __init__(self, root: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None):
        spec = os.fspath(root) if root is not None else os.environ.get("ADPA_STORE", "store")
        if not spec.strip():  # an unset variable in a script (ADPA_STORE=$DIR) must not mean "here"
            raise StoreError("the store setting is empty (--store '' or ADPA_STORE=''): name a folder or URL, or "
                             "leave both unset for ./store")
        self.remote = Remote(spec) if is_url(spec) else None
        self.url = self.remote.url if self.remote else None
        if self.remote is None:
            self.root = Path(spec.removeprefix("file://"))
        else:
            self.root = Path(workdir) if workdir is not None else working_copy(self.url)

    def __str__(self) -> str:
        return self.url or str(self.root)

    def path(self, key: str) -> Path:
        """The artifact's local folder (on a URL store: in the working copy)."""
        parse_key(key)
        return self.root / key

    # ---- manifests ---------------------------------------------------------------------
    def local_manifest(self, key: str) -> dict | None:
        p = self.path(key) / MANIFEST
        if not p.exists():
            return None
        return read_manifest(p, key)

    def manifest(self, key: str) -> dict | None:
        """The validated manifest of a complete artifact (local, else remote), None when incomplete or absent."""
        m = self.local_manifest(key)
        if m is None and self.remote is not None:
            try:
                m = self.remote.manifest(key)
            except RemoteError as e:
                raise StoreError(str(e)) from None
        return m

    def is_complete(self, key: str) -> bool:
        return (self.path(key) / MANIFEST).exists() or self.manifest(key) is not None

    def only_remote(self, key: str) -> bool:
        """Complete on the URL store and not in the working copy."""
        return self.remote is not None and self.local_manifest(key) is None and self.remote.manifest(key) is not None

    def location(self, key: str) -> Path | RemoteArtifact:
        """Where to read the artifact from: its local folder, or the remote one when only that is complete."""
        if self.only_remote(key):
            return RemoteArtifact(self.remote, key, self.root / INCOMING)
        return self.path(key)

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
        out = set(self.remote.keys()) if self.remote is not None else set()
        if self.root.is_dir():
            for p in self.root.iterdir():
                try:
                    parse_key(p.name)
                except ValueError:
                    continue
                if p.is_dir():
                    out.add(p.name)
        return sorted(out)

    def entry(self, key: str) -> dict:
        """One `adpa cache ls` line: complete artifacts from their manifest, others from disk; `state` is
        complete, partial (a folder without a manifest: resumed by the next run) or missing."""
        p = self.path(key)
        e = {"key": key, "kind": parse_key(key), "path": str(self.location(key)) if self.remote else str(p.resolve()),
             "complete": False, "state": "missing", "rows": None, "tokens": None, "bytes": None, "created": None}
        try:
            m = self.manifest(key)
        except (mf.ManifestError, StoreError) as err:
            return e | {"error": str(err)}
        if m is None and not p.is_dir():
            return e
        if m is None:  # a run that stopped, or one writing now: the next run resumes it
            files = [f for f in p.iterdir() if f.is_file()]
            e["bytes"] = sum(f.stat().st_size for f in files)
            e["created"] = _iso(p.stat().st_mtime)
            return e | {"state": "partial"}
        t = m["totals"]
        return e | {"complete": True, "state": "complete", "rows": t["rows"], "tokens": t["tokens"], "bytes": t["bytes"],
                    "created": m.get("created"), "input_rows": m["input_rows"], **_what(m.get("inputs"))}

    # ---- garbage collection ------------------------------------------------------------
    def gc(self, older_than_s: float, dry_run: bool = False) -> list[Path | str]:
        """Remove incomplete leftovers untouched for `older_than_s` whose producers are gone.

        A complete artifact is never touched; a folder whose key or rank lock is held is in use. On a
        URL store the working copy is cleaned so, and the URL as Remote.gc says.
        """
        removed = []
        now = time.time()
        for key in self.keys():
            p = self.path(key)
            if not p.is_dir() or (p / MANIFEST).exists() or now - _newest_mtime(p) < older_than_s:
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
            for p in inc.iterdir():  # a pull's, push's or reader's work folder is held while in use
                try:
                    if now - _newest_mtime(p) < older_than_s:
                        continue
                except FileNotFoundError:  # its owner removed it meanwhile
                    continue
                with idle(p) as free:
                    if free:
                        removed.append(p)
                        if not dry_run:
                            with contextlib.suppress(FileNotFoundError):
                                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if self.remote is not None:
            removed += self.remote.gc(older_than_s, dry_run)
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


def _what(inputs) -> dict:
    """Which model role and which data an artifact is of, from its inputs: `role` (teacher, reference,
    student; an advantage artifact's states), `data` (the first 12 hex digits of the data file's sha256)."""
    if not isinstance(inputs, dict):
        return {"role": None, "data": None}
    role = inputs.get("role") if isinstance(inputs.get("role"), str) else None
    if role is None and isinstance(inputs.get("states"), str):
        role = f"states={inputs['states']}"
    data = inputs.get("data") if isinstance(inputs.get("data"), dict) else {}
    sha = data.get("sha256") if isinstance(data.get("sha256"), str) else None
    return {"role": role[:24] if role else None, "data": sha[:12] if sha else None}
