"""An artifact as other tools read it: Parquet and JSON lines read back by datasets, polars and duckdb,
and a `datasets` view straight over the shards, each equal to what the reader (stage two) sees."""

import dataclasses

import numpy as np
import pytest

from artifacts import ArtifactReader, Store
from artifacts.export import as_dataset, export
from synthetic import produce

N = 30


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    m, _ = produce(root, N, max_shard_rows=8, with_ref=True)
    return Store(root).path(m["key"]), list(ArtifactReader(Store(root).path(m["key"])))


def same(row, original):
    """A plain row (dict) equal to the reader's Row: its fields that are set, the same values."""
    original = {f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
    original = {k: v for k, v in original.items() if v is not None}
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
