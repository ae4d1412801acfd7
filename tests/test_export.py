"""An artifact as other tools read it: Parquet and JSON lines read back by datasets, polars and duckdb,
and a `datasets` view straight over the shards, each equal to what the reader (stage two) sees."""

import dataclasses

import numpy as np
import pytest

from adpa.artifacts import ArtifactReader, Store
from adpa.artifacts.export import as_dataset, export
from synthetic import produce

N = 30


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    m, _ = produce(root, N, max_shard_rows=8, with_ref=True)
    return Store(root).path(m["key"]), list(ArtifactReader(Store(root).path(m["key"])))


def same(row, original):
    """A plain row (dict) equal to the reader's Row: its fields that are set (never an empty string), the same
    values, and in advantage rows the advantage of every top-k id."""
    original = {f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
    original = {k: v for k, v in original.items() if v is not None and not (isinstance(v, str) and v == "")}
    if "ref_topk_logp" in original:
        want = original["topk_logp"] - original["ref_topk_logp"]
        np.testing.assert_array_equal(np.asarray(row.pop("advantage"), dtype=want.dtype), want)
    assert set(row) == set(original)
    for k, v in original.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(np.asarray(row[k], dtype=v.dtype), v, err_msg=k)
        else:
            assert row[k] == v, k


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_export_reads_back_equal_in_datasets_polars_and_duckdb(artifact, tmp_path, suffix):
    import datasets
    import duckdb
    import polars as pl
    d, rows = artifact
    out = tmp_path / f"a{suffix}"
    assert export(d, out) == len(rows)
    builder = "parquet" if suffix == ".parquet" else "json"
    ds = datasets.load_dataset(builder, data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(rows)
    for got, want in zip(ds, rows):
        same(got, want)
    frame = pl.read_parquet(out) if suffix == ".parquet" else pl.read_ndjson(out)
    assert frame.height == len(rows) and frame["topk_ids"][3].to_list() == rows[3].topk_ids.tolist()
    reader = "read_parquet" if suffix == ".parquet" else "read_json_auto"
    (n, positions), = duckdb.sql(f"select count(*), sum(len(topk_logp)) from {reader}('{out}')").fetchall()
    assert n == len(rows) and positions == sum(len(r.topk_logp) for r in rows)


def test_parquet_carries_the_manifest_and_units_and_no_empty_strings(artifact, tmp_path):
    import json

    import pyarrow.parquet as pq
    d, rows = artifact
    export(d, tmp_path / "a.parquet", columns=lambda row: {"n_tokens": len(row["token_ids"])})
    f = pq.ParquetFile(tmp_path / "a.parquet")
    meta = {k.decode(): json.loads(v) for k, v in f.schema_arrow.metadata.items() if k.startswith(b"adpa.")}
    manifest = json.loads((d / "manifest.json").read_text())
    assert meta["adpa.manifest"]["key"] == manifest["key"] == d.name and "shards" not in meta["adpa.manifest"]
    assert meta["adpa.manifest"]["shard_schema"]["layout"]["k"] == manifest["shard_schema"]["layout"]["k"]
    assert meta["adpa.manifest"]["inputs"] == manifest["inputs"] and "nats" in meta["adpa.units"]["advantage"]
    table = f.read()
    assert "advantage" in table.column_names and table["n_tokens"].to_pylist() == [len(r.token_ids) for r in rows]
    assert all(v != "" for col in table.columns if str(col.type) == "string" for v in col.to_pylist())


def test_limit_and_a_bad_suffix(artifact, tmp_path):
    d, rows = artifact
    assert export(d, tmp_path / "few.jsonl", limit=5) == 5
    assert len((tmp_path / "few.jsonl").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="export writes .parquet or .jsonl"):
        export(d, tmp_path / "a.csv")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_datasets_view_over_the_shards(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    d, rows = artifact
    stream = as_dataset(d)
    got = list(stream)
    assert len(got) == len(rows)
    for g, w in zip(got, rows):
        same(g, w)
    table = as_dataset(d, streaming=False, limit=7)
    assert len(table) == 7 and table[6]["pair_id"] == rows[6].pair_id
