"""Hostile and unlucky inputs that need no model: recipes, settings, launcher variables, the store setting,
data files, manifests and trust keys (issue 24's probes; the distill ones are in test_distill.py).

Memory cases run the real CLI in a child under an address-space limit (RLIMIT_AS): they hold when the
child ends with a one-line error or succeeds inside the limit, never by a timing.
"""

import gzip
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ADPA = str(Path(sys.executable).parent / "adpa")
GiB = 1 << 30


def adpa(*args, limit: int | None = None, env=None, cwd=None, timeout=300):
    """The CLI in a child; `limit`: its address-space bound in bytes."""
    def bound():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([ADPA, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout,
                          preexec_fn=bound if limit else None)


def one_error_line(r, *words):
    assert r.returncode == 1, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adpa: error:"), r.stderr[-2000:]
    assert len(lines[0]) < 600, f"{len(lines[0])} characters"
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def laughs(levels: int) -> str:
    """A flow list whose aliases repeat each other 9 times a level: 9**levels strings once expanded."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def recipe_with(tmp_path, text: str, name="hostile.yaml") -> Path:
    p = tmp_path / name
    p.write_text("name: hostile\nmodels: {teacher: a, reference: b, student: c}\ndata: {source: x.jsonl}\n" + text)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("where", ["description", "setting", "--set"])
def test_yaml_alias_bombs_are_refused_in_bounded_memory(tmp_path, where):
    """1a/1b: 2.5 KB of nested aliases in a description, a setting or a --set value: one short line naming the
    file or the setting, inside 1 GiB of address space (5 GB after a minute on fbb914c)."""
    bomb = laughs(9)
    if where == "description":
        r = adpa("recipe", "show", "-r", recipe_with(tmp_path, f"description: {bomb}\n"), limit=GiB)
        one_error_line(r, "hostile.yaml", "aliases")
    elif where == "setting":
        r = adpa("recipe", "show", "-r", recipe_with(tmp_path, f"distill: {{lr: {bomb}}}\n"), limit=GiB)
        one_error_line(r, "hostile.yaml", "aliases")
    else:
        r = adpa("recipe", "show", "-r", "tiny", "--set", f"distill.lr={bomb}", limit=GiB)
        one_error_line(r, "distill.lr", "aliases")


@pytest.mark.slow
def test_a_few_aliases_still_read(tmp_path):
    """The bound is on the expanded size, not on aliases: a recipe that reuses a value reads."""
    p = recipe_with(tmp_path, "distill: {lr: &lr 1.0e-5}\nper_loss: {kd: {sft_lr: *lr}}\n")
    r = adpa("recipe", "show", "-r", p)
    assert r.returncode == 0, r.stderr
    assert "lr: 1.0e-05" in r.stdout


@pytest.mark.slow
def test_deep_yaml_names_the_file(tmp_path):
    """6c: 10,000 levels of nesting: one line naming the file and the bound."""
    p = recipe_with(tmp_path, "description: " + "[" * 10_000 + "]" * 10_000 + "\n", "deep.yaml")
    one_error_line(adpa("recipe", "show", "-r", p, limit=GiB), "deep.yaml", "nested deeper than 64")


@pytest.mark.parametrize("item", ["distill.alpha=.nan", "distill.max_grad_norm=.inf", "distill.warmup=.nan",
                                  "distill.lr=1e999", "per_loss.adpa.gamma=-.inf"])
@pytest.mark.slow
def test_non_finite_settings_are_refused_naming_the_setting(item):
    """6a: NaN passed every bound (NaN < minimum is False) and failed later in JSON."""
    name = item.split("=")[0].replace("per_loss.", "per_loss.")
    r = adpa("recipe", "show", "-r", "tiny", "--set", item)
    one_error_line(r, name.split(".")[-1], "finite")


@pytest.mark.slow
def test_an_error_quotes_at_most_a_short_piece_of_a_value():
    r = adpa("recipe", "show", "-r", "tiny", "--set", "distill.lr=" + "x" * 100_000)
    one_error_line(r, "distill.lr", "100,002 characters")


@pytest.mark.parametrize("env,words", [({"WORLD_SIZE": "x"}, ["WORLD_SIZE='x'", "integer"]),
                                       ({"WORLD_SIZE": "2", "RANK": "2"}, ["RANK=2", "WORLD_SIZE-1=1"]),
                                       ({"WORLD_SIZE": "2", "RANK": "-1"}, ["RANK='-1'"]),
                                       ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                         "MASTER_PORT": "99999"}, ["MASTER_PORT='99999'"])])
@pytest.mark.slow
def test_launcher_variables_are_checked(tmp_path, env, words):
    """6b: 'invalid literal for int() with base 10' named nothing."""
    one_error_line(adpa("teacher-cache", "-r", "tiny", "--store", tmp_path / "s", env=env), *words)


@pytest.mark.slow
def test_a_rendezvous_nobody_joins_ends_naming_the_address(tmp_path):
    """7a: leftover launcher variables outside torchrun waited silently for the 24-hour process-group timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "ADPA_RENDEZVOUS_S": "2"}
    r = adpa("teacher-cache", "-r", "tiny", "--store", tmp_path / "s", env=env, timeout=120)
    one_error_line(r, f"127.0.0.1:{port}", "within 2 s", "unset WORLD_SIZE")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_empty_store_setting_is_an_error(tmp_path, how):
    """8a: `--store ''` or `ADPA_STORE=` used the current folder as the store."""
    args, env = (["--store", ""], {}) if how == "flag" else ([], {"ADPA_STORE": ""})
    r = adpa("cache", "gc", "--older-than", "0s", *args, env=env, cwd=tmp_path)
    one_error_line(r, "store setting is empty")
    assert list(tmp_path.iterdir()) == []


def load_rows_in_child(path, limit_bytes: int, **kw):
    """adpa.stages.teacher_cache.pairs.load_rows in a child under an address-space limit; its stdout: the row count."""
    code = ("import sys; from adpa.stages.teacher_cache.pairs import load_rows, DataError\n"
            "try:\n"
            f"    rows, fp = load_rows({str(path)!r}, **{kw!r})\n"
            "except DataError as e:\n"
            "    print('DataError:', e); sys.exit(1)\n"
            "print(len(rows), sorted(rows[0]), fp['sha256'])\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1], preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_AS, (limit_bytes, limit_bytes)))


ROW = b'{"prompt": "sort 3 1 2", "chosen": "1 2 3", "rejected": "3 2 1"}\n'


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_in_bounded_memory(tmp_path):
    """1c: 256 MB of rows in a ~0.3 MB .jsonl.gz: 3.66 GB peak and exit 0 on fbb914c (whole file in memory)."""
    import zlib
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header
    chunk = ROW * ((1 << 20) // len(ROW))
    with open(tmp_path / "bomb.jsonl.gz", "wb") as f:
        for _ in range(256):
            f.write(z.compress(chunk))
        f.write(z.flush())
    assert (tmp_path / "bomb.jsonl.gz").stat().st_size < 1 << 20
    r = load_rows_in_child(tmp_path / "bomb.jsonl.gz", GiB)
    assert r.returncode == 1 and "DataError:" in r.stdout and "expands more than 100x" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_a_limit_stops_reading_early(tmp_path):
    """1d: data.limit=8 on a 150 MB file parsed every row first (2.6 GB on 186 MB); the key's sha256 is still
    the whole file's."""
    import hashlib
    f = tmp_path / "big.jsonl"
    block = ROW * 10_000
    with open(f, "wb") as out:
        for _ in range(150 * (1 << 20) // len(block)):
            out.write(block)
    r = load_rows_in_child(f, 768 << 20, limit=8)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    n, _, sha = r.stdout.split(maxsplit=1)[0], None, r.stdout.split()[-1]
    assert n == "8"
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while b := fh.read(1 << 24):
            h.update(b)
    assert sha == h.hexdigest()


def test_json_lines_split_on_newline_only(tmp_path):
    """2a: U+2028 and U+0085 inside a string are valid JSON; str.splitlines() cut the line there."""
    from adpa.stages.teacher_cache.pairs import load_rows
    rows = [{"prompt": f"p{i}\u2028x", "chosen": "a\u0085b", "rejected": "c\u2029d\x1ce"} for i in range(4)]
    for name, opener in (("pairs.jsonl", open), ("pairs.jsonl.gz", gzip.open)):
        with opener(tmp_path / name, "wb") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        got, _ = load_rows(str(tmp_path / name))
        assert got == rows


def test_csv_with_a_byte_order_mark_reads(tmp_path):
    """2b: Excel's "CSV UTF-8" starts with a BOM, which became part of the first column's name (no usable row)."""
    from adpa.stages.teacher_cache.pairs import DataError, detect_format, load_rows
    f = tmp_path / "pairs.csv"
    f.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\r\nsort 2 1,1 2,2 1\r\n")
    rows, _ = load_rows(str(f))
    assert rows == [{"prompt": "sort 2 1", "chosen": "1 2", "rejected": "2 1"}]
    assert detect_format(rows[0]) == "strings"
    with pytest.raises(DataError, match=r"--set data\.format="):
        detect_format({"chosen": 1, "rejected": 2})


def files_artifact(root: Path):
    """A small `files` artifact (the kind models and students are) in a store at `root`."""
    from adpa.artifacts import Store
    from adpa.artifacts.folders import publish_folder
    st = Store(root)
    d, m, _ = publish_folder(st, "model", {"probe": 1}, lambda f: {"size": (f / "weights.bin").write_bytes(b"w" * 4096)})
    return st, d, m


@pytest.mark.slow
def test_terminal_escapes_in_a_manifest_never_reach_the_terminal(tmp_path):
    """5a: `created` (neither hashed nor validated) and free-form values reached `cache ls` / `cache show` raw:
    a title change, a line erase and a fake 'ok' line."""
    st, d, m = files_artifact(tmp_path / "store")
    evil = "\x1b]0;TITLE\x07\x1b[2K\r\x1b[32mok fake verified\nok second line"
    raw = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").chmod(0o644)
    (d / "manifest.json").write_text(json.dumps(raw | {"stats": {"note": evil}}))
    outputs = [adpa("cache", "show", m["key"], "--store", st.root), adpa("cache", "ls", "--store", st.root)]
    (d / "manifest.json").write_text(json.dumps(raw | {"created": evil}))
    outputs += [adpa("cache", "ls", "--store", st.root), adpa("cache", "show", m["key"], "--store", st.root),
                adpa("cache", "verify", m["key"], "--store", st.root)]
    for r in outputs:
        text = r.stdout + r.stderr
        assert not any(c in text for c in "\x1b\x07\r"), text
        assert "\nok second line" not in text and "\nok fake" not in text, text
    assert "created must be an ISO 8601 time" in outputs[-1].stderr


@pytest.mark.slow
def test_a_symlinked_file_in_an_artifact_is_refused_by_verify_push_reuse_and_pull(tmp_path):
    """5b: an entry that is a link to a file outside (same sha256): verify said ok and push copied it."""
    from adpa.artifacts import StoreError
    from adpa.artifacts.transfer import pull
    from adpa.artifacts.writer import checked_for_reuse
    st, d, m = files_artifact(tmp_path / "store")
    outside = tmp_path / "secret"
    outside.write_bytes((d / "weights.bin").read_bytes())
    (d / "weights.bin").unlink()
    (d / "weights.bin").symlink_to(outside)
    one_error_line(adpa("cache", "verify", m["key"], "--store", st.root), "weights.bin", "symbolic link")
    one_error_line(adpa("cache", "push", m["key"], tmp_path / "dest", "--store", st.root), "symbolic link")
    assert not (tmp_path / "dest" / m["key"] / "weights.bin").exists()
    with pytest.raises(StoreError, match="symbolic link"):
        checked_for_reuse(st, m["key"])
    from adpa.artifacts import Store
    with pytest.raises(StoreError, match="symbolic link"):
        pull(Store(tmp_path / "other"), str(d))
    assert not (tmp_path / "other" / m["key"]).exists()


@pytest.mark.slow
def test_keygen_never_replaces_a_public_key(tmp_path):
    """5c: with NAME.key moved away, keygen silently replaced the NAME.pub other teams trust."""
    assert adpa("cache", "keygen", "team", "--out", tmp_path).returncode == 0
    pub = (tmp_path / "team.pub").read_bytes()
    (tmp_path / "team.key").rename(tmp_path / "elsewhere.key")
    one_error_line(adpa("cache", "keygen", "team", "--out", tmp_path), "team.pub exists")
    assert (tmp_path / "team.pub").read_bytes() == pub and not (tmp_path / "team.key").exists()


def big_files_artifact(root: Path, mb: int = 64):
    """A `files` artifact of `mb` MiB of random bytes (a model's size class), built with a fresh `created`."""
    from adpa.artifacts import Store
    from adpa.artifacts.folders import publish_folder
    st = Store(root)
    blob = os.urandom(1 << 20)
    def build(f):
        with open(f / "model.safetensors", "wb") as out:
            for i in range(mb):
                out.write(blob[i:] + blob[:i])
        return {}
    d, m, _ = publish_folder(st, "model", {"probe": "big"}, build)
    return st, d, m


@pytest.mark.slow
def test_push_over_a_complete_copy_survives_sigkill_at_any_instant(tmp_path):
    """4d: a second push over a complete copy wrote in place: killed at 0.5 s it left 7 of 210 MB under the old
    manifest. Here a push that must replace the copy (same key, another manifest) is killed at several
    instants: the destination always verifies, with the old manifest or the new one."""
    from adpa.artifacts import verify_artifact
    st, d, m = big_files_artifact(tmp_path / "store")
    dest = tmp_path / "dest"
    t = __import__("time").perf_counter()
    assert adpa("cache", "push", m["key"], dest, "--store", st.root).returncode == 0
    full = __import__("time").perf_counter() - t
    old = (dest / m["key"] / "manifest.json").read_bytes()
    again = adpa("cache", "push", m["key"], dest, "--store", st.root)  # the same manifest: nothing rewritten
    assert again.returncode == 0 and (dest / m["key"] / "manifest.json").read_bytes() == old
    (d / "manifest.json").chmod(0o644)
    raw = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(raw | {"created": "2027-01-01T00:00:00+00:00"}))
    new = (d / "manifest.json").read_bytes()
    for frac in (0.2, 0.4, 0.6, 0.8, 0.95):
        p = subprocess.Popen([ADPA, "cache", "push", m["key"], str(dest), "--store", str(st.root)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        __import__("time").sleep(frac * full)
        p.kill()
        p.wait()
        verify_artifact(dest / m["key"])
        assert (dest / m["key"] / "manifest.json").read_bytes() in (old, new)
    assert adpa("cache", "push", m["key"], dest, "--store", st.root).returncode == 0
    assert (dest / m["key"] / "manifest.json").read_bytes() == new
    verify_artifact(dest / m["key"])


@pytest.mark.slow
def test_gc_never_removes_a_live_pull_s_work(tmp_path):
    """4e: `cache gc --older-than 0s` during a pull deleted the pull's .incoming work folder."""
    from adpa.artifacts import Store, verify_artifact
    from adpa.artifacts.fsutil import work_folder
    from adpa.artifacts.store import INCOMING
    st = Store(tmp_path / "store")
    with work_folder(st.root / INCOMING, "pull") as work:  # held as a running pull holds it
        (work / "part").write_bytes(b"x")
        r = adpa("cache", "gc", "--older-than", "0s", "--store", st.root)
        assert r.returncode == 0 and (work / "part").exists(), r.stdout
    src, _, m = big_files_artifact(tmp_path / "src", mb=128)
    p = subprocess.Popen([ADPA, "cache", "pull", str(src.path(m["key"])), "--store", str(st.root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while p.poll() is None:  # gc again and again while the pull runs
        adpa("cache", "gc", "--older-than", "0s", "--store", st.root)
    out, err = p.communicate()
    assert p.returncode == 0 and "pulled and verified" in out, err
    verify_artifact(st.path(m["key"]))
    assert adpa("cache", "gc", "--older-than", "0s", "--store", st.root).returncode == 0
    assert not list((st.root / INCOMING).iterdir())


@pytest.mark.slow
def test_pull_trust_checks_the_signature_before_any_shard(tmp_path):
    """1e: `pull --trust` of an unsigned artifact downloaded every shard (the format allows 100k of 64 GiB)
    before it said 'is not signed'. The source here has its manifest and no shard at all."""
    st, d, m = files_artifact(tmp_path / "src")
    assert adpa("cache", "keygen", "team", "--out", tmp_path / "keys").returncode == 0
    (tmp_path / "keys" / "team.key").unlink()
    (d / "weights.bin").unlink()
    r = adpa("cache", "pull", d, "--trust", tmp_path / "keys", "--store", tmp_path / "mine")
    one_error_line(r, "is not signed")


@pytest.mark.slow
def test_keys_name_inputs_not_the_environment():
    """3d: HF_HUB_OFFLINE=1 gave other keys for every artifact (transformers saves local_files_only into
    tokenizer_config.json, which the tokenizer fingerprint hashed), so two teams never shared a shard. The
    real SmolLM2 tokenizer, loaded in two processes, one of them offline."""
    code = ("import json\nfrom transformers import AutoTokenizer\n"
            "from adpa.pipeline.worlds.smollm2 import smollm2_gguf\n"
            "from adpa.stages.common.tokenizers import tokenizer_fingerprint\n"
            "folder, name = smollm2_gguf()\n"
            "print(json.dumps(tokenizer_fingerprint(AutoTokenizer.from_pretrained(folder, gguf_file=name))))\n")
    out = []
    for offline in ("", "1"):
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | ({"HF_HUB_OFFLINE": "1"} if offline else {})
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                           cwd=Path(__file__).parents[1])
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert out[0] == out[1]


@pytest.mark.slow
def test_a_parquet_bomb_is_refused_in_bounded_memory(tmp_path):
    """The gzip bomb's class in Parquet: dictionary and run-length codes make 10M rows a few hundred KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 10_000_000
    col = pa.DictionaryArray.from_arrays(pa.array(__import__("numpy").zeros(n, "int32")), pa.array(["x" * 64]))
    pq.write_table(pa.table({"prompt": col, "chosen": col, "rejected": col}), tmp_path / "bomb.parquet",
                   compression="zstd")
    assert (tmp_path / "bomb.parquet").stat().st_size < 1 << 20
    r = load_rows_in_child(tmp_path / "bomb.parquet", GiB)
    assert r.returncode == 1 and "expands more than 100x" in r.stdout, r.stdout + r.stderr[-2000:]


def test_a_data_file_that_is_not_a_regular_file_is_refused(tmp_path):
    """A link to /dev/zero (or a FIFO) named .jsonl would be hashed forever."""
    from adpa.stages.teacher_cache.pairs import DataError, load_rows
    (tmp_path / "zeros.jsonl").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.jsonl")
    for name in ("zeros.jsonl", "fifo.jsonl"):
        with pytest.raises(DataError, match="not a regular file"):
            load_rows(str(tmp_path / name))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "demo"])
def test_eval_and_demo_never_replace_files_they_did_not_write(tmp_path, command):
    """4a's class in the other commands with --output: eval.json, eval.png and generations/NAME.jsonl of a
    user's folder were replaced. Refused in one line before any model is built or loaded."""
    mine = tmp_path / "mine"
    (mine / "generations").mkdir(parents=True)
    (mine / "generations" / "sft.jsonl").write_text("my generations\n")
    (mine / "eval.json").write_text("{}")
    r = adpa(command, "--output", mine, "--store", tmp_path / "store")
    one_error_line(r, f"--output {mine} holds files no adpa command wrote", "--overwrite")
    assert (mine / "generations" / "sft.jsonl").read_text() == "my generations\n"
    assert sorted(p.name for p in mine.rglob("*")) == ["eval.json", "generations", "sft.jsonl"]
    assert not (tmp_path / "store").exists()
    one_error_line(adpa(command, "--output", mine / "eval.json", "--store", tmp_path / "store"), "is a file")
    assert (mine / "eval.json").read_text() == "{}"
