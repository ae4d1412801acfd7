"""Settings are declared once: the YAML, `--set` overrides and `adpa recipe show` read the same
declarations; one device/dtype rule and one pad rule serve every stage."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from adpa.pipeline.recipe import SECTIONS, RecipeError, load_recipe, show
from adpa.stages.common.device import compute_dtype, pad_id, pick_device
from adpa.stages.common.settings import in_key
from adpa.stages.distill.losses import LOSSES
from adpa.stages.distill.distiller import key_settings
from adpa.stages.distill.settings import Distill

ADPA = str(Path(sys.executable).parent / "adpa")


@pytest.mark.parametrize("setting,device,want", [
    ("auto", "cpu", "float32"), ("auto", "cuda", "bfloat16"), ("auto", "cuda:0", "bfloat16"),
    ("auto", "cuda:1", "bfloat16"), ("float32", "cuda:1", "float32"), ("bfloat16", "cpu", "bfloat16"),
    ("float16", "cuda:3", "float16")])
def test_one_dtype_rule_for_every_device(setting, device, want):
    assert compute_dtype(setting, device) == want


def test_each_process_owns_its_gpu():
    assert pick_device(0, cuda=False) == "cpu" and pick_device(3, cuda=False) == "cpu"
    assert pick_device(0, cuda=True) == "cuda:0" and pick_device(1, cuda=True) == "cuda:1"
    assert compute_dtype("auto", pick_device(1, cuda=True)) == "bfloat16"  # the stage-one bug: cuda:1 ran float32


def test_one_pad_rule():
    class Tok:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos
    assert pad_id(Tok(5, 2)) == 5 and pad_id(Tok(None, 2)) == 2
    with pytest.raises(ValueError, match="neither a pad nor an eos"):
        pad_id(Tok(None, None))


def test_overrides_are_typed_and_checked_like_the_yaml():
    r = load_recipe("tiny", ["distill.lr=1e-5", "teacher_cache.k=4", "data.limit=100", "distill.gradient_checkpointing=true",
                             "data.eval_source=null"])
    assert r.distill.lr == 1e-5 and isinstance(r.distill.lr, float)
    assert r.teacher_cache.k == 4 and r.data.limit == 100 and r.distill.gradient_checkpointing is True
    assert r.data.eval_source is None
    for bad, says in [("distill.lr=fast", "distill.lr must be a number"), ("teacher_cache.k=true", "must be an integer"),
                      ("teacher_cache.k=0", "teacher_cache.k must be >= 1"), ("data.limit=-1", "data.limit must be >= 1"),
                      ("distill.loss=magic", "expected one of sft"), ("distill.warmup=1", "must be below 1"),
                      ("distill.bogus=1", "unknown keys ['bogus']"), ("optimizer.lr=1", "no section 'optimizer'"),
                      ("lr=1", "expected SECTION.NAME=VALUE"), ("data.source=123", "data.source must be a string")]:
        with pytest.raises(RecipeError, match=says.replace("[", r"\[").replace("]", r"\]")):
            load_recipe("tiny", [bad])


def test_show_lists_every_declared_setting_with_its_help():
    text = show(load_recipe("danube3-500m"))
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            line = next(ln for ln in text.splitlines() if ln.startswith(f"  {f.name}:"))
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 3, line
    assert "lr: 5.0e-07" in text  # the paper's default, not written in the recipe file


@pytest.mark.slow
def test_the_cli_flags_and_set_reach_the_recipe():
    r = subprocess.run([ADPA, "recipe", "show", "-r", "smollm2", "--set", "distill.gamma=0.3"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("  gamma: 0.3 ") for ln in r.stdout.splitlines())
    bad = subprocess.run([ADPA, "distill", "--set", "distill.gamma=high"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "distill.gamma must be a number" in bad.stderr


def test_a_students_key_holds_only_what_its_loss_uses():
    d = Distill()
    assert "alpha" in key_settings(d, "dckd") and "gamma" not in key_settings(d, "dckd")
    assert {"gamma", "advantage"} <= set(key_settings(d, "adpa")) and "alpha" not in key_settings(d, "adpa")
    assert "beta" in key_settings(d, "dpo") and not {"alpha", "gamma", "beta"} & set(key_settings(d, "sft"))
    changed = dataclasses.replace(d, advantage="clip01", gamma=0.3)
    assert key_settings(changed, "dckd") == key_settings(d, "dckd")  # adpa+ keeps its DCKD half
    assert key_settings(d, "sft")["lr"] == d.sft_lr and key_settings(d, "adpa")["lr"] == d.lr
    assert not {"save_every", "token_budget", "gradient_checkpointing"} & set(key_settings(d, "adpa"))
    assert set(in_key(Distill)) >= {"lr", "epochs", "seed", "loss"}
    assert all(spec.then or spec.compute for spec in LOSSES.values())


def test_per_loss_settings_are_each_methods_choice_and_a_set_on_distill_wins():
    r = load_recipe("tiny")
    assert r.distill_for("adpa").advantage == "clip01" and r.distill_for("kd").advantage == r.distill.advantage
    assert r.distill_for("dpo").lr == 1e-4 and r.distill_for("dpo").beta == 0.5 and r.distill_for("kd").lr == 4e-4
    assert r.distill_for("adpa+").advantage == "clip01"  # a chain's entry: for its last step
    assert r.distill_for("dpo").loss == "dpo"
    r = load_recipe("tiny", ["distill.lr=1e-5", "per_loss.adpa.gamma=0.3", "per_loss.sft.epochs=1"])
    assert r.distill_for("dpo").lr == r.distill_for("kd").lr == 1e-5  # one value for every loss
    assert r.distill_for("adpa").gamma == 0.3 and r.distill_for("adpa").advantage == "clip01"
    assert r.distill_for("sft").epochs == 1 and r.distill_for("kd").epochs == 3
    assert "  adpa: {advantage: clip01, gamma: 0.3}" in show(r).splitlines()
    for bad, says in [("per_loss.magic.lr=1", "per_loss.magic: no loss 'magic'"),
                      ("per_loss.adpa.gamma=high", "per_loss.adpa.gamma must be a number"),
                      ("per_loss.adpa.gamma=-1", "per_loss.adpa.gamma must be >= 0"),
                      ("per_loss.adpa.bogus=1", "per_loss.adpa has unknown keys"),
                      ("per_loss.adpa=1", "expected per_loss.LOSS.NAME=VALUE")]:
        with pytest.raises(RecipeError, match=says):
            load_recipe("tiny", [bad])


def test_nested_sections_and_lists_are_set_checked_and_shown_like_the_rest():
    r = load_recipe("tiny")
    assert r.distill.lora is None and r.distill.report_to == () and "lora" not in key_settings(r.distill, "adpa")
    r = load_recipe("tiny", ["distill.lora.r=8", "distill.report_to=wandb", "per_loss.kd.lora.alpha=4"])
    assert r.distill.lora.r == 8 and r.distill.lora.alpha == 32.0 and r.distill.report_to == ("wandb",)
    assert r.distill_for("kd").lora.alpha == 4.0 and r.distill_for("kd").lora.r == 16  # an entry replaces the whole
    assert key_settings(r.distill_for("adpa"), "adpa")["lora"]["target_modules"] == ["all-linear"]
    text = show(r)
    assert "    r: 8 " in text and "  report_to: [wandb] " in text
    r = load_recipe("tiny", ["distill.lora.r=8", "distill.lora=null"])
    assert r.distill.lora is None
    for bad, says in [("distill.lora.rank=8", "distill.lora has unknown keys"),
                      ("distill.lora.r=0", "distill.lora.r must be >= 1"),
                      ("distill.lora.target_modules=[1, 2]", "must be a list of strings"),
                      ("distill.report_to=[tensorboard, mlflow]", "is 'mlflow'; expected one of tensorboard, wandb")]:
        with pytest.raises(RecipeError, match=says):
            load_recipe("tiny", [bad])


def test_a_model_folder_that_asks_to_run_its_own_code_is_refused_and_nothing_runs(tmp_path):
    from adpa.stages.common.models import resolve
    marker = tmp_path / "ran"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoModelForCausalLM": '
                                                '"modeling_evil.EvilModel"}}')
    (tmp_path / "m" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="asks to run the model's own code"):
        resolve(str(tmp_path / "m"))
    assert not marker.exists()


def test_a_recipe_name_that_is_not_a_short_word_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [1, 2]\nmodels: {teacher: a, reference: b, student: c}\ndata: {source: x.jsonl}\n")
    with pytest.raises(RecipeError, match=r"name must be a short word .* got \[1, 2\]"):
        load_recipe(str(p))


def test_a_recipes_relative_data_path_is_beside_the_recipe_file(tmp_path, monkeypatch):
    """issue 27: a copied recipe and its data travel together; --set paths and hub ids are kept as given."""
    from adpa.pipeline.recipe import load_recipe
    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    (d / "data" / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (d / "mine.yaml").write_text("models: {teacher: t, reference: r, student: s}\n"
                                 "data: {source: data/pairs.jsonl, eval_source: org/hub-set}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: data/pairs.jsonl does not exist here
    r = load_recipe(str(d / "mine.yaml"))
    assert r.data.source == str((d / "data" / "pairs.jsonl").resolve()) and r.data.eval_source == "org/hub-set"
    given = load_recipe(str(d / "mine.yaml"), ["data.source=other/pairs.jsonl"])
    assert given.data.source == "other/pairs.jsonl"


def test_a_recipe_knows_the_command_that_makes_it_again(tmp_path):
    """issue 27 item 4: the model card's Reproduce line kept --set data.source=... out, and would train on other data."""
    r = load_recipe("tiny", ["data.source=my pairs.jsonl", "distill.lr=1e-5"])
    assert r.command("distill", "--loss", "adpa") == ("adpa distill -r tiny --loss adpa --set 'data.source=my pairs.jsonl' "
                                                      "--set distill.lr=1e-5")
    own = tmp_path / "mine.yaml"
    own.write_text((Path(__file__).parent.parent / "pipeline" / "recipes" / "tiny.yaml").read_text())
    assert load_recipe(str(own)).command("eval") == f"adpa eval -r {own}"


def test_a_minimal_recipe_gets_exactly_the_settings_recipe_show_prints(tmp_path):
    """issue 27 item 6: a minimal copy of a recipe silently switched to vLLM (backend auto) and k = 50. It gets
    the defaults `adpa recipe show` prints for it, every one, and its relative data path is beside it."""
    import yaml
    (tmp_path / "pairs.jsonl").write_text("")
    f = tmp_path / "min.yaml"
    f.write_text("name: mine\nmodels: {teacher: a/b, reference: a/c, student: a/d}\ndata: {source: pairs.jsonl}\n")
    r = load_recipe(str(f))
    shown = yaml.safe_load(show(r))
    for section in SECTIONS:
        loaded = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(r, section)).items()}
        assert shown[section] == loaded, section  # (YAML has lists where the settings hold tuples)
    assert shown["teacher_cache"]["backend"] == "auto" and shown["teacher_cache"]["k"] == 50  # said, not silent
    assert r.data.source == str(tmp_path / "pairs.jsonl")
