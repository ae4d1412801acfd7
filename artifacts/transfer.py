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

import fsspec

from artifacts.fsutil import seal
from artifacts.remote import RemoteError, fetch_checked
from artifacts.store import INCOMING, MANIFEST, Store, StoreError
from artifacts.signing import MAX_SIGNATURES_BYTES, SIGNATURES, SignatureError, check_trusted
from artifacts.verify import Incomplete, VerifyError, verify_artifact
from schemas import manifest as mf


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def push(store: Store, key: str, url: str) -> str:
    """Copy a complete, verified artifact to `<url>/<key>/`; returns the remote artifact URL."""
    src = store.path(key)
    try:
        m = verify_artifact(src)
    except Incomplete as e:
        raise StoreError(f"cannot push {key}: {e}") from None
    fs, root = _fs(url)
    dest = f"{root}/{key}"
    target = dest
    try:
        fs.makedirs(dest, exist_ok=True)
        signed = [SIGNATURES] if (src / SIGNATURES).exists() else []
        for name in [s["file"] for s in m["shards"]] + [MANIFEST] + signed:
            target = f"{dest}/{name}"
            fs.put_file(str(src / name), target)
    except OSError as e:  # the destination's fault (full, read-only, gone): name it, not the local file
        raise StoreError(f"push {key} to {url}: {e.strerror or e} writing {target}; the remote copy has no "
                         f"manifest, so no reader takes it as complete") from None
    return url.rstrip("/") + "/" + key


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
    work = store.root / INCOMING / uuid.uuid4().hex
    tmp = work / key  # verified under its own name, then renamed into place
    tmp.mkdir(parents=True)
    try:
        for s in m["shards"]:
            _fetch(fs, f"{remote}/{s['file']}", tmp / mf.check_shard_name(s["file"]), s["bytes"], s["sha256"])
        (tmp / MANIFEST).write_bytes(raw)  # the exact bytes: signatures are over them
        if fs.exists(f"{remote}/{SIGNATURES}"):
            if fs.size(f"{remote}/{SIGNATURES}") > MAX_SIGNATURES_BYTES:
                raise StoreError(f"{url}: {SIGNATURES} exceeds {MAX_SIGNATURES_BYTES} bytes")
            (tmp / SIGNATURES).write_bytes(fs.cat_file(f"{remote}/{SIGNATURES}"))
        verify_artifact(tmp)
        if trust is not None:
            check_trusted(tmp, trust)
        seal(tmp)
        with store.lock(key):
            if _sound(store, key, trust):
                return key, True
            dest = store.path(key)
            if dest.exists():  # an abandoned attempt or a damaged copy of the same key; we hold its lock
                dest.rename(work / "replaced")
            tmp.rename(dest)
        return key, False
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
