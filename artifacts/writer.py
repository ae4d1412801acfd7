"""Producing an artifact: bounded shards committed one by one, a manifest last, resume after a crash.

Input rows are consumed strictly in order; each one is either added (its scored sequences) or
dropped (with a reason), so `input_rows = rows_used + dropped` holds by construction. A shard is
closed at an input-row boundary and committed in three durable steps: the Arrow file under a
temporary name, its atomic rename, then a small progress record naming its input range and
sha256. On restart, committed shards are re-checked and kept, anything else is removed, and the
producer continues at the first input row not covered.

Data-parallel producers (torchrun, any launcher with RANK / WORLD_SIZE): rank r of w owns the
contiguous input slice [n*r/w, n*(r+1)/w) and its own shards (`shard-RRR-IIIII.arrow`) and
progress files; `finish()` marks its slice done; once every rank is done, `assemble()` (one
process, after a barrier) writes the single manifest. A dead rank leaves a resumable artifact;
it must be resumed with the same world size.

On a URL store (artifacts/remote.py) the same steps run without rename or flock: a closed shard is
put straight to the store under a content-hashed name, then its record; a rank's done record lists
its shards; the manifest is put last. Locks in the local working copy still order one machine's
processes.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from importlib import metadata

import pyarrow as pa

from adpa.artifacts.fsutil import atomic_write_bytes, commit_file, seal, sha256_file, work_folder
from adpa.schemas.keys import artifact_key
from adpa.artifacts.shards import ShardError, check_file
from adpa.artifacts.remote import MAX_RECORD_BYTES, RemoteError
from adpa.artifacts.store import INCOMING, MANIFEST, PROGRESS, Store, StoreError, now_iso, repair_hint
from adpa.schemas import manifest as mf

PROGRESS_RE = re.compile(r"^r(\d{3})-(shard-\d{5}\.json|of-(\d{3})\.done)$")
REMOTE_SHARD_RE = re.compile(r"^shard-(\d{3})-(\d{5})-[0-9a-f]{16}\.arrow$")  # on a URL store: content-named


def package_versions(*dists: str) -> dict:
    """{distribution: version} of those installed, read from package metadata (no heavy imports)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def producer_versions(engine: dict | None = None) -> dict:
    """What produced an artifact: adpa, pyarrow and python, plus what its engine reports about itself
    (stage one: the backend's name and packages; a saved model: torch and transformers)."""
    ours = {"adpa": v} if (v := package_versions("adpa-pipeline").get("adpa-pipeline")) else {}
    return ours | package_versions("pyarrow") | {"python": platform.python_version()} | (engine or {})


CHEAP_TO_HASH = 256 << 20  # bytes: an artifact this small is re-hashed on every reuse (well under a second)


def checked_for_reuse(store: Store, key: str, full: bool = False) -> dict | None:
    """The manifest of a complete artifact once its shards are there at their stated sizes, and their
    sha256s when `full` or the artifact is local and cheap to hash; None when it is not complete;
    StoreError naming the key and the repair otherwise. On a URL store a local copy comes first."""
    try:
        m = store.local_manifest(key)
        if m is not None:
            full = full or m["totals"]["bytes"] <= CHEAP_TO_HASH
            for entry in m["shards"]:
                check_file(store.path(key), entry, check_sha=full)
        elif store.remote is not None and (m := store.remote.manifest(key)) is not None:
            sizes = store.remote.sizes(key)
            for entry in m["shards"]:
                if sizes.get(entry["file"]) != entry["bytes"]:
                    raise ShardError(f"{entry['file']}: {sizes.get(entry['file'], 'no')} bytes on the store, "
                                     f"manifest says {entry['bytes']}")
                if full:
                    with work_folder(store.root / INCOMING, "check") as scratch:
                        store.remote.fetch(key, entry, scratch / entry["file"])
    except (mf.ManifestError, ShardError, RemoteError) as e:
        raise StoreError(f"complete artifact {key} is damaged ({e}); {repair_hint(key)}") from None
    return m


class Progress:
    """An artifact's progress records (`<artifact>/.progress/`): local files, or objects on a URL store."""

    def __init__(self, store: Store, key: str):
        self.store, self.key, self.remote = store, key, store.remote
        self.dir = store.path(key) / PROGRESS

    def read(self, name: str) -> bytes | None:
        if self.remote is not None:
            return self.remote.read_small(self.key, f"{PROGRESS}/{name}", MAX_RECORD_BYTES)
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        if self.remote is not None:
            self.remote.put_bytes(self.key, f"{PROGRESS}/{name}", data)
        else:
            atomic_write_bytes(self.dir / name, data)

    def names(self) -> list[str]:
        if self.remote is not None:
            return sorted(self.remote.sizes(self.key, PROGRESS))
        return sorted(p.name for p in self.dir.iterdir()) if self.dir.is_dir() else []


MAX_WRITERS = 999  # ranks have three digits in shard and record names


@dataclass(frozen=True)
class ArtifactSpec:
    """An artifact before it exists: its kind, the inputs its key hashes, its codec and the codec's layout
    parameters, and how many input rows it accounts for (rows in = rows used + rows dropped)."""

    kind: str
    inputs: dict
    codec: object  # schemas.token_topk.Codec, schemas.sequences.Codec
    layout: dict
    input_rows: int

    @property
    def shard_schema(self) -> dict:
        return {"name": self.codec.name, "version": self.codec.version, "layout": self.layout}

    @property
    def key(self) -> str:
        return artifact_key(self.kind, self.inputs, self.shard_schema)


@dataclass(frozen=True)
class WriteOptions:
    """How shards are cut and compressed, and how a complete artifact is checked before reuse."""

    max_shard_rows: int = 50_000
    max_shard_bytes: int = 256 << 20
    batch_tokens: int = 65_536  # scored tokens per record batch
    zstd_level: int = 1  # level 1 beat 3 and 9 on real top-k byte planes, in size and speed (make bench-store)
    verify_reuse: bool = False  # re-hash every shard of a complete artifact, whatever its size


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    return n * rank // world_size, n * (rank + 1) // world_size


class ArtifactWriter:
    """Write (rank `rank`'s slice of) one artifact of `kind` keyed by `inputs`; a context manager
    holding that rank's lock.

    After entering: `reused` is True when a complete artifact already exists (then `manifest` is
    it and nothing may be written); else `resume_from` is the first input row still to produce and
    `end` the end of this rank's slice (`resume_from == end` when another process of the same key
    already finished this slice and only the manifest is pending: `finish()` then keeps its record).
    """

    def __init__(self, store: Store, spec: ArtifactSpec, *, rank: int = 0, world_size: int = 1,
                 options: WriteOptions = WriteOptions()):
        if not 0 <= rank < world_size <= MAX_WRITERS:
            raise ValueError(f"rank {rank} of world size {world_size} is not a valid data-parallel rank")
        self.store, self.spec, self.codec, self.options = store, spec, spec.codec, options
        self.input_rows = int(spec.input_rows)
        self.rank, self.world_size = rank, world_size
        self.start, self.end = rank_slice(self.input_rows, rank, world_size)
        self.layout = spec.codec.layout(spec.layout)
        self.key = spec.key
        self.dir = store.path(self.key)
        self.ipc_options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", options.zstd_level))
        self.reused, self.manifest, self.resume_from, self.done = False, None, self.start, False
        self.remote, self.progress = store.remote, Progress(store, self.key)
        self._lock = None

    def _name(self, i: int) -> str:
        return f"shard-{self.rank:03d}-{i:05d}.arrow"

    def _record_name(self, i: int) -> str:
        return f"r{self.rank:03d}-shard-{i:05d}.json"

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self):
        # Each rank has its own lock, held while it writes. The key's lock serialises publishing
        # (assemble): it is held here too while this rank looks at the folder, so that a producer of
        # the same key that finished its slice and is publishing is never seen half way.
        self._lock = self.store.lock(f"{self.key}.r{self.rank:03d}")
        self._lock.__enter__()
        try:
            with self.store.lock(self.key, quiet=True):
                self.manifest = checked_for_reuse(self.store, self.key, self.options.verify_reuse)
                if self.manifest is not None:
                    self.reused = True
                    return self
                (self.dir / PROGRESS).mkdir(parents=True, exist_ok=True)  # on a URL store: the shard being written
                self._check_world_size()
                self._records, self.done = self._recover()
            self.resume_from = self.end if self.done else (
                self._records[-1]["input_end"] if self._records else self.start)
            self.next_index = self.resume_from
            self._pending, self._pending_tokens = [], 0
            self._drops, self._used = Counter(), 0
            self._rows_in_shard = self._tokens_in_shard = 0
            self._file = None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc):
        if not self.reused and getattr(self, "_file", None) is not None:
            writer, sink, tmp = self._file  # an unfinished shard is never committed
            sink.close()
            tmp.unlink(missing_ok=True)
        self._release()
        return False

    def _release(self):
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def _check_world_size(self):
        for name in self.progress.names():
            m = PROGRESS_RE.match(name)
            if m and m.group(3) and int(m.group(3)) != self.world_size:
                raise StoreError(f"{self.key} was started with world size {int(m.group(3))}; resume it with that "
                                 f"many processes, or remove the incomplete artifact")
        marker = self.progress.read("world_size")
        if marker is not None and marker.decode(errors="replace") != str(self.world_size):
            raise StoreError(f"{self.key} was started with world size {marker.decode(errors='replace')}; resume it "
                             f"with that many processes, or remove the incomplete artifact")
        if marker is None:
            self.progress.write("world_size", str(self.world_size).encode())

    def _recover(self) -> tuple[list[dict], bool]:
        """Keep this rank's committed prefix of shards that still match their records, and its done
        record when every shard it counts is kept; delete its other files. Returns (records, done)."""
        prog = self.dir / PROGRESS
        kept, expect = [], self.start
        remote_sizes = self.remote.sizes(self.key) if self.remote is not None else None
        while (raw := self.progress.read(self._record_name(len(kept)))) is not None:
            try:
                rec = json.loads(raw)
                if remote_sizes is not None:  # a content-named shard: its size is checked, its sha256 when read
                    m = REMOTE_SHARD_RE.match(rec["file"])
                    ok = bool(m) and (int(m.group(1)), int(m.group(2))) == (self.rank, len(kept)) \
                        and remote_sizes.get(rec["file"]) == rec["bytes"]
                else:
                    f = self.dir / rec["file"]
                    ok = (rec["file"] == self._name(len(kept)) and f.stat().st_size == rec["bytes"]
                          and sha256_file(f) == rec["sha256"])
                ok = ok and rec["input_start"] == expect
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                break
            kept.append(rec)
            expect = rec["input_end"]
        done_name = f"r{self.rank:03d}-of-{self.world_size:03d}.done"
        try:
            done = json.loads(self.progress.read(done_name))["shards"] == len(kept)
        except (OSError, ValueError, KeyError, TypeError):
            done = False
        # This rank's other local files go; on a URL store its objects past the kept prefix are
        # overwritten as it goes on (another machine may be writing this rank too, so none is deleted).
        keep = {r["file"] for r in kept} | {self._record_name(i) for i in range(len(kept))} \
            | ({done_name} if done else set())
        mine = (f"shard-{self.rank:03d}-", f".shard-{self.rank:03d}-", f"r{self.rank:03d}-")
        for p in list(self.dir.iterdir()) + list(prog.iterdir()):
            if p.is_file() and p.name.startswith(mine) and p.name not in keep:
                p.unlink()
        return kept, done

    # ---- producing ---------------------------------------------------------------------
    def _take(self, index: int):
        if self.reused:
            raise StoreError(f"{self.key} is complete; nothing may be written to it")
        if index != self.next_index:
            raise StoreError(f"{self.key}: input row {index} arrived, expected row {self.next_index} (rows go in order)")
        if index >= self.end:
            raise StoreError(f"{self.key}: input row {index} is beyond rank {self.rank}'s rows "
                             f"[{self.start}, {self.end}) of {self.input_rows}")
        self.next_index += 1

    def add(self, index: int, rows: list) -> None:
        """Store the scored sequences of input row `index` (at least one; the codec's `Row`s)."""
        if not rows:
            raise StoreError(f"{self.key}: input row {index} has no sequences; drop it with a reason instead")
        self._take(index)
        self._pending.extend(rows)
        tokens = sum(self.codec.row_tokens(r) for r in rows)
        self._pending_tokens += tokens
        self._rows_in_shard += len(rows)
        self._tokens_in_shard += tokens
        self._used += 1
        if self._pending_tokens >= self.options.batch_tokens:
            self._flush_batch()
        if self._rows_in_shard >= self.options.max_shard_rows or (
                self._file and self._file[1].tell() >= self.options.max_shard_bytes):
            self._close_shard()

    def drop(self, index: int, reason: str) -> None:
        """Account for input row `index` as unusable, by reason (reported in the manifest)."""
        self._take(index)
        self._drops[reason] += 1

    def _flush_batch(self):
        if not self._pending:
            return
        if self._file is None:
            tmp = self.dir / f".{self._name(len(self._records))}.tmp"
            schema, self._state = self.codec.file_schema(self.layout, self._pending)
            sink = pa.OSFile(str(tmp), "wb")
            self._file = (pa.ipc.new_stream(sink, schema, options=self.ipc_options), sink, tmp)
            self._schema_meta = schema.metadata
        batch = self.codec.encode(self._pending, self.layout, self._state)
        self._file[0].write_batch(batch.replace_schema_metadata(self._schema_meta))
        self._pending, self._pending_tokens = [], 0

    def _close_shard(self):
        self._flush_batch()
        if self._file is None:
            return
        writer, sink, tmp = self._file
        writer.close()
        sink.close()
        self._file = None
        idx = len(self._records)
        if self.remote is not None:  # straight to the store under a content name, then its record
            size, sha = tmp.stat().st_size, sha256_file(tmp)
            name = f"shard-{self.rank:03d}-{idx:05d}-{sha[:16]}.arrow"
            self.remote.put_file(tmp, self.key, name)
            tmp.unlink()
        else:
            final = self.dir / self._name(idx)
            commit_file(tmp, final)
            name, size, sha = final.name, final.stat().st_size, sha256_file(final)
        rec = {"file": name, "rows": self._rows_in_shard, "tokens": self._tokens_in_shard,
               "bytes": size, "sha256": sha,
               "input_start": self._records[-1]["input_end"] if self._records else self.start,
               "input_end": self.next_index, "rows_used": self._used, "dropped": dict(self._drops)}
        self.progress.write(self._record_name(idx), json.dumps(rec).encode())
        self._records.append(rec)
        self._drops, self._used = Counter(), 0
        self._rows_in_shard = self._tokens_in_shard = 0

    def finish(self, stats: dict | None = None) -> None:
        """Close the last shard and mark this rank's slice done (its remaining drops included)."""
        if self.reused or self.done:
            return
        if self.next_index != self.end:
            raise StoreError(f"{self.key}: rank {self.rank} produced rows up to {self.next_index}, "
                             f"its slice ends at {self.end}")
        self._close_shard()
        # The done record carries its slice's shard records: whoever assembles reads one consistent list.
        done = {"rank": self.rank, "world_size": self.world_size, "input_start": self.start, "input_end": self.end,
                "shards": len(self._records), "rows_used": self._used, "dropped": dict(self._drops),
                "stats": stats or {}, "records": self._records}
        self.progress.write(f"r{self.rank:03d}-of-{self.world_size:03d}.done", json.dumps(done).encode())

    def publish(self, stats: dict | None = None, producer: dict | None = None) -> dict | None:
        """finish(), then the manifest when this is the only rank; None while other ranks are pending."""
        if self.reused:
            return self.manifest
        self.finish(stats)
        if self.world_size > 1:
            return None
        self.manifest = assemble(self.store, self.spec, producer)
        self.reused = True
        return self.manifest


def assemble(store: Store, spec: ArtifactSpec, producer: dict | None = None) -> dict:
    """Write the manifest once every rank's slice is done (idempotent; under the key's lock)."""
    key = spec.key
    d, prog = store.path(key), Progress(store, key)
    with store.lock(key):
        if (m := store.manifest(key)) is not None:
            return m
        done = [json.loads(prog.read(n)) for n in prog.names() if (p := PROGRESS_RE.match(n)) and p.group(3)]
        if not done:
            raise StoreError(f"{key}: no rank has finished")
        world = done[0]["world_size"]
        if sorted(x["rank"] for x in done) != list(range(world)):
            missing = sorted(set(range(world)) - {x["rank"] for x in done})
            raise StoreError(f"{key}: ranks {missing} of {world} have not finished; re-run them to resume")
        records, dropped, used, stats = [], Counter(), 0, []
        for x in sorted(done, key=lambda x: x["rank"]):
            recs = x.get("records") or [json.loads(prog.read(f"r{x['rank']:03d}-shard-{i:05d}.json"))
                                        for i in range(x["shards"])]  # a done record from before 2026-12-03
            records += recs
            used += x["rows_used"] + sum(r["rows_used"] for r in recs)
            dropped.update(x["dropped"])
            for r in recs:
                dropped.update(r["dropped"])
            stats.append(x["stats"])
        shards = [{k: r[k] for k in ("file", "rows", "tokens", "bytes", "sha256", "input_start", "input_end")}
                  for r in records]
        m = {
            "format": mf.FORMAT, "format_version": mf.VERSION,
            "key": key, "kind": spec.kind, "created": now_iso(),
            "inputs": spec.inputs, "shard_schema": spec.shard_schema,
            "producer": producer or producer_versions(),
            "shards": shards,
            "totals": {"shards": len(shards), "rows": sum(s["rows"] for s in shards),
                       "tokens": sum(s["tokens"] for s in shards), "bytes": sum(s["bytes"] for s in shards)},
            "input_rows": spec.input_rows,
            "rows_used": used,
            "dropped": dict(sorted(dropped.items())),
            "stats": stats[0] if world == 1 else _merge_stats(stats),
        }
        mf.validate(m, key)
        if store.remote is not None:
            sizes = store.remote.sizes(key)
            lost = [s["file"] for s in shards if sizes.get(s["file"]) != s["bytes"]]
            if lost:
                raise StoreError(f"{key}: shards {lost[:3]} are not on {store.url} at their recorded sizes; "
                                 f"re-run the producer to write them again")
            store.remote.put_bytes(key, MANIFEST, json.dumps(m, indent=1).encode())  # the one commit
        else:
            atomic_write_bytes(d / MANIFEST, json.dumps(m, indent=1).encode())
            shutil.rmtree(d / PROGRESS, ignore_errors=True)
            seal(d)
    return m


def _merge_stats(ranks: list[dict]) -> dict:
    """Per-rank statistics, plus throughput over all ranks where they report tokens and seconds."""
    out = {"world_size": len(ranks), "ranks": ranks}
    if all("tokens_this_run" in r and r.get("seconds") for r in ranks):
        out["tokens_this_run"] = sum(r["tokens_this_run"] for r in ranks)
        out["seconds"] = max(r["seconds"] for r in ranks)
        out["tokens_per_s"] = round(out["tokens_this_run"] / out["seconds"], 1)
    return out
