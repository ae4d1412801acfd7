"""`adpa cache ...`: list, show, verify, push, pull and clean artifacts of a store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from adpa.artifacts import Incomplete, Store, VerifyError, signing, verify_artifact
from adpa.schemas.keys import parse_key
from adpa.schemas.vocab import vocab_key
from adpa.artifacts.remote import RemoteArtifact
from adpa.artifacts.store import MANIFEST, StoreError, read_manifest
from adpa.artifacts.transfer import pull as pull_artifact
from adpa.artifacts.transfer import push as push_artifact
from adpa.artifacts.transfer import repair as repair_artifact
from adpa.pipeline.options import StoreOpt, echo, fail, one_line

app = typer.Typer(help="Inspect and move artifacts of the store.", no_args_is_help=True)


def _artifact_dir(store: Store, key_or_path: str, local: bool = False) -> Path | RemoteArtifact:
    """A key's folder (on a URL store the remote artifact unless `local`), or a folder given as a path."""
    try:
        parse_key(key_or_path)
        return store.path(key_or_path) if local else store.location(key_or_path)
    except ValueError:
        p = Path(key_or_path)
        if p.is_dir():
            return p
        fail(f"{key_or_path!r} is neither an artifact key nor an artifact folder")


@app.command("ls")
def ls(store: StoreOpt = None, as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
       recipe: str = typer.Option(None, "--recipe", "-r", help="Only the stage-one artifacts this recipe (a name "
                                  "or YAML path) makes, by name, present or not: keys planned from its models and "
                                  "its data file's hash, no row rendered (built-in models are built when absent)."),
       overrides: list[str] = typer.Option(None, "--set", help="Override a recipe setting (with --recipe).")):
    """One line per artifact: key, role (or the states it scores), data (its file's sha256, first 12 digits),
    state (complete, partial: a stopped run's, resumed by the next; missing: planned by -r, not made), rows,
    tokens, bytes, created."""
    st = Store(store)
    names = _planned(recipe, overrides, st) if recipe else {k: None for k in st.keys()}
    entries = [st.entry(k) | ({"name": n} if n else {}) for k, n in names.items()]
    if as_json:
        typer.echo(json.dumps(entries, indent=1))  # JSON escapes every control character itself
        return
    if not entries:
        echo(f"no artifacts in {st.root}")
        return
    named = f"{'NAME':15} " if recipe else ""
    echo(f"{named}{'KEY':40} {'ROLE':15} {'DATA':12} {'STATE':8} {'ROWS':>9} {'TOKENS':>11} {'BYTES':>12}  CREATED")
    for e in entries:
        fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
        name = f"{e['name']:15} " if recipe else ""
        what = f"{e.get('role') or '-':15} {e.get('data') or '-':12}"
        echo(f"{name}{e['key']:40} {what} {e['state']:8} {fmt(e['rows']):>9} {fmt(e['tokens']):>11}"
             f" {fmt(e['bytes']):>12}  {e['created'] or '-'}{'  ' + e['error'] if 'error' in e else ''}")


def _planned(recipe: str, overrides: list[str] | None, st: Store) -> dict[str, str]:
    """key -> name of the recipe's stage-one artifacts."""
    from adpa.pipeline.orchestrate import planned
    from adpa.pipeline.recipe import RecipeError, load_recipe
    from adpa.stages.teacher_cache.pairs import DataError
    try:
        keys = planned(load_recipe(recipe, list(overrides or [])), st)
    except (RecipeError, DataError, ValueError, OSError) as e:
        fail(one_line(e))
    return {key: name for name, key in keys.items()}


def _print_tree(obj, indent: int = 2):
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            echo(" " * indent + f"{k}:")
            _print_tree(v, indent + 2)
        else:  # echo: values from a manifest someone else wrote never put a control character on the terminal
            echo(" " * indent + f"{k}: {json.dumps(v) if isinstance(v, (list, dict)) else v}")


@app.command()
def show(key: str = typer.Argument(..., help="Artifact key or folder."), store: StoreOpt = None):
    """The manifest, readable: inputs, producer versions, totals, dropped rows by reason, stats."""
    d = _artifact_dir(Store(store), key)
    if isinstance(d, RemoteArtifact):
        m = d.remote.manifest(d.key)
    elif not (d / MANIFEST).exists():
        fail(f"{d.name}: incomplete (no manifest.json)")
    else:
        m = read_manifest(d / MANIFEST, d.name)
    t = m["totals"]
    echo(f"{m['key']}  ({m['kind']}, created {m['created']})")
    echo(f"  path: {d if isinstance(d, RemoteArtifact) else d.resolve()}")
    echo(f"  shard schema: {m['shard_schema']['name']} {m['shard_schema']['version']} "
               f"{json.dumps(m['shard_schema'].get('layout', {}))}")
    echo(f"  totals: {t['shards']} shards, {t['rows']:,} rows, {t['tokens']:,} tokens, {t['bytes']:,} bytes"
               + (f" ({t['bytes'] / t['tokens']:.1f} bytes/token)" if t["tokens"] else ""))
    dropped = sum(m["dropped"].values())
    echo(f"  input rows: {m['input_rows']:,} = {m['rows_used']:,} used + {dropped:,} dropped")
    for reason, n in m["dropped"].items():
        echo(f"    dropped {reason}: {n:,}")
    for section in ("inputs", "producer", "stats"):
        echo(f"  {section}:")
        _print_tree(m[section], 4)


TrustOpt = typer.Option(None, "--trust", help="Folder of trusted signers' public keys (NAME.pub): the artifact "
                        "must carry a signature by one of them.")


@app.command()
def verify(key: str = typer.Argument(..., help="Artifact key or folder."), store: StoreOpt = None,
           trust: Path = TrustOpt):
    """Re-check every shard's size, sha256, schema and counts (and, with --trust, the signature). Exit 0
    when sound, 1 otherwise."""
    d = _artifact_dir(Store(store), key)
    if trust and isinstance(d, RemoteArtifact):
        fail(f"{d}: signatures are checked on a local copy: adpa cache pull {d} --trust {trust}")
    try:
        m = verify_artifact(d)
        signed = signing.check_trusted(d, signing.trusted_keys(trust)) if trust else None
    except (Incomplete, VerifyError, signing.SignatureError) as e:
        fail(one_line(e))
    t = m["totals"]
    echo(f"ok {m['key']}: {t['shards']} shards, {t['rows']:,} rows, {t['tokens']:,} tokens verified"
               + (f"; signed by {signed['trusted_as']} (key sha256 {signed['public_key_sha256'][:16]}…, "
                  f"{signed['signed']})" if signed else ""))


@app.command()
def export(key: str = typer.Argument(..., help="Artifact key or folder."),
           out: Path = typer.Argument(..., help="Output file: .parquet or .jsonl (by its suffix)."),
           limit: int = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
           text: str = typer.Option(None, "--text", help="`table` (the artifact's vocabulary table in the store) or "
                                    "a tokenizer (or model) folder, refused unless its vocabulary is the artifact's: "
                                    "adds the decoded prompt and response and each top-k id's text (topk_text)."),
           store: StoreOpt = None):
    """Decode an artifact to plain columns (token ids, per-position top-k ids and log-probs, tail, realized,
    reference, the advantage of advantage artifacts) for datasets, polars, duckdb or pandas; a Parquet file
    carries the manifest as metadata (adpa.manifest); streams, one batch in memory."""
    from adpa.artifacts.export import export as export_artifact
    st = Store(store)
    d = _artifact_dir(st, key)
    n = export_artifact(d, out, limit, _text_columns(st, d, text) if text else None)
    echo(f"exported {n:,} rows of {d.name} to {out}")


def _text_columns(st: Store, artifact_dir: Path, source: str):
    """row -> {prompt, response, topk_text}: the artifact's ids as text, by its vocabulary table (`source` is
    `table`) or by the tokenizer in the folder `source`, which must have the artifact's vocabulary."""
    fp = (read_manifest(artifact_dir / MANIFEST)["inputs"].get("render") or {}).get("tokenizer") or {}
    if source == "table":
        from adpa.schemas.vocab import VocabError
        from adpa.stages.common.vocab_artifact import load_vocab
        try:
            pieces = load_vocab(st, fp, artifact_dir.name).pieces
        except (VocabError, KeyError) as e:
            fail(f"--text table: {one_line(e)}")
        decode = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", "replace")  # noqa: E731
    else:
        decode = _tokenizer_decode(source, fp.get("vocab_sha256"))

    def columns(row: dict) -> dict:
        cut = row["prompt_len"]
        out = {"prompt": decode(row["token_ids"][:cut]), "response": decode(row["token_ids"][cut:])}
        if "topk_ids" in row:  # a piece that is part of a character shows U+FFFD
            out["topk_text"] = [[decode([i]) for i in ids] for ids in row["topk_ids"]]
        return out
    return columns


def _tokenizer_decode(folder: str, want: str | None):
    from transformers import AutoTokenizer

    from adpa.stages.common.tokenizers import vocab_sha256
    tok = AutoTokenizer.from_pretrained(folder)
    if vocab_sha256(tok) != want:
        fail(f"--text {folder}: its vocabulary (sha256 {vocab_sha256(tok)[:12]}) is not the artifact's "
             f"({str(want)[:12]}): the text would be wrong")
    return tok.decode


@app.command()
def keygen(name: str = typer.Argument(..., help="The signer's name (a team or a person)."),
           out: Path = typer.Option(Path("."), help="Folder for NAME.key (private) and NAME.pub (to hand out).")):
    """Make an Ed25519 signing key: keep NAME.key private, give NAME.pub to the teams that trust you."""
    priv, pub = signing.keygen(name, out)
    echo(f"private key {priv} (mode 0600; never share it), public key {pub} (put it in their --trust folder)")


@app.command()
def sign(key: str = typer.Argument(..., help="Artifact key or folder."),
         key_file: Path = typer.Option(..., "--key", help="Your private key (NAME.key from adpa cache keygen)."),
         store: StoreOpt = None):
    """Sign a verified artifact's manifest: it then says who produced it (signatures.json travels with push)."""
    d = _artifact_dir(Store(store), key, local=True)
    verify_artifact(d)  # never vouch for shards that do not match their manifest
    e = signing.sign(d, key_file)
    echo(f"signed {d.name} as {e['signer']} (key sha256 {e['public_key_sha256'][:16]}…)")


@app.command()
def push(key: str = typer.Argument(..., help="Artifact key."),
         url: str = typer.Argument(..., help="Destination store: a path or fsspec URL (s3://..., file://...)."),
         store: StoreOpt = None):
    """Copy a verified artifact to another store (shards first, manifest last), and the vocabulary table of
    the tokenizer that rendered it when the store has it (what a student of another tokenizer reads)."""
    st = Store(store)
    echo(f"pushed {push_artifact(st, key, url)}")
    table = _vocab_of(st.manifest(key))
    if table and st.is_complete(table):
        echo(f"pushed {push_artifact(st, table, url)} (its vocabulary table)")


@app.command()
def pull(url: str = typer.Argument(..., help="The artifact's folder in another store: path or fsspec URL."),
         store: StoreOpt = None, trust: Path = TrustOpt):
    """Fetch an artifact; it becomes visible only after it verifies in full (it replaces a damaged local copy)."""
    st, trusted = Store(store), signing.trusted_keys(trust) if trust else None
    key, reused = pull_artifact(st, url, trusted)
    echo(f"{'already complete, reused' if reused else 'pulled and verified'} {key}")
    table = _vocab_of(st.manifest(key))
    if table:  # beside it in the same store, when its producer pushed it: not needed by same-tokenizer students
        try:
            got, reused = pull_artifact(st, f"{url.rstrip('/').rsplit('/', 1)[0]}/{table}", trusted)
            echo(f"{'already complete, reused' if reused else 'pulled and verified'} {got} (its vocabulary table)")
        except (StoreError, VerifyError, signing.SignatureError) as e:
            echo(f"no vocabulary table {table} pulled ({one_line(e)}): students of another tokenizer need it")


def _vocab_of(manifest: dict | None) -> str | None:
    """The key of the vocabulary table of the tokenizer that rendered a stage-one artifact (None: not one)."""
    fp = ((manifest or {}).get("inputs") or {}).get("render", {}).get("tokenizer")
    return vocab_key(fp) if isinstance(fp, dict) and fp.get("vocab_sha256") else None


@app.command()
def audit(key: str = typer.Argument(..., help="Artifact key (teacher-topk, seq-logp or advantage)."),
          sample: int = typer.Option(32, "--sample", help="Rows drawn at random and scored again."),
          seed: int = typer.Option(0, help="Which rows are drawn."),
          model: list[str] = typer.Option(None, "--model", help="ROLE=PATH: your copy of a model the manifest "
                                          "names as a local folder (ROLE: model, teacher, reference); its "
                                          "weights must hash to the manifest's."),
          slack: float = typer.Option(0.01, help="Nats allowed beyond the stored fidelity for other engines and "
                                      "kernels."),
          store: StoreOpt = None):
    """Re-score sampled rows with the models the manifest names and compare: exit 1 when a stored value lies
    beyond the stated fidelity (a forged or mislabelled artifact), without trusting its producer."""
    from adpa.stages.teacher_cache.audit import audit as run_audit
    from adpa.stages.teacher_cache.audit import Sample, parse_models, report
    findings, n = run_audit(Store(store), key, Sample(sample, seed, slack), parse_models(model), say=echo)
    for line in report(key, findings, n).split("\n"):
        echo(line)
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@app.command()
def repair(key: str = typer.Argument(..., help="Artifact key."),
           url: str = typer.Argument(None, help="A store (or that store's folder of the key) holding a good copy: "
                                     "path or fsspec URL."),
           store: StoreOpt = None):
    """Verify an artifact; when damaged, replace it with a verified copy from URL, or remove it so that the
    command that made it rebuilds it."""
    echo(repair_artifact(Store(store), key, url))


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 24h, 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@app.command()
def gc(store: StoreOpt = None,
       older_than: str = typer.Option("24h", help="Only leftovers untouched this long (30m, 24h, 7d)."),
       dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; remove nothing.")):
    """Remove incomplete leftovers; a complete artifact or one whose producer runs is never touched (on a URL
    store also the objects no manifest names)."""
    removed = Store(store).gc(parse_duration(older_than), dry_run=dry_run)
    for p in removed:
        echo(f"{'would remove' if dry_run else 'removed'} {p}")
    echo(f"{len(removed)} incomplete leftover(s) {'found' if dry_run else 'removed'}")
