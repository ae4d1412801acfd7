"""Planning stage one's keys without rendering: what stage two names its caches by, and `adpa cache ls -r`.

`plan` reads the data's fingerprint and first row and loads the chat template's tokenizer; it parses no
other row, renders none and loads no model. Its keys are those stage one writes.
"""

import json

import pytest
import yaml
from typer.testing import CliRunner

from adpa.artifacts import Store
from adpa.pipeline import builtin, orchestrate
from adpa.pipeline.cli import app
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.models import resolve
from adpa.stages.common.ranks import silent
from adpa.stages.teacher_cache import run as stage_one
from adpa.stages.teacher_cache.pairs import DataError

NAMES = {("teacher-topk", "teacher"): "teacher_topk", ("seq-logp", "reference"): "reference_logp",
         ("seq-logp", "student"): "student_logp", ("generations", "student"): "generations"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    st = Store(d / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    return d, st, {"teacher": str(teacher), "reference": str(student), "student": str(student)}


def recipe(world, data: dict, **tc):
    d, _, models = world
    f = d / f"recipe-{len(list(d.glob('recipe-*')))}.yaml"
    f.write_text(yaml.safe_dump({"name": "plan", "models": models, "data": data, "teacher_cache": {
        "backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 6} | tc}))
    return load_recipe(str(f))


def models_of(r):
    return {role: resolve(getattr(r.models, role)) for role in ("teacher", "reference", "student")}


@pytest.mark.parametrize("data, tc", [({"format": "strings", "limit": 8}, {}),
                                      ({"limit": 6}, {"states": "chosen", "advantage_reference": "student"})])
def test_the_planned_keys_are_the_keys_stage_one_writes(world, data, tc):
    _, st, _ = world
    r = recipe(world, {"source": str(tiny_world.dataset(st, tiny_world.V3, "train", 0))} | data, **tc)
    results = orchestrate.teacher_cache(r, st, say=silent)
    written = {NAMES.get((x.kind, x.role), "advantage"): x.key for x in results}
    # the data as the pipeline gives stage one: without the rows held out for evaluation (data.holdout)
    assert stage_one.plan(stage_one.Request(models_of(r), builtin.resolve_data(r.data, st), r.teacher_cache)) == written
    assert len(written) == (5 if r.teacher_cache.states == "student" else 4)

    listed = CliRunner().invoke(app, ["cache", "ls", "-r", str(r.path), "--store", str(st.root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {e["name"]: (e["key"], e["complete"], e["state"]) for e in json.loads(listed.output)} == {
        n: (k, True, "complete") for n, k in written.items()}
    other = CliRunner().invoke(app, ["cache", "ls", "-r", str(r.path), "--set", "teacher_cache.max_length=31", "--store",
                                     str(st.root)])  # planned, not made: listed as missing
    assert other.exit_code == 0 and other.output.count(" missing ") == len(written), other.output
    partial = st.root / json.loads(CliRunner().invoke(app, ["cache", "ls", "-r", str(r.path), "--set",
                                                            "teacher_cache.max_length=31", "--store", str(st.root),
                                                            "--json"]).output)[0]["key"]
    partial.mkdir()  # what a stopped run leaves: a folder without a manifest
    again = CliRunner().invoke(app, ["cache", "ls", "-r", str(r.path), "--set", "teacher_cache.max_length=31",
                                     "--store", str(st.root)])
    assert again.output.count(" partial ") == 1 and again.output.count(" missing ") == len(written) - 1, again.output


def test_planning_reads_the_first_row_only(world, monkeypatch):
    """A file whose second line is not JSON stops stage one's reading, not planning (which hashes the file
    and reads its first row); nothing is parsed into a pair or rendered."""
    d, st, _ = world
    rows = (tiny_world.dataset(st, tiny_world.V3, "train", 0)).read_text().splitlines()
    f = d / "broken.jsonl"
    f.write_text("\n".join([rows[0], "{not json", *rows[1:40]]) + "\n")
    r = recipe(world, {"source": str(f)})
    with pytest.raises(DataError, match="line 2"):
        stage_one.prepare(r.data, r.teacher_cache, None, strict=False)
    refuse = lambda *a, **k: pytest.fail("planning parsed or rendered a row")  # noqa: E731
    monkeypatch.setattr(stage_one, "parse_row", refuse)
    monkeypatch.setattr(stage_one, "encode_pair", refuse)
    keys = stage_one.plan(stage_one.Request(models_of(r), r.data, r.teacher_cache))
    assert set(keys) == {"teacher_topk", "reference_logp", "student_logp", "generations", "advantage"}
    f.write_text("\n".join([rows[0], "{not json", *rows[1:41]]) + "\n")  # another file: other keys
    assert stage_one.plan(stage_one.Request(models_of(r), r.data, r.teacher_cache))["teacher_topk"] != keys["teacher_topk"]
