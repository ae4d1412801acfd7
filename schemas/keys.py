"""Artifact keys (part of the manifest contract): a kind plus a hash of everything that went INTO the artifact, never its outputs.

Outputs of the same inputs differ slightly between runs (vLLM batch composition), so a key
that hashed outputs would split one artifact into many and defeat reuse.
"""

from __future__ import annotations

import hashlib
import json
import re

KIND_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
KEY_RE = re.compile(r"^(?P<kind>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)-(?P<hash>[0-9a-f]{20})$")


def canonical_json(obj) -> str:
    """One spelling per value: sorted keys, no whitespace, no NaN, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def artifact_key(kind: str, inputs: dict, shard_schema: dict) -> str:
    """`<kind>-<first 20 hex of sha256(kind, inputs, shard schema name and version)>`."""
    if not KIND_RE.match(kind) or len(kind) > 40:
        raise ValueError(f"artifact kind {kind!r} must be lower-case words joined by '-' (at most 40 chars)")
    payload = canonical_json({"kind": kind, "inputs": inputs,
                              "shard_schema": {"name": shard_schema["name"], "version": shard_schema["version"]}})
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def parse_key(key: str) -> str:
    """Return the kind of a well-formed key; raise ValueError naming the key otherwise."""
    m = KEY_RE.match(key) if isinstance(key, str) and len(key) <= 64 else None
    if not m:
        raise ValueError(f"{key!r} is not an artifact key (expected <kind>-<20 hex digits>)")
    return m.group("kind")

