"""Opening one shard of a manifest safely: plain name, exact size, sha256, schema, row and token counts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa

from adpa.artifacts.fsutil import sha256_file
from adpa.schemas import codec as get_codec
from adpa.schemas import manifest as mf


class ShardError(Exception):
    """A shard that does not match its manifest; the message starts with the shard's name."""


def codec_and_layout(manifest: dict):
    sch = manifest["shard_schema"]
    c = get_codec(sch["name"], sch["version"])
    try:
        return c, c.layout(sch.get("layout", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise mf.ManifestError(f"shard_schema.layout is invalid: {e}") from None


def check_file(artifact_dir: Path, entry: dict, check_sha: bool = True) -> Path:
    """The shard's path, once its name is plain and its size (and sha256) match the manifest."""
    name = mf.check_shard_name(entry["file"])
    path = Path(artifact_dir) / name
    try:
        st = os.lstat(path)  # not stat(): a link would make verify vouch for, and push copy, a file elsewhere
    except FileNotFoundError:
        raise ShardError(f"{name}: missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(f"{name}: {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a regular file'}; an "
                         f"artifact's files are regular files inside its folder")
    size = st.st_size
    if size != entry["bytes"]:
        raise ShardError(f"{name}: {size} bytes on disk, manifest says {entry['bytes']} (truncated or replaced)")
    if check_sha and sha256_file(path) != entry["sha256"]:
        raise ShardError(f"{name}: sha256 does not match the manifest (corrupt or altered)")
    return path


def open_shard(artifact_dir: Path, entry: dict, codec, layout, check_sha: bool = True):
    """Check a shard against its manifest entry and return (its record batches, in order; codec state).

    A shard is an Arrow IPC stream, its schema (with the codec's per-file table) written once; the
    IPC file format of earlier versions (schema at the start and again in the footer) still reads."""
    path = check_file(artifact_dir, entry, check_sha)
    name = path.name
    is_file_format = False
    try:
        source = pa.OSFile(str(path), "rb")
        is_file_format = source.read(6) == b"ARROW1"
        source.seek(0)
        reader = pa.ipc.open_file(source) if is_file_format else pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardError(f"{name}: not a readable Arrow IPC {'file' if is_file_format else 'stream'} ({e})") from None
    schema = reader.schema
    meta = schema.metadata or {}
    if meta.get(b"adpa.schema", b"").decode() != codec.name:
        raise ShardError(f"{name}: schema is {meta.get(b'adpa.schema', b'?').decode()!r}, manifest says {codec.name!r}")
    if meta.get(b"adpa.schema_version", b"").decode().split(".")[0] != codec.version.split(".")[0]:
        raise ShardError(f"{name}: schema version {meta.get(b'adpa.schema_version', b'?').decode()} "
                         f"is not supported (this adpa reads {codec.version.split('.')[0]}.x)")
    expected = codec.expected_schema(layout)
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        raise ShardError(f"{name}: Arrow schema differs from {codec.name} {codec.version} for this layout")
    try:
        state = codec.read_state(schema, layout)
    except ValueError as e:
        raise ShardError(f"{name}: {e}") from None
    if is_file_format:
        return (reader.get_batch(i) for i in range(reader.num_record_batches)), state
    return reader, state


def check_shard(artifact_dir: Path, entry: dict, codec, layout) -> None:
    """Full check of one shard: open_shard, then every batch validated, decoded and counted."""
    if getattr(codec, "opaque", False):
        check_file(artifact_dir, entry)
        return
    name = entry["file"]
    batches, state = open_shard(artifact_dir, entry, codec, layout)
    rows = tokens = i = 0
    try:
        for batch in batches:
            batch.validate(full=True)
            codec.decode(batch, layout, state)
            rows += batch.num_rows
            tokens += codec.batch_tokens(batch)
            i += 1
    except (pa.ArrowException, ValueError, IndexError) as e:
        raise ShardError(f"{name}: record batch {i} is invalid ({str(e).splitlines()[0]})") from None
    if rows != entry["rows"]:
        raise ShardError(f"{name}: holds {rows} rows, manifest says {entry['rows']}")
    if tokens != entry["tokens"]:
        raise ShardError(f"{name}: holds {tokens} tokens, manifest says {entry['tokens']}")
