"""The manifest contract (`adpa.manifest` 1.x) and its validation.

A manifest arrives from other teams and remote stores, so nothing in it is trusted: names must be
plain file names, sizes and counts are bounded, totals must add up, the key must be the hash of
the inputs it declares, and unknown major versions are refused naming both versions.
The same rules, for readers without our code, are in schemas/manifest.schema.json.
"""

from __future__ import annotations

import re

from adpa.schemas.keys import artifact_key, parse_key

FORMAT = "adpa.manifest"
VERSION = "1.0"
MAX_MANIFEST_BYTES = 16 << 20
MAX_SHARDS = 100_000
MAX_SHARD_ROWS = 10_000_000
MAX_SHARD_BYTES = 64 << 30
MAX_COUNT = 10**13
MAX_DEPTH = 32  # manifests are a few levels deep; a deeper one is refused before anything walks it
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")  # no '/', no '..', no leading '.'
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# ISO 8601 as now_iso writes it (2026-12-04T15:51:33+00:00), with optional fractions and Z
CREATED_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
SCHEMA_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # shard_schema name and version


class ManifestError(ValueError):
    """A manifest that must not be used; the message names what is wrong in one line."""


def _quote(v) -> str:
    """A value from the manifest, shown escaped and short (it may hold control characters or megabytes)."""
    text = ascii(v)
    return text if len(text) <= 80 else text[:80] + "..."


def _int(v, what: str, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise ManifestError(f"{what} must be an integer in 0..{hi}, got {_quote(v)}")
    return v


def _dict(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise ManifestError(f"{what} must be an object, got {type(v).__name__}")
    return v


def check_shard_name(name) -> str:
    if not isinstance(name, str) or len(name) > 128 or not SHARD_NAME_RE.match(name):
        raise ManifestError(f"shard file name {_quote(name)} is not a plain file name")
    return name


def depth(obj) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile manifest may be deep)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                todo.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def validate(m, key: str | None = None) -> dict:
    """Check a parsed manifest; `key` is the name it was found under. Returns it unchanged."""
    _dict(m, "manifest")
    if depth(m) > MAX_DEPTH:
        raise ManifestError(f"manifest nested deeper than {MAX_DEPTH} levels")
    if m.get("format") != FORMAT:
        raise ManifestError(f"not an adpa manifest (format {_quote(m.get('format'))}, expected {FORMAT!r})")
    ver = m.get("format_version")
    if not isinstance(ver, str) or ver.split(".")[0] != VERSION.split(".")[0]:
        raise ManifestError(f"manifest format version {_quote(ver)} is not supported (this adpa reads {VERSION.split('.')[0]}.x)")
    try:
        kind = parse_key(m.get("key"))
    except ValueError as e:
        raise ManifestError(str(e)) from None
    if key is not None and m["key"] != key:
        raise ManifestError(f"manifest names key {m['key']} but was found under {key}")
    if m.get("kind") != kind:
        raise ManifestError(f"manifest kind {_quote(m.get('kind'))} does not match its key {m['key']}")
    inputs = _dict(m.get("inputs"), "inputs")
    sch = _dict(m.get("shard_schema"), "shard_schema")
    for part in ("name", "version"):  # printed by `cache show`: plain words only
        if not isinstance(sch.get(part), str) or not SCHEMA_WORD_RE.match(sch[part]):
            raise ManifestError(f"shard_schema.{part} must be a short word (letters, digits, . _ -), got "
                                f"{_quote(sch.get(part))}")
    _dict(sch.get("layout", {}), "shard_schema.layout")
    if artifact_key(kind, inputs, sch) != m["key"]:
        raise ManifestError(f"key {m['key']} is not the hash of the manifest's inputs (tampered or mislabelled)")
    _dict(m.get("producer"), "producer")
    _dict(m.get("stats"), "stats")
    if not isinstance(m.get("created"), str) or not CREATED_RE.match(m["created"]):
        raise ManifestError(f"created must be an ISO 8601 time (2026-12-04T15:51:33+00:00), got "
                            f"{_quote(m.get('created'))}")
    shards = m.get("shards")
    if not isinstance(shards, list) or len(shards) > MAX_SHARDS:
        raise ManifestError(f"shards must be a list of at most {MAX_SHARDS} entries")
    seen, rows, tokens, size = set(), 0, 0, 0
    for i, s in enumerate(shards):
        _dict(s, f"shards[{i}]")
        name = check_shard_name(s.get("file"))
        if name in seen or name == "manifest.json":
            raise ManifestError(f"shard file name {name!r} is used twice")
        seen.add(name)
        rows += _int(s.get("rows"), f"shard {name} rows", MAX_SHARD_ROWS)
        tokens += _int(s.get("tokens"), f"shard {name} tokens", MAX_COUNT)
        size += _int(s.get("bytes"), f"shard {name} bytes", MAX_SHARD_BYTES)
        if not isinstance(s.get("sha256"), str) or not SHA256_RE.match(s["sha256"]):
            raise ManifestError(f"shard {name} sha256 is not 64 lower-case hex digits")
    totals = _dict(m.get("totals"), "totals")
    for what, got in (("shards", len(shards)), ("rows", rows), ("tokens", tokens), ("bytes", size)):
        if totals.get(what) != got:
            raise ManifestError(f"totals.{what} is {totals.get(what)!r} but the shards add up to {got}")
    dropped = _dict(m.get("dropped"), "dropped")
    for reason, n in dropped.items():
        if not isinstance(reason, str) or not reason or len(reason) > 200 or not reason.isprintable():
            raise ManifestError(f"dropped reason {_quote(reason)} is not a short printable string")
        _int(n, f"dropped[{reason}]", MAX_COUNT)
    rows_in = _int(m.get("input_rows"), "input_rows", MAX_COUNT)
    used = _int(m.get("rows_used"), "rows_used", MAX_COUNT)
    if rows_in != used + sum(dropped.values()):
        raise ManifestError(f"input_rows {rows_in} != rows_used {used} + dropped {sum(dropped.values())}")
    return m
