"""Preference pairs from a hub dataset or a local file, in any of three shapes, with drops by reason.

Shapes (detected from the columns, or named with `--set data.format=...`):

* ``strings``: ``prompt`` / ``chosen`` / ``rejected`` strings (the prompt is one user turn).
* ``messages``: ``chosen`` / ``rejected`` as chat message lists that share every message but the
  last, which is the assistant's answer (the argilla/dpo-mix-7k shape). Multi-turn history stays.
* ``transcripts``: ``chosen`` / ``rejected`` as whole ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``
  strings; the prompt is the shared prefix up to the final assistant turn (the HH-RLHF shape).

A row that cannot be used is not an error but a counted drop, unless `strict` is set.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from adpa.artifacts.fsutil import fingerprint_files, sha256_file

ROLES = ("system", "user", "assistant")
LOCAL_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet", ".csv")


@dataclass
class Pair:
    index: int
    pair_id: str
    prompt: list[dict]  # chat messages, ending with a user turn
    chosen: str
    rejected: str


class Drop(StrEnum):
    """Why an input row is not used; every artifact's manifest counts its rows by these (rows in = rows used +
    rows dropped). Parsing gives the first six, rendering (`render.encode_pair`) the next three; a row held out
    for evaluation (`data.holdout`) is not used by the stages, and evaluation does not use the others."""

    missing_field = "missing_field"
    not_text = "not_text"
    no_final_assistant_turn = "no_final_assistant_turn"
    no_shared_prompt = "no_shared_prompt"
    empty_prompt = "empty_prompt"
    identical_responses = "identical_responses"
    empty_response = "empty_response"
    prompt_too_long = "prompt_too_long"
    template_mismatch = "template_mismatch"
    held_out = "held_out"
    not_held_out = "not_held_out"


class DataError(ValueError):
    """Input that cannot be used at all (unreadable source, unknown shape), or a bad row under --strict."""


def load_rows(source: str, split: str = "train", revision: str | None = None, limit: int | None = None):
    """(rows as dicts, readable fingerprint) from a local file (json, jsonl, parquet, csv, the first two
    also gzipped), a `datasets.save_to_disk` folder, or a hub id at `revision`; `limit`: the first N rows.

    A local file is hashed whole (its sha256 is the fingerprint), then streamed: reading stops after
    `limit` rows, a gzipped file is decompressed as it is read and refused when it expands more than
    `MAX_GZIP_RATIO` times (a gzip bomb), and the file must be the same one (inode, size, mtime) after
    reading as when hashed (datasets' own file cache is keyed by path and mtime, and would serve old rows
    for a file replaced with `cp -p`, `rsync -a` or a tar extraction). A hub dataset is fingerprinted by
    the commit its revision resolves to, so a moving branch never reuses an artifact made from another
    commit. Rows stay plain dicts, so a row whose fields have other types than its neighbours' is a
    counted drop, not a failed load."""
    path = check_source(source)
    try:
        if path.is_dir():
            rows, fp = _saved_folder(path, split, source)
        elif path.exists():
            suffix = _suffix(path)
            if suffix not in LOCAL_SUFFIXES:
                raise DataError(f"{source}: unsupported file type {suffix or path.name!r} "
                                f"(use {', '.join(LOCAL_SUFFIXES)}, or a datasets save_to_disk folder)")
            if not path.is_file():  # a FIFO or a device (/dev/zero behind a link) would be read forever
                raise DataError(f"{source}: not a regular file")
            before = _identity(path)
            fp = {"file": path.name, "sha256": sha256_file(path), "split": split}
            rows = list(itertools.islice(_local_rows(path, suffix, source), limit))
            if _identity(path) != before:
                raise DataError(f"{source}: changed while it was read; try again")
        else:
            import datasets
            datasets.disable_progress_bars()
            commit = hub_commit(source, revision)
            ds = datasets.load_dataset(source, split=split, revision=commit)
            rows, fp = ds.to_list(), {"hub_id": source, "revision": commit, "split": split}
    except DataError:
        raise
    except Exception as e:  # datasets and pyarrow raise many types; the user needs the source and the reason
        first = (str(e).splitlines() or [type(e).__name__])[0]  # MemoryError has no message
        raise DataError(f"cannot load dataset {source!r} split {split!r}: {first}") from None
    if not rows:
        raise DataError(f"{source}: no rows")
    return (rows[:limit] if limit is not None else rows), fp


def _identity(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def hub_commit(repo: str, revision: str | None) -> str:
    """The commit a hub dataset's revision (branch, tag or commit; None: main) resolves to."""
    from huggingface_hub import HfApi
    return HfApi().dataset_info(repo, revision=revision).sha


def _suffix(path: Path) -> str:
    s = "".join(path.suffixes[-2:]).lower()
    return s if s.endswith(".gz") else path.suffix.lower()


def _saved_folder(path: Path, split: str, source: str) -> tuple[list[dict], dict]:
    """Rows of a `save_to_disk` folder (a Dataset, or a DatasetDict and its `split`), fingerprinted by the
    sha256 of its files."""
    import datasets

    if not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        raise DataError(f"{source}: a folder that is not a datasets save_to_disk folder (no state.json or "
                        f"dataset_dict.json)")
    files = sorted(f for f in path.rglob("*") if f.is_file())
    digest = fingerprint_files(files, root=path)
    ds = datasets.load_from_disk(str(path), keep_in_memory=True)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{source}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    if fingerprint_files(files, root=path) != digest:
        raise DataError(f"{source}: changed while it was read; try again")
    return ds.to_list(), {"folder": path.name, "files_sha256": digest, "split": split}


def is_held_out(pair: Pair, fraction: float) -> bool:
    """Whether the pair's prompt is in the held-out `fraction`: sha256 of the prompt's messages, read as a
    number in [0, 1). A prompt's pairs are all held out or none, on every run and in every file order."""
    digest = hashlib.sha256(json.dumps(pair.prompt, sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def check_source(source: str) -> Path:
    """The source as a path, refused when it names a local file that is not there (a hub id passes)."""
    path = Path(source).expanduser()
    if not path.exists() and looks_like_a_path(source):
        raise DataError(f"{source}: no such file")
    return path


def looks_like_a_path(source: str) -> bool:
    """A local path rather than a hub id ("org/name" has one slash and no file suffix)."""
    return (source.startswith(("/", "./", "../", "~")) or source.count("/") > 1
            or _suffix(Path(source)) in LOCAL_SUFFIXES)


MAX_GZIP_RATIO = 100  # real preference data compresses 3-10x with gzip (or Parquet)
GZIP_CHECKED_AFTER = 16 << 20  # bytes out: small files are never refused
MAX_LINE = 256 << 20  # one JSON line (a row); longer lines are refused, not read whole


class _Ungzipped(io.RawIOBase):
    """A gzip file's bytes as read, refused once they exceed MAX_GZIP_RATIO times the compressed bytes read."""

    def __init__(self, raw, source: str):
        self.raw, self.gz, self.source, self.out = raw, gzip.GzipFile(fileobj=raw), source, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.gz.readinto(b)
        self.out += n
        if self.out > GZIP_CHECKED_AFTER and self.out > MAX_GZIP_RATIO * self.raw.tell():
            raise DataError(f"{self.source}: expands more than {MAX_GZIP_RATIO}x when decompressed ({self.out:,} "
                            f"bytes from {self.raw.tell():,}): a gzip bomb, or not preference data")
        return n


@contextlib.contextmanager
def _opened(path: Path, suffix: str, source: str):
    """The file's bytes, decompressed as read when gzipped."""
    with open(path, "rb") as raw:
        yield io.BufferedReader(_Ungzipped(raw, source), 1 << 20) if suffix.endswith(".gz") else raw


def _local_rows(path: Path, suffix: str, source: str):
    """The rows of a local file, one at a time: JSON lines (split on \\n only, as the format says: U+2028 is
    valid inside a string), a JSON list of rows, Parquet or CSV (a byte-order mark is not part of a name)."""
    import csv
    import json

    if suffix == ".parquet":  # dictionary and run-length codes expand like gzip: the same guard
        import pyarrow.parquet as pq
        size, out = max(path.stat().st_size, 1), 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            out += sum((c.dictionary_decode() if hasattr(c, "dictionary_decode") else c).nbytes for c in batch.columns)
            if out > GZIP_CHECKED_AFTER and out > MAX_GZIP_RATIO * size:
                raise DataError(f"{source}: expands more than {MAX_GZIP_RATIO}x when decoded ({out:,} bytes from "
                                f"{size:,}): a compression bomb, or not preference data")
            yield from batch.to_pylist()
        return
    with _opened(path, suffix, source) as f:
        if suffix == ".csv":
            yield from csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
            return
        head = f.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
        if suffix.startswith(".json") and not suffix.startswith(".jsonl") and head.startswith(b"["):
            rows = json.loads(f.read().decode("utf-8-sig"))  # one JSON value: read whole
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{source}: expected one JSON object per row")
            yield from rows
            return
        for n, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
            if len(line) > MAX_LINE:
                raise DataError(f"{source}: line {n} is longer than {MAX_LINE:,} bytes")
            text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{source}: line {n}: expected one JSON object per row")
            yield row


def _text(v) -> str | None:
    return v if isinstance(v, str) else None


def _messages(v) -> list[dict] | None:
    """Normalized messages, or None when the value is not a list of {role, content: str}."""
    if not isinstance(v, list):
        return None
    out = []
    for m in v:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out


_TURN = re.compile(r"\n\n(Human|Assistant):")


def _parse_transcript(t: str) -> list[dict] | None:
    parts = _TURN.split("\n\n" + t.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        return None
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _strings(row: dict) -> tuple[list[dict], str, str] | Drop:
    """{prompt, chosen, rejected}: three strings, one user turn."""
    prompt, chosen, rejected = _text(row["prompt"]), _text(row["chosen"]), _text(row["rejected"])
    if None in (prompt, chosen, rejected):
        return Drop.not_text
    return [{"role": "user", "content": prompt}], chosen, rejected


def _message_lists(row: dict) -> tuple[list[dict], str, str] | Drop:
    """{chosen, rejected}: two conversations that share every turn but the last, the assistant's."""
    c, r = _messages(row["chosen"]), _messages(row["rejected"])
    if c is None or r is None:
        return Drop.not_text
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return Drop.no_final_assistant_turn
    if c[:-1] != r[:-1]:
        return Drop.no_shared_prompt
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _conversational(row: dict) -> tuple[list[dict], str, str] | Drop:
    """TRL's conversational shape with an explicit prompt: {prompt: messages, chosen: messages, rejected:
    messages}, the answers' lists ending with the assistant's turn (turns before it, if any, extend the
    prompt and must be the same on both sides)."""
    p, c, r = _messages(row["prompt"]), _messages(row["chosen"]), _messages(row["rejected"])
    if p is None or c is None or r is None:
        return Drop.not_text
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return Drop.no_final_assistant_turn
    if c[:-1] != r[:-1]:
        return Drop.no_shared_prompt
    return p + c[:-1], c[-1]["content"], r[-1]["content"]


def _transcripts(row: dict) -> tuple[list[dict], str, str] | Drop:
    """{chosen, rejected}: two "\n\nHuman: ...\n\nAssistant: ..." transcripts (Anthropic HH)."""
    if _text(row["chosen"]) is None or _text(row["rejected"]) is None:
        return Drop.not_text
    c, r = _parse_transcript(row["chosen"]), _parse_transcript(row["rejected"])
    if c is None or r is None or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return Drop.no_final_assistant_turn
    if c[:-1] != r[:-1]:
        return Drop.no_shared_prompt
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _implicit(row: dict) -> tuple[list[dict], str, str] | Drop:
    """{chosen, rejected}: TRL's standard shape with an implicit prompt, two strings that share the prompt as
    their start ("The sky is blue." / "The sky is green."). The prompt is the common start, cut back to a word
    boundary as TRL's extract_prompt does; it becomes one user turn."""
    c, r = _text(row["chosen"]), _text(row["rejected"])
    if c is None or r is None:
        return Drop.not_text
    if c == r:
        return Drop.identical_responses
    n = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
    while n > 0 and not c[n - 1].isspace() and n < len(c):  # never split a word between prompt and answer
        n -= 1
    if not c[:n].strip():
        return Drop.no_shared_prompt
    return [{"role": "user", "content": c[:n].strip()}], c[n:].strip(), r[n:].strip()


@dataclass(frozen=True)
class Format:
    """A row shape. `fields`: what a row must hold (else dropped as missing_field); `detect(columns, first row)`:
    whether a dataset whose first row has these columns is of this shape (`data.format: auto` tries the formats in order); `parse(row)`: the
    prompt's messages, the chosen and the rejected answer, or the reason the row is dropped."""

    fields: tuple[str, ...]
    detect: Callable[[set, dict], bool]
    parse: Callable[[dict], tuple[list[dict], str, str] | Drop]


def _first_chosen(first: dict):
    return first.get("chosen")


# The registry: a new shape is one function and one line here; `data.format` and `--format` list its name.
FORMATS: dict[str, Format] = {
    "strings": Format(("prompt", "chosen", "rejected"),
                      lambda cols, first: {"prompt", "chosen", "rejected"} <= cols and isinstance(_first_chosen(first), str),
                      _strings),
    "conversational": Format(("prompt", "chosen", "rejected"),
                             lambda cols, first: {"prompt", "chosen", "rejected"} <= cols
                             and isinstance(first.get("prompt"), list), _conversational),
    "messages": Format(("chosen", "rejected"),
                       lambda cols, first: {"chosen", "rejected"} <= cols and isinstance(_first_chosen(first), list),
                       _message_lists),
    "transcripts": Format(("chosen", "rejected"),
                          lambda cols, first: {"chosen", "rejected"} <= cols and isinstance(_first_chosen(first), str)
                          and "Assistant:" in _first_chosen(first), _transcripts),
    "implicit": Format(("chosen", "rejected"),
                       lambda cols, first: {"chosen", "rejected"} <= cols and "prompt" not in cols
                       and isinstance(_first_chosen(first), str), _implicit),
}


def detect_format(first: dict) -> str:
    """The format of a dataset whose first row is `first` (`data.format: auto`): the first row decides,
    so that planning the keys reads no other row."""
    cols = set(first)
    found = next((name for name, f in FORMATS.items() if f.detect(cols, first)), None)
    if found:
        return found
    if not {"chosen", "rejected"} <= cols:
        raise DataError(f"dataset has columns {sorted(cols)}; expected chosen and rejected (and prompt)")
    raise DataError(f"cannot tell the dataset's format from columns {sorted(cols)}; name it with --set "
                    f"data.format=... ({', '.join(FORMATS)})")


def parse_row(index: int, row: dict, fmt: str) -> Pair | Drop:
    """A Pair, or the reason the row is dropped."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    shape = FORMATS[fmt]
    if any(row.get(f) is None for f in shape.fields):
        return Drop.missing_field
    parsed = shape.parse(row)
    if isinstance(parsed, str):  # a reason; a format's own must be one of Drop's
        return Drop(parsed)
    history, chosen, rejected = parsed
    pair_id = str(row.get("pair_id") or row.get("id") or f"row-{index}")
    if not history or history[-1]["role"] != "user" or not any(m["content"].strip() for m in history):
        return Drop.empty_prompt
    if not chosen.strip() or not rejected.strip():
        return Drop.empty_response
    if chosen.strip() == rejected.strip():
        return Drop.identical_responses
    return Pair(index, pair_id, history, chosen, rejected)
