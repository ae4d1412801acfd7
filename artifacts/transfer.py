"""Copying artifacts between stores with fsspec (local path, file://, s3://, gs://, hf://, memory:// ...).

push: shards first, manifest last, so a reader of the remote store never sees a manifest whose
shards are not there yet. pull: everything lands in `<store>/.incoming/`, is verified in full
(manifest rules, sizes, sha256, schema, counts) and only then renamed into place under the key's
lock; a bad remote artifact never becomes visible, and a damaged local copy of the key is replaced.
repair: a damaged local artifact replaced by a pulled copy, or removed so that its producer rebuilds it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import fsspec

from adpa.artifacts.fsutil import copy_file, fsync_dir, fsync_file, seal, work_folder
from adpa.artifacts.remote import RemoteError, fetch_checked, is_local_fs
from adpa.artifacts.store import INCOMING, MANIFEST, Store, StoreError
from adpa.artifacts.signing import MAX_SIGNATURES_BYTES, SIGNATURES, SignatureError, check_trusted
from adpa.artifacts.verify import Incomplete, VerifyError, verify_artifact
from adpa.schemas import manifest as mf


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def push(store: Store, key: str, url: str) -> str:
    """Copy a complete, verified artifact to `<url>/<key>/`; returns the remote artifact URL.

    A destination that already holds this manifest with every file at its size is left as it is. On a local
    folder the copy is made under `.incoming/` and verified, then renamed into place (an existing copy is
    replaced by one rename): a kill at any instant leaves the old copy or the new one. On an object store
    (no rename) an existing manifest is deleted first, then shards, the manifest last: a kill leaves an
    incomplete copy that no reader takes as complete, never a damaged one under a manifest."""
    src = store.path(key)
    try:
        m = verify_artifact(src)
    except Incomplete as e:
        raise StoreError(f"cannot push {key}: {e}") from None
    fs, root = _fs(url)
    names = [s["file"] for s in m["shards"]] + [MANIFEST] + ([SIGNATURES] if (src / SIGNATURES).exists() else [])
    target = f"{root}/{key}"
    try:
        if _already_there(fs, target, src, m):
            return url.rstrip("/") + "/" + key
        if is_local_fs(fs):
            _push_local(Path(root), key, src, names)
        else:
            if fs.exists(f"{target}/{MANIFEST}"):
                fs.rm(f"{target}/{MANIFEST}")
            for name in names:
                fs.put_file(str(src / name), f"{target}/{name}")
    except OSError as e:  # the destination's fault (full, read-only, gone): name it, not the local file
        raise StoreError(f"push {key} to {url}: {e.strerror or e} writing {e.filename or target}; no reader takes "
                         f"a partial copy as complete") from None
    return url.rstrip("/") + "/" + key


def _already_there(fs, target: str, src, m: dict) -> bool:
    """The destination holds these exact manifest bytes and every shard at its size (content-addressed: the
    same key and manifest are the same artifact)."""
    try:
        if fs.cat_file(f"{target}/{MANIFEST}") != (src / MANIFEST).read_bytes():
            return False
        return all(fs.size(f"{target}/{s['file']}") == s["bytes"] for s in m["shards"])
    except OSError:  # absent, or unreadable: not there
        return False


def _push_local(root: Path, key: str, src: Path, names: list[str]) -> None:
    """Into a local folder: copy and verify under `.incoming/`, then rename into place."""
    with work_folder(root / INCOMING, "push") as work:
        tmp = work / key
        tmp.mkdir()
        for name in names:
            copy_file(src / name, tmp / name)
            fsync_file(tmp / name)
        fsync_dir(tmp)
        try:
            verify_artifact(tmp)
        except VerifyError as e:
            raise StoreError(f"push {key}: the copy in {tmp} does not verify ({e})") from None
        seal(tmp)
        dest = root / key
        if dest.exists():  # the old copy: moved aside by one rename, removed with the work folder
            dest.rename(work / "replaced")
        tmp.rename(dest)
        fsync_dir(root)


def pull(store: Store, url: str, trust: dict | None = None) -> tuple[str, bool]:
    """Fetch the artifact at `url` (its folder) into the store; returns (key, reused). `trust`
    (signing.trusted_keys): the artifact must carry a signature by one of those keys to become visible."""
    fs, remote = _fs(url)
    mpath = f"{remote}/{MANIFEST}"
    if not fs.exists(mpath):
        raise StoreError(f"{url}: no {MANIFEST} there (not an artifact, or incomplete)")
    if fs.size(mpath) > mf.MAX_MANIFEST_BYTES:
        raise StoreError(f"{url}: manifest exceeds {mf.MAX_MANIFEST_BYTES} bytes")
    try:
        raw = fs.cat_file(mpath)
        m = mf.validate(json.loads(raw))
    except RecursionError:
        raise StoreError(f"{url}: manifest nested deeper than {mf.MAX_DEPTH} levels") from None
    except (ValueError, mf.ManifestError) as e:
        raise StoreError(f"{url}: {e}") from None
    key = m["key"]
    name = remote.rsplit("/", 1)[-1]
    if name != key:
        raise StoreError(f"{url}: folder is named {name!r} but its manifest is for {key}")
    if _sound(store, key, trust):
        return key, True
    with work_folder(store.root / INCOMING, "pull") as work:  # held: `adpa cache gc` leaves it alone
        tmp = work / key  # verified under its own name, then renamed into place
        tmp.mkdir()
        (tmp / MANIFEST).write_bytes(raw)  # the exact bytes: signatures are over them
        if fs.exists(f"{remote}/{SIGNATURES}"):
            if fs.size(f"{remote}/{SIGNATURES}") > MAX_SIGNATURES_BYTES:
                raise StoreError(f"{url}: {SIGNATURES} exceeds {MAX_SIGNATURES_BYTES} bytes")
            (tmp / SIGNATURES).write_bytes(fs.cat_file(f"{remote}/{SIGNATURES}"))
        if trust is not None:  # before any shard: an unsigned artifact costs one small read, not its size
            check_trusted(tmp, trust)
        for s in m["shards"]:
            _fetch(fs, f"{remote}/{s['file']}", tmp / mf.check_shard_name(s["file"]), s["bytes"], s["sha256"])
        verify_artifact(tmp)
        seal(tmp)
        with store.lock(key):
            if _sound(store, key, trust):
                return key, True
            dest = store.path(key)
            if dest.exists():  # an abandoned attempt or a damaged copy of the same key; we hold its lock
                dest.rename(work / "replaced")
            tmp.rename(dest)
        return key, False


def local_copy(store: Store, key: str):
    """The artifact's local folder; on a URL store pulled (verified in full) first when only the store has it."""
    if store.only_remote(key):
        pull(store, store.remote.url_of(key))
    return store.path(key)


def publish(store: Store, key: str) -> None:
    """On a URL store, push a complete local artifact there unless the store already has it."""
    if store.remote is not None and store.remote.manifest(key) is None:
        push(store, key, store.url)


def _sound(store: Store, key: str, trust: dict | None = None) -> bool:
    """A complete local copy that verifies in full, and carries a trusted signature when `trust` asks
    for one (a damaged or untrusted one is to be replaced)."""
    if not store.is_complete(key):
        return False
    try:
        verify_artifact(store.path(key))
        if trust is not None:
            check_trusted(store.path(key), trust)
        return True
    except (VerifyError, SignatureError):
        return False


def repair(store: Store, key: str, url: str | None = None) -> str:
    """Verify `key`; when it is damaged, replace it with the verified copy at `url` (that store's folder
    of the key, or the store itself), or remove it when no url is given. Returns what was done."""
    d = store.path(key)
    if not d.is_dir():
        raise StoreError(f"no artifact {key} in {store.root}")
    try:
        verify_artifact(d)
        return f"{key} is sound; nothing to repair"
    except Incomplete:
        return f"{key} is incomplete (not damaged): run its producer again to finish it, or adpa cache gc"
    except VerifyError as e:
        problem = str(e)
    if url:
        if url.rstrip("/").rsplit("/", 1)[-1] != key:
            url = url.rstrip("/") + "/" + key
        pull(store, url)
        return f"{key} was damaged ({problem}); replaced with the verified copy from {url}"
    with store.lock(key):
        trash = store.root / INCOMING / f"removed-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        d.rename(trash)  # one rename: readers never see a half-deleted artifact
    shutil.rmtree(trash, ignore_errors=True)
    return f"{key} was damaged ({problem}); removed: run the command that made it again to rebuild it"


def _fetch(fs, src: str, dest, size: int, sha256: str) -> None:
    try:
        fetch_checked(fs, src, dest, size, sha256)
    except RemoteError as e:
        raise StoreError(f"{src}: {e}") from None
