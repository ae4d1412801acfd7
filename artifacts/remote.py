"""A store at an fsspec URL (s3://, gs://, memory://, any fsspec filesystem): shards straight to it,
the manifest last.

Object stores have no rename and no flock, so on such a store:
- a shard is put under a name that carries its content hash (`shard-RRR-IIIII-<sha256[:16]>.arrow`):
  two producers of one key never overwrite each other's bytes;
- a shard's progress record (`<key>/.progress/rRRR-shard-IIIII.json`) is put after the shard, and a
  writer's done record lists every shard of its slice, so the producer that assembles reads one
  consistent list even when two producers of one key ran at once;
- the manifest is put last, as one object: its presence is what "complete" means. Two producers that
  assemble at once each put a complete manifest over shards that exist (no producer deletes shards).
Locks still serialise the processes of one machine through the store's local working copy.

Reading fetches one shard at a time into the working copy, checking its size and sha256 on the way,
decodes it and deletes it: memory and disk stay bounded by a shard, whatever the artifact's size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from adpa.schemas import manifest as mf
from adpa.schemas.keys import parse_key

MANIFEST = "manifest.json"
PROGRESS = ".progress"
MAX_RECORD_BYTES = 4 << 20  # a done record lists a slice's shards: a few hundred bytes each
CHUNK = 4 << 20


class RemoteError(Exception):
    """A remote store operation that failed; one line naming the URL."""


def is_url(spec: str) -> bool:
    """A store given as an fsspec URL other than a local path (file:// counts as local)."""
    return "://" in spec and not spec.startswith("file://")


def working_copy(url: str) -> Path:
    """The local folder that holds locks, shards being written and pulled models for the store at `url`
    (ADPA_WORKDIR, else ~/.cache/adpa/stores/<hash of the URL>)."""
    if os.environ.get("ADPA_WORKDIR"):
        return Path(os.environ["ADPA_WORKDIR"])
    return Path.home() / ".cache" / "adpa" / "stores" / hashlib.sha256(url.encode()).hexdigest()[:16]


class Remote:
    """The artifacts under one fsspec URL, `<url>/<key>/...`."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, path = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:  # an unknown protocol, or its package missing (s3fs, gcsfs)
            raise RemoteError(f"store {self.url}: {e}") from None
        self.base = path.rstrip("/")

    def path(self, key: str, name: str = "") -> str:
        parse_key(key)
        return f"{self.base}/{key}" + (f"/{name}" if name else "")

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key}"

    # ---- reading -----------------------------------------------------------------------
    def read_small(self, key: str, name: str, bound: int) -> bytes | None:
        """The bytes of `<key>/<name>` (None when absent), refused past `bound` bytes."""
        p = self.path(key, name)
        try:
            # One ranged GET: a buffered open() reads in parts and fails when another producer
            # replaces the object between them (s3fs: "Etag ... no longer exists").
            data = self.fs.cat_file(p, start=0, end=bound + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RemoteError(f"{self.url}/{key}/{name}: {e}") from None
        if len(data) > bound:
            raise mf.ManifestError(f"{self.url}/{key}/{name}: exceeds {bound} bytes")
        return data

    def manifest(self, key: str) -> dict | None:
        """The validated manifest of a complete remote artifact, None when there is none."""
        raw = self.read_small(key, MANIFEST, mf.MAX_MANIFEST_BYTES)
        if raw is None:
            return None
        try:
            return mf.validate(json.loads(raw), key)
        except RecursionError:
            raise mf.ManifestError(f"{self.url}/{key}/{MANIFEST}: nested deeper than {mf.MAX_DEPTH} levels") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise mf.ManifestError(f"{self.url}/{key}/{MANIFEST}: not valid JSON ({e})") from None
        except mf.ManifestError as e:
            raise mf.ManifestError(f"{self.url}/{key}/{MANIFEST}: {e}") from None

    def sizes(self, key: str, sub: str = "") -> dict[str, int]:
        """Name -> size of the files in `<key>/` (or `<key>/<sub>/`), from one listing."""
        path = self.path(key, sub)
        self.fs.invalidate_cache(path)  # other processes write here: never a listing cached earlier
        try:
            listing = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for e in listing:
            if e.get("type") == "file":
                out[e["name"].rstrip("/").rsplit("/", 1)[-1]] = int(e.get("size") or 0)
        return out

    def keys(self) -> list[str]:
        self.fs.invalidate_cache(self.base)
        try:
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.base, detail=False)]
        except FileNotFoundError:
            return []
        out = []
        for n in sorted(set(names)):
            try:
                parse_key(n)
            except ValueError:
                continue
            out.append(n)
        return out

    def fetch(self, key: str, entry: dict, dest: Path) -> Path:
        """Download one manifest entry to `dest`, at most its declared size, checking its sha256 on the way."""
        name = mf.check_shard_name(entry["file"])
        try:
            fetch_checked(self.fs, self.path(key, name), dest, entry["bytes"], entry["sha256"])
        except RemoteError as e:
            raise RemoteError(f"{name}: {e}") from None
        return dest

    # ---- writing -----------------------------------------------------------------------
    def put_file(self, local: Path, key: str, name: str) -> None:
        target = self.path(key, name)
        try:
            self.fs.makedirs(self.path(key), exist_ok=True)
            self.fs.put_file(str(local), target)
        except OSError as e:
            raise RemoteError(f"store {self.url}: {e.strerror or e} writing {key}/{name}") from None

    def put_bytes(self, key: str, name: str, data: bytes) -> None:
        target = self.path(key, name)
        try:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(target, data)
        except OSError as e:
            raise RemoteError(f"store {self.url}: {e.strerror or e} writing {key}/{name}") from None

    def gc(self, older_than_s: float, dry_run: bool = False) -> list[str]:
        """Remove what no manifest names and nobody has written for `older_than_s`: shards and records of
        a complete artifact that its manifest does not list (a producer that lost a race, a resumed one's
        progress), and incomplete artifacts whose newest object is that old (their producers are gone).
        A complete artifact's manifest, signatures and listed shards are never touched."""
        import time

        now, removed = time.time(), []
        for key in self.keys():
            root = self.path(key)
            self.fs.invalidate_cache(root)
            objects = self.fs.find(root, detail=True)
            try:
                m = self.manifest(key)
            except mf.ManifestError:
                continue  # a damaged manifest is for `adpa cache repair`, not for gc
            age = {p: now - _modified(self.fs, p, info) for p, info in objects.items()}
            if m is None:
                drop = list(objects) if objects and min(age.values()) >= older_than_s else []
            else:
                keep = {f"{root}/{s['file']}" for s in m["shards"]} | {f"{root}/{MANIFEST}", f"{root}/signatures.json"}
                drop = [p for p in objects if p not in keep and age[p] >= older_than_s]
            removed += [f"{self.url}/{p[len(self.base) + 1:]}" for p in sorted(drop)]
            if dry_run or not drop:
                continue
            if m is None:
                self.fs.rm(root, recursive=True)  # folders too, where the filesystem has them (memory://)
            else:
                for p in drop:
                    self.fs.rm_file(p)
        return removed


def is_local_fs(fs) -> bool:
    """An fsspec filesystem of local paths (rename and symlinks exist there)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def fetch_checked(fs, src: str, dest, size: int, sha256: str) -> None:
    """Copy `src` to the local `dest`, refusing more than `size` bytes as it streams, then a short file or
    another sha256; RemoteError says which."""
    h, n = hashlib.sha256(), 0
    if is_local_fs(fs) and os.path.islink(src):  # a pull must not copy a file from elsewhere
        raise RemoteError("a symbolic link; an artifact's files are regular files inside its folder")
    try:
        with fs.open(src, "rb") as fin, open(dest, "wb") as fout:
            while chunk := fin.read(min(CHUNK, size + 1 - n)):
                n += len(chunk)
                if n > size:
                    raise RemoteError(f"larger than the {size} bytes its manifest declares")
                h.update(chunk)
                fout.write(chunk)
    except FileNotFoundError:
        raise RemoteError("missing") from None
    if n != size:
        raise RemoteError(f"{n} bytes, manifest says {size} (truncated or replaced)")
    if h.hexdigest() != sha256:
        raise RemoteError("sha256 does not match the manifest (corrupt or altered)")


def _modified(fs, path: str, info: dict) -> float:
    """An object's last modification, from its listing where the filesystem gives it (S3, memory)."""
    t = info.get("LastModified") or info.get("mtime") or info.get("created")
    if t is None:
        t = fs.modified(path)
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


class RemoteArtifact:
    """Where an artifact that is complete only on a remote store is read from (see ArtifactReader)."""

    def __init__(self, remote: Remote, key: str, scratch: Path):
        self.remote, self.key, self.name, self.scratch = remote, key, key, Path(scratch)

    def __str__(self) -> str:
        return self.remote.url_of(self.key)
