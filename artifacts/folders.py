"""Folder artifacts: a model or tokenizer saved by transformers, built once and verified like shards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from adpa.artifacts.fsutil import atomic_write_bytes, fsync_dir, fsync_file, seal, sha256_file
from adpa.schemas.keys import artifact_key
from adpa.artifacts.store import MANIFEST, Store, StoreError, now_iso
from adpa.artifacts.transfer import local_copy, publish
from adpa.artifacts.writer import checked_for_reuse, package_versions, producer_versions
from adpa.schemas import files
from adpa.schemas import manifest as mf


def publish_folder(store: Store, kind: str, inputs: dict, build: Callable[[Path], dict | None]
                   ) -> tuple[Path, dict, bool]:
    """Return (folder, manifest, reused); `build(folder)` fills an empty folder when not built yet.

    A build that dies leaves an incomplete folder, which the next call removes and rebuilds.
    """
    shard_schema = {"name": files.NAME, "version": files.VERSION, "layout": {}}
    key = artifact_key(kind, inputs, shard_schema)
    d = local_copy(store, key)  # a model is loaded from a local folder, so a URL store's copy is pulled
    with store.lock(key):
        m = checked_for_reuse(store, key)
        if m is not None:
            publish(store, key)
            return d, m, True
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        stats = build(d) or {}
        entries = []
        for p in sorted(d.iterdir()):
            if not p.is_file():
                raise StoreError(f"{key}: the build left {p.name!r}, which is not a plain file")
            mf.check_shard_name(p.name)
            fsync_file(p)
            entries.append({"file": p.name, "rows": 0, "tokens": 0, "bytes": p.stat().st_size,
                            "sha256": sha256_file(p)})
        fsync_dir(d)
        m = {"format": mf.FORMAT, "format_version": mf.VERSION, "key": key, "kind": kind, "created": now_iso(),
             "inputs": inputs, "shard_schema": shard_schema, "producer": producer_versions(package_versions("torch", "transformers")), "shards": entries,
             "totals": {"shards": len(entries), "rows": 0, "tokens": 0, "bytes": sum(e["bytes"] for e in entries)},
             "input_rows": 0, "rows_used": 0, "dropped": {}, "stats": stats}
        mf.validate(m, key)
        atomic_write_bytes(d / MANIFEST, json.dumps(m, indent=1).encode())
        seal(d)
    publish(store, key)
    return d, m, False
