"""Progress (stages/common/progress.py): plain lines in a log, a bar on a terminal, TQDM_DISABLE honoured."""

import io

import pytest

from adpa.stages.common import progress


def test_a_log_gets_a_plain_line_per_tenth_and_no_carriage_returns(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)  # not a terminal
    lines = []
    with progress.Progress(37, "distill (dckd)", "step", lines.append) as p:
        for _ in range(37):
            p.postfix("loss 0.5")
            p.update(1)
    assert err.getvalue() == ""  # no bar: nothing but the lines below
    assert len(lines) == 10 and lines[-1] == "distill (dckd): 37/37 steps (100%) loss 0.5"
    assert lines[0].startswith("distill (dckd): 4/37 steps (11%)")


def test_a_slow_run_says_how_it_goes_every_n_seconds_with_an_eta(monkeypatch):
    """issue 27 item 7: one plain line every ADPA_LOG_EVERY seconds (rows, rate, ETA) besides the tenths, so a
    run of hours does not stay silent for a tenth of them."""
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    monkeypatch.setenv("ADPA_LOG_EVERY", "60")
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    lines = []
    p = progress.Progress(1000, "advantage", "row", lines.append)
    for _ in range(30):  # a row every 10 s: 300 s, 3% of the work, no tenth reached
        clock[0] += 10
        p.update(1)
    assert lines == [f"advantage: {n}/1,000 rows (1%), ETA {eta}" if n < 15 else
                     f"advantage: {n}/1,000 rows ({round(n / 10)}%), ETA {eta}"
                     for n, eta in ((6, "2:45:40"), (12, "2:44:40"), (18, "2:43:40"), (24, "2:42:40"), (30, "2:41:40"))]


def test_a_resumed_run_counts_from_where_it_was_and_other_ranks_say_nothing(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    lines = []
    p = progress.Progress(100, "teacher-topk (teacher)", "row", lines.append, initial=50)
    p.update(50)
    assert lines == ["teacher-topk (teacher): 100/100 rows (100%)"]
    quiet = []
    progress.Progress(10, "x", "row", quiet.append, active=False).update(10)
    assert quiet == []


def test_a_terminal_gets_a_bar_unless_tqdm_disable_is_set(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(progress.sys, "stderr", Tty())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress.bar_enabled() and not progress.bar_enabled(active=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress.bar_enabled()
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress.bar_enabled()


def test_a_one_step_runs_loss_plot_has_whole_steps_on_its_axis(tmp_path, monkeypatch):
    """issue 27 item 12: a short run's loss.png read 0.96 ... 1.04 on its step axis."""
    import matplotlib.figure

    from adpa.stages.distill.report import plot_loss
    ticks = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        return save(fig, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    assert plot_loss([{"step": 1, "loss": 0.5}], "t", tmp_path / "loss.png").stat().st_size > 0
    assert ticks and all(float(t).is_integer() for t in ticks) and 1 in ticks


def test_the_model_card_names_the_teacher_reference_and_data_its_caches_came_from():
    """issue 27 item 4: the card named no dataset, teacher or reference."""
    from adpa.stages.distill import report
    topk = {"inputs": {"role": "teacher", "model": {"hub_id": "org/teacher", "revision": "abc"}, "k": 8,
                       "data": {"file": "data.jsonl", "sha256": "d" * 64, "split": "train", "format": "trl"}}}
    adv = {"inputs": {"teacher": {"hub_id": "org/teacher", "revision": "abc"},
                      "reference": {"folder": "ref", "weights_sha256": "e" * 64}}}
    p = report.provenance([topk, adv])
    assert p == {"teacher": {"hub_id": "org/teacher", "revision": "abc"}, "data": {"sha256": "d" * 64, "split": "train",
                 "format": "trl"}, "reference": {"folder": "ref", "weights_sha256": "e" * 64}}
    rows = report._provenance_rows(p)
    assert "| teacher | `org/teacher@abc` |" in rows and f"| data | `sha256 {'d' * 64}, split train, format trl` |" in rows
    assert "data.jsonl" not in rows  # a file's name says nothing another team can check; its sha256 does


def test_the_cards_base_model_is_a_hub_id_or_absent(tmp_path):
    from adpa.stages.distill import report
    card = lambda spec: report.model_card(report.Card("r", "dckd", spec, {}, {}, "student-x", "adpa distill"), {})  # noqa: E731
    assert "base_model: org/student\n" in card("org/student@v2")
    assert "base_model:" not in card("builtin:tiny-student-sft") and "base_model:" not in card(str(tmp_path))
    hub = {"data": {"hub_id": "trl-lib/ultrafeedback_binarized", "revision": "abc", "split": "train"}}
    with_data = lambda p: report.model_card(report.Card("r", "dckd", "org/s", {}, {}, "student-x", "c", p), {})  # noqa: E731
    assert "datasets: [trl-lib/ultrafeedback_binarized]\n" in with_data(hub)
    assert "datasets:" not in with_data({"data": {"sha256": "d" * 64}})  # a file: by its sha256 in the table


def _teacher_cache(tmp_path, *head):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+{i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"})
                            + "\n" for i in range(3)))
    adpa = str(Path(sys.executable).parent / "adpa")
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "ADPA_QUIET")}
    return subprocess.run([adpa, *head, "teacher-cache", "-r", "smollm2", "--data", str(data), "--backend", "hf",
                           "--set", "teacher_cache.k=2", "--set", "teacher_cache.max_new_tokens=4", "--set",
                           "data.holdout=0", "--store", str(tmp_path / "store")], capture_output=True, text=True,
                          env=env | {"OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_in_a_log_the_libraries_bars_are_off_too_and_quiet_leaves_the_summary(tmp_path):
    """issue 27 item 7: transformers' GGUF conversion and "Writing model shards" bars wrote carriage-return runs
    into a log; `--quiet` did not exist."""
    p = _teacher_cache(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\r" not in p.stdout + p.stderr and "GGUF" not in p.stderr, p.stderr[-2000:]
    assert "teacher-topk (teacher): 3/3 rows (100%)" in p.stdout
    q = _teacher_cache(tmp_path, "--quiet")
    assert q.returncode == 0 and q.stderr == "" and "rows (100%)" not in q.stdout
    assert any(ln.startswith("teacher-topk  teacher") and "reused" in ln for ln in q.stdout.splitlines()), q.stdout
