"""An artifact in the shapes other tools read: plain rows, Parquet or JSON lines, a `datasets` view.

The shards are compact codes (byte planes, id ranks, log-prob deltas) only our codecs decode. Here
each row becomes plain columns: pair_id, side, input_index, token_ids, prompt_len, and per response
position the stored signals (topk_ids, topk_logp, tail_logp, realized_logp; ref_topk_logp and
ref_realized_logp in advantage rows; finish for generations), decoded exactly as stage two sees
them, plus `advantage` (topk_logp - ref_topk_logp, the token-level advantage of every top-k id at
every position) in advantage rows. A field the row does not have is absent, never an empty string.
Log-probs are natural logs (nats). A Parquet file carries the artifact's manifest (key, kind, inputs:
models, data, settings; the shard schema with k; totals and drops) under the key-value metadata
`adpa.manifest`, and the units under `adpa.units`. `columns` adds columns computed from a row (the CLI's
`--text table|TOKENIZER`: the decoded prompt and response, each top-k id's text). Everything streams: one record batch of rows
in memory at a time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from adpa.artifacts.reader import ArtifactReader

FORMATS = (".parquet", ".jsonl")
BATCH_ROWS = 1024


UNITS = {"*_logp": "natural log-probability (nats)", "advantage": "log pi_dpo - log pi_ref of each top-k id (nats)",
         "token_ids": "ids of the artifact's tokenizer (manifest inputs.render.tokenizer)",
         "prompt_len": "tokens of token_ids before the response"}


def plain_rows(artifact_dir: Path, limit: int | None = None) -> Iterator[dict]:
    """Rows as dicts of Python values (lists for arrays), in manifest order, at most `limit`."""
    for i, row in enumerate(ArtifactReader(artifact_dir)):
        if limit is not None and i >= limit:
            return
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}  # the codec's Row
        if values.get("ref_topk_logp") is not None and values.get("topk_logp") is not None:
            values["advantage"] = values["topk_logp"] - values["ref_topk_logp"]
        yield {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in values.items()
               if v is not None and not (isinstance(v, str) and not v)}  # no '' placeholder (finish of a scored row)


def export(artifact_dir: Path, out: Path, limit: int | None = None, columns=None) -> int:
    """Write the artifact's rows to `out` (.parquet or .jsonl, by its suffix); returns the rows written.
    `columns`: row -> dict of more columns. The file appears under its name only when complete."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: export writes {' or '.join(FORMATS)} (by the file's suffix)")
    tmp, n = out.with_name(f".{out.name}.tmp"), 0
    rows = plain_rows(artifact_dir, limit)
    if columns is not None:
        rows = (row | columns(row) for row in rows)
    try:
        if out.suffix == ".jsonl":
            with tmp.open("w") as f:
                for n, row in enumerate(rows, 1):
                    f.write(json.dumps(row) + "\n")
        else:
            meta = _metadata(artifact_dir)
            writer, batch = None, []
            for n, row in enumerate(rows, 1):
                batch.append(row)
                if len(batch) == BATCH_ROWS:
                    writer = _write(writer, batch, tmp, meta)
                    batch = []
            if batch or writer is None:
                writer = _write(writer, batch, tmp, meta)
            writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _metadata(artifact_dir: Path) -> dict[bytes, bytes]:
    """The Parquet key-value metadata: the manifest without its shard list, and the units."""
    manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    manifest.pop("shards", None)
    return {b"adpa.manifest": json.dumps(manifest).encode(), b"adpa.units": json.dumps(UNITS).encode()}


def _write(writer, batch: list[dict], path: Path, meta: dict[bytes, bytes]):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
    if writer is None:
        table = table.replace_schema_metadata(meta)
    writer = writer or pq.ParquetWriter(str(path), table.schema, compression="zstd")
    writer.write_table(table)
    return writer


def as_dataset(artifact_dir: str | Path, streaming: bool = True, limit: int | None = None):
    """The artifact as a `datasets.IterableDataset` read straight from its shards (no copy on disk), or,
    with `streaming=False`, a `datasets.Dataset` (materialised in datasets' cache)."""
    import datasets

    folder = str(Path(artifact_dir).resolve())
    gen_kwargs = {"artifact_dir": folder, "limit": limit}
    make = datasets.IterableDataset.from_generator if streaming else datasets.Dataset.from_generator
    return make(_generate, gen_kwargs=gen_kwargs)


def _generate(artifact_dir: str, limit: int | None):
    yield from plain_rows(Path(artifact_dir), limit)
