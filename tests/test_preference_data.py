"""Input formats and the drop rules, on real files of each type and the real SmolLM2 tokenizer."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adpa.stages.teacher_cache.pairs import DataError, Pair, detect_format, load_rows, parse_row
from adpa.stages.teacher_cache.render import encode_pair

U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t: {"role": "assistant", "content": t}  # noqa: E731


def test_strings_format():
    p = parse_row(0, {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}, "strings")
    assert isinstance(p, Pair) and p.prompt == [U("Name a colour.")] and (p.chosen, p.rejected) == ("Blue.", "Seven.")


def test_messages_format_keeps_multi_turn_history():
    hist = [{"role": "system", "content": "Be brief."}, U("Hi"), A("Hello!"), U("2+2?")]
    p = parse_row(3, {"id": "x7", "chosen": hist + [A("4")], "rejected": hist + [A("5")]}, "messages")
    assert p.pair_id == "x7" and p.prompt == hist and (p.chosen, p.rejected) == ("4", "5")


def test_trls_conversational_shape_with_an_explicit_prompt():
    """issue 27 item 1: TRL's conversational pairs (the prompt as messages, each answer a list holding the
    assistant's turn) were dropped as empty_prompt."""
    row = {"prompt": [{"role": "system", "content": "Be brief."}, U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}
    assert detect_format(row) == "conversational"
    p = parse_row(0, row, "conversational")
    assert p.prompt == row["prompt"] and (p.chosen, p.rejected) == ("4", "5")
    assert parse_row(0, row | {"chosen": [U("again"), A("4")], "rejected": [U("again"), A("5")]},
                     "conversational").prompt == row["prompt"] + [U("again")]
    assert parse_row(0, row | {"chosen": [U("4")]}, "conversational") == "no_final_assistant_turn"
    assert parse_row(0, row | {"prompt": "2+2?"}, "conversational") == "not_text"


def test_trls_standard_shape_with_an_implicit_prompt():
    """issue 27 item 1: every shape TRL documents; the implicit prompt is the answers' common start, cut at a word
    boundary as TRL's extract_prompt does (a word is never split between the prompt and an answer)."""
    row = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert detect_format(row) == "implicit" and detect_format(row | {"prompt": "x"}) == "strings"
    p = parse_row(0, row, "implicit")
    assert p.prompt == [U("The sky is")] and (p.chosen, p.rejected) == ("blue.", "green.")
    assert parse_row(0, {"chosen": "Answer: 12", "rejected": "Answer: 13"}, "implicit").prompt == [U("Answer:")]
    assert parse_row(0, {"chosen": "abc", "rejected": "abd"}, "implicit") == "no_shared_prompt"
    assert parse_row(0, {"chosen": "same", "rejected": "same"}, "implicit") == "identical_responses"
    assert parse_row(0, {"chosen": 3, "rejected": "x"}, "implicit") == "not_text"


def test_transcripts_format_keeps_multi_turn_history():
    base = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    p = parse_row(0, {"chosen": base + " 4", "rejected": base + " 5"}, "transcripts")
    assert p.prompt == [U("Hi there"), A("Hello!"), U("What is 2+2?")] and (p.chosen, p.rejected) == ("4", "5")


@pytest.mark.parametrize("row,fmt,reason", [
    ({"prompt": "q", "chosen": "a"}, "strings", "missing_field"),
    ({"prompt": "q", "chosen": None, "rejected": "b"}, "strings", "missing_field"),
    ({"prompt": "q", "chosen": 5, "rejected": "b"}, "strings", "not_text"),
    ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, "strings", "not_text"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "strings", "empty_prompt"),
    ({"prompt": "q", "chosen": " ", "rejected": "b"}, "strings", "empty_response"),
    ({"prompt": "q", "chosen": "same", "rejected": "same "}, "strings", "identical_responses"),
    ({"chosen": [U("q"), A("a")], "rejected": [U("other"), A("b")]}, "messages", "no_shared_prompt"),
    ({"chosen": [U("q"), U("a")], "rejected": [U("q"), A("b")]}, "messages", "no_final_assistant_turn"),
    ({"chosen": [U("q"), {"role": "robot", "content": "a"}], "rejected": [U("q"), A("b")]}, "messages", "not_text"),
    ({"chosen": [A("a")], "rejected": [A("b")]}, "messages", "empty_prompt"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: r\n\nAssistant: b"}, "transcripts",
     "no_shared_prompt"),
    ({"chosen": "no turns at all", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "transcripts",
     "no_final_assistant_turn"),
])
def test_unusable_rows_are_dropped_by_reason(row, fmt, reason):
    assert parse_row(0, row, fmt) == reason


def test_format_detection():
    assert detect_format({"prompt": "q", "chosen": "a", "rejected": "b"}) == "strings"
    assert detect_format({"chosen": [U("q")], "rejected": [U("q")]}) == "messages"
    assert detect_format({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": ""}) == "transcripts"
    with pytest.raises(DataError, match="expected chosen and rejected"):
        detect_format({"text": "x"})


ROWS = [{"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "London."},
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet", ".csv"])
def test_local_files_of_each_type(tmp_path, suffix):
    import csv
    import gzip
    f = tmp_path / f"pairs{suffix}"
    if suffix.startswith(".json"):
        text = json.dumps(ROWS) if suffix.startswith(".json.") or suffix == ".json" else \
            "\n".join(json.dumps(r) for r in ROWS)
        f.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    elif suffix == ".csv":
        with f.open("w", newline="") as out:
            w = csv.DictWriter(out, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), f)
    ds, fp = load_rows(str(f), "train")
    assert len(ds) == 2 and ds[0]["chosen"] == "Paris." and len(fp["sha256"]) == 64


def test_unreadable_sources_are_one_line_errors(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(DataError, match="unsupported file type '.tsv'"):
        load_rows(str(tmp_path / "x.tsv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl: line 1 is not JSON"):
        load_rows(str(bad))


def test_rendering_with_the_real_chat_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    p = Pair(0, "p", [U("Hi"), A("Hello!"), U("What is 2+2?")], "4.", "5.")
    enc = encode_pair(tok, p, 256)
    assert tok.decode(enc.prompt_ids).endswith("<|im_start|>assistant\n")
    assert "Hello!" in tok.decode(enc.prompt_ids)  # history kept
    assert tok.decode(enc.chosen_ids) == "4.<|im_end|>" and enc.chosen_ids[-1] == tok.eos_token_id
    assert enc.truncated == 0
    long = Pair(0, "p", [U("Hi")], "word " * 300, "x")
    enc = encode_pair(tok, long, 64)
    assert len(enc.prompt_ids) + len(enc.chosen_ids) == 64 and enc.truncated == 1
    assert tok.decode(enc.chosen_ids).startswith("word word")  # the start of the response is kept
    assert encode_pair(tok, long, len(enc.prompt_ids)) == "prompt_too_long"


def test_a_save_to_disk_folder_is_read_by_split_and_keyed_by_its_files(tmp_path):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(tmp_path / "saved"))
    rows, fp = load_rows(str(tmp_path / "saved"), "test")
    assert rows == ROWS[:1] and fp["folder"] == "saved" and len(fp["files_sha256"]) >= 3
    train, fp_train = load_rows(str(tmp_path / "saved"), "train")
    assert train == ROWS and fp_train["files_sha256"] == fp["files_sha256"] and fp_train["split"] == "train"
    with pytest.raises(DataError, match="no split 'valid' \\(splits: train, test\\)"):
        load_rows(str(tmp_path / "saved"), "valid")


def test_a_hub_dataset_is_keyed_by_the_commit_its_revision_resolves_to(monkeypatch):
    """A moving branch must not reuse an artifact made from another commit: the fingerprint holds the
    resolved commit (the hub is unreachable here: its two calls are replaced, nothing else)."""
    import datasets

    from adpa.stages.teacher_cache import pairs
    head = {"main": "a" * 40}
    monkeypatch.setattr(pairs, "hub_commit", lambda repo, rev: head[rev or "main"] if rev in (None, "main") else rev)
    asked = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda repo, split, revision: asked.append(revision) or datasets.Dataset.from_list(ROWS))
    _, before = load_rows("org/pairs", "train")
    head["main"] = "b" * 40  # someone pushes to main
    _, after = load_rows("org/pairs", "train", "main")
    _, pinned = load_rows("org/pairs", "train", "c" * 40)
    assert before["revision"] == "a" * 40 and after["revision"] == "b" * 40 and pinned["revision"] == "c" * 40
    assert asked == ["a" * 40, "b" * 40, "c" * 40]  # the rows come from the commit that is keyed


def test_a_file_replaced_under_the_same_mtime_is_read_anew(tmp_path):
    """The fingerprint and the rows come from the same bytes: a file swapped for other rows of the same
    size and mtime (`cp -p`, `rsync -a`, tar) gives the new rows, never datasets' cached copy of the old."""
    import hashlib
    import os
    import shutil
    f, other = tmp_path / "pairs.jsonl", tmp_path / "other.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in ROWS))
    other.write_text("\n".join(json.dumps(r | {"prompt": r["prompt"].upper()}) for r in ROWS))
    st = f.stat()
    ds, fp = load_rows(str(f))
    assert ds[0]["prompt"] == ROWS[0]["prompt"]
    shutil.copy2(other, f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    ds, fp = load_rows(str(f))
    assert ds[0]["prompt"] == ROWS[0]["prompt"].upper() and fp["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


def test_missing_empty_and_odd_local_sources_say_so_in_one_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    for source, says in [(tmp_path / "empty.jsonl", "no rows"), (tmp_path / "absent.jsonl", "no such file"),
                         ("./data/absent", "no such file"), (tmp_path, "not a datasets save_to_disk folder")]:
        with pytest.raises(DataError, match=says):
            load_rows(str(source))


def test_a_new_format_is_its_function_and_its_registry_line(tmp_path, monkeypatch, smollm2_tokenizer):
    """A toy shape added as a contributor would (one parse function, one line in FORMATS) is detected, checked
    by the recipe and by --format's choices, parsed, dropped by the shared rules and rendered, with no other change."""
    from adpa.pipeline.recipe import load_recipe
    from adpa.stages.teacher_cache import pairs
    from adpa.stages.teacher_cache.run import prepare

    def question_good_bad(row):  # {question, good, bad}
        return [U(row["question"])], row["good"], row["bad"]

    monkeypatch.setitem(pairs.FORMATS, "qa", pairs.Format(
        ("question", "good", "bad"), lambda cols, first: {"question", "good", "bad"} <= cols, question_good_bad))
    rows = [{"question": "2+2?", "good": "4", "bad": "5"}, {"question": "3+3?", "good": "6", "bad": "6"},
            {"question": "1+1?", "good": "2"}]
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(rows[0]) == "qa"
    recipe = load_recipe("smollm2", [f"data.source={f}", "data.format=qa"])
    prepared, _, fmt = prepare(recipe.data, recipe.teacher_cache, smollm2_tokenizer, strict=False)
    assert fmt == "qa" and prepared[1:] == ["identical_responses", "missing_field"]
    assert prepared[0].pair.prompt == [U("2+2?")] and prepared[0].pair.chosen == "4" and prepared[0].chosen_ids
    auto = load_recipe("smollm2", [f"data.source={f}"])
    assert prepare(auto.data, auto.teacher_cache, smollm2_tokenizer, strict=False)[2] == "qa"
