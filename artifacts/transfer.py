"""Copying artifacts between stores with fsspec (local path, file://, s3://, gs://, hf://, memory:// ...).

push: shards first, manifest last, so a reader of the remote store never sees a manifest whose
shards are not there yet. pull: everything lands in `<store>/.incoming/`, is verified in full
(manifest rules, sizes, sha256, schema, counts) and only then renamed into place under the key's
lock; a bad remote artifact never becomes visible.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid

import fsspec

from artifacts.store import INCOMING, MANIFEST, Store, StoreError
from artifacts.verify import verify_artifact
from schemas import manifest as mf

CHUNK = 4 << 20


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def push(store: Store, key: str, url: str) -> str:
    """Copy a complete, verified artifact to `<url>/<key>/`; returns the remote artifact URL."""
    src = store.path(key)
    m = verify_artifact(src)
    fs, root = _fs(url)
    dest = f"{root}/{key}"
    fs.makedirs(dest, exist_ok=True)
    for s in m["shards"]:
        fs.put_file(str(src / s["file"]), f"{dest}/{s['file']}")
    fs.put_file(str(src / MANIFEST), f"{dest}/{MANIFEST}")
    return url.rstrip("/") + "/" + key


def pull(store: Store, url: str) -> tuple[str, bool]:
    """Fetch the artifact at `url` (its folder) into the store; returns (key, reused)."""
    fs, remote = _fs(url)
    mpath = f"{remote}/{MANIFEST}"
    if not fs.exists(mpath):
        raise StoreError(f"{url}: no {MANIFEST} there (not an artifact, or incomplete)")
    if fs.size(mpath) > mf.MAX_MANIFEST_BYTES:
        raise StoreError(f"{url}: manifest exceeds {mf.MAX_MANIFEST_BYTES} bytes")
    try:
        m = mf.validate(json.loads(fs.cat_file(mpath)))
    except (ValueError, mf.ManifestError) as e:
        raise StoreError(f"{url}: {e}") from None
    key = m["key"]
    name = remote.rsplit("/", 1)[-1]
    if name != key:
        raise StoreError(f"{url}: folder is named {name!r} but its manifest is for {key}")
    if store.is_complete(key):
        return key, True
    work = store.root / INCOMING / uuid.uuid4().hex
    tmp = work / key  # verified under its own name, then renamed into place
    tmp.mkdir(parents=True)
    try:
        for s in m["shards"]:
            _fetch(fs, f"{remote}/{s['file']}", tmp / mf.check_shard_name(s["file"]), s["bytes"], s["sha256"])
        (tmp / MANIFEST).write_bytes(json.dumps(m, indent=1).encode())
        verify_artifact(tmp)
        with store.lock(key):
            if store.is_complete(key):
                return key, True
            dest = store.path(key)
            if dest.exists():  # an abandoned local attempt at the same key; we hold its lock
                shutil.rmtree(dest)
            tmp.rename(dest)
        return key, False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch(fs, src: str, dest, size: int, sha256: str) -> None:
    """Download at most `size` bytes, hashing on the way; a longer or different file is refused."""
    h, n = hashlib.sha256(), 0
    with fs.open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(min(CHUNK, size + 1 - n)):
            n += len(chunk)
            if n > size:
                raise StoreError(f"{src}: larger than the {size} bytes its manifest declares")
            h.update(chunk)
            fout.write(chunk)
    if n != size:
        raise StoreError(f"{src}: {n} bytes, manifest declares {size}")
    if h.hexdigest() != sha256:
        raise StoreError(f"{src}: sha256 does not match the manifest")
