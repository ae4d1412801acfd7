"""Manifest validation: everything from another team or a remote store is checked before use."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from adpa.schemas.keys import artifact_key
from adpa.schemas import manifest as mf
from synthetic import produce

SCHEMA = json.loads((Path(mf.__file__).parent / "manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    m, _ = produce(tmp_path_factory.mktemp("s"), 30)
    return m


def test_written_manifest_is_valid_and_matches_the_published_json_schema(manifest):
    assert mf.validate(copy.deepcopy(manifest), manifest["key"]) == manifest
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["input_rows"] == manifest["rows_used"] + sum(manifest["dropped"].values())


@pytest.mark.parametrize("name", ["../x.arrow", "/etc/passwd", "a/b.arrow", ".hidden", "..", "", "a..b",
                                  "shard\\x", "x" * 200, 5, None])
def test_shard_names_must_be_plain_file_names(manifest, name):
    m = copy.deepcopy(manifest)
    m["shards"][0]["file"] = name
    with pytest.raises(mf.ManifestError, match="plain file name"):
        mf.validate(m)
    if isinstance(name, str) and name not in ("x" * 200,):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(m, SCHEMA)


def mutate(manifest, fn):
    m = copy.deepcopy(manifest)
    fn(m)
    return m


@pytest.mark.parametrize("fn,message", [
    (lambda m: m.update(format_version="2.0"), r"version '2.0' is not supported \(this adpa reads 1.x\)"),
    (lambda m: m.update(format="other"), "not an adpa manifest"),
    (lambda m: m["inputs"].update(n=31), "not the hash of the manifest's inputs"),
    (lambda m: m.update(key="teacher-topk-" + "0" * 20), "not the hash"),
    (lambda m: m.update(key="../../etc"), "not an artifact key"),
    (lambda m: m.update(kind="other"), "does not match its key"),
    (lambda m: m["shards"][0].update(rows=-1), "rows must be an integer"),
    (lambda m: m["shards"][0].update(rows=True), "rows must be an integer"),
    (lambda m: m["shards"][0].update(bytes=1 << 40), "bytes must be an integer"),
    (lambda m: m["shards"][0].update(sha256="xyz"), "sha256"),
    (lambda m: m["shards"].append(dict(m["shards"][0])), "used twice"),
    (lambda m: m["totals"].update(rows=1), "totals.rows"),
    (lambda m: m.update(input_rows=m["input_rows"] + 1), "input_rows"),
    (lambda m: m["dropped"].update(x=-2), "dropped"),
    (lambda m: m.update(shards={}), "shards must be a list"),
])
def test_bad_manifests_are_refused_naming_the_problem(manifest, fn, message):
    with pytest.raises(mf.ManifestError, match=message):
        mf.validate(mutate(manifest, fn))


def test_found_under_another_key(manifest):
    with pytest.raises(mf.ManifestError, match="was found under"):
        mf.validate(copy.deepcopy(manifest), "teacher-topk-" + "1" * 20)


def test_key_depends_on_inputs_not_on_their_order():
    sch = {"name": "adpa.token_topk", "version": "1.0"}
    assert artifact_key("teacher-topk", {"a": 1, "b": [1, 2]}, sch) == artifact_key("teacher-topk", {"b": [1, 2], "a": 1}, sch)
    assert artifact_key("teacher-topk", {"a": 1}, sch) != artifact_key("teacher-topk", {"a": 2}, sch)
    assert artifact_key("teacher-topk", {"a": 1}, sch) != artifact_key("teacher-topk", {"a": 1}, sch | {"version": "2.0"})
    with pytest.raises(ValueError, match="kind"):
        artifact_key("Bad Kind", {}, sch)
