"""What `adpa eval` shows: one table with standard errors, the over-optimisation guard, and a bar chart
per metric."""

from __future__ import annotations

from pathlib import Path

COLUMNS = [("reward", "reward", "{:.3f}"), ("rm", "RM score", "{:+.3f}"), ("implicit_reward", "r(y) seq", "{:+.3f}"),
           ("implicit_reward_per_token", "r(y)/tok", "{:+.3f}"), ("win_rate_vs_", "win vs base", "{:.3f}"),
           ("preference_accuracy", "pref acc", "{:.3f}"), ("kl_to_init", "KL(init)/tok", "{:.3f}")]
TEACHER, INIT = "teacher-dpo", "student-sft"  # the rows the guard compares a student with


def over_optimised(results: list) -> set[str]:
    """Students whose mean implicit reward exceeds the DPO teacher's own while their ground-truth reward
    falls below their init's: they maximise the teacher's reward past what the teacher itself earns
    and get worse at the task (needs a ground-truth reward)."""
    by = {r.name: r.metrics for r in results}
    if TEACHER not in by or INIT not in by or "reward" not in by[INIT]:
        return set()
    return {r.name for r in results if r.name not in (TEACHER, INIT, "teacher-sft")
            and r.metrics["implicit_reward"][0] > by[TEACHER]["implicit_reward"][0]
            and r.metrics["reward"][0] < by[INIT]["reward"][0]}


def _metric(r, prefix: str):
    return next(((k, v) for k, v in r.metrics.items() if k.startswith(prefix)), (None, None))


def table(results: list, n: int, rows: str = "held-out") -> str:
    """The results as text; `rows`: what the `n` prompts are (held-out, or training rows)."""
    cols = _columns(results)
    head = f"{'model':18}" + "".join(f"{title:>18}" for _, title, _ in cols)
    lines = [head]
    flagged = over_optimised(results)
    for r in results:
        cells = ""
        for prefix, _, fmt in cols:
            ms = _metric(r, prefix)[1]
            cells += f"{fmt.format(ms[0]) + ' ± ' + f'{ms[1]:.3f}' if ms else '-':>18}"
        lines.append(f"{r.name:18}{cells}" + ("  !" if r.name in flagged else ""))
    lines.append(f"(means over {n} {rows} prompts ± standard error; r(y) = log pi_dpo(y|x) - log pi_ref(y|x) of "
                 f"greedy generations; win rate by r against the baseline's generation of the same prompt; KL(init)/tok "
                 f"= KL(model || student init) per token of its own generations, - where the model's vocabulary is "
                 f"not the init's)")
    if flagged:
        lines.append(f"! over-optimised: implicit reward above the DPO teacher's own while the ground-truth reward is "
                     f"below the student init's ({', '.join(sorted(flagged))})")
    return "\n".join(lines)


def bar_chart(names: list[str], panels: list[tuple[str, list[float], list[float]]], title: str, path: Path) -> Path:
    """One bar panel per metric (title, means, error bars); teachers grey, students blue."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (panel, means, errs) in zip(axes[0], panels):
        ax.bar(range(len(names)), means, yerr=errs, capsize=3,
               color=["#888888" if "teacher" in nm else "#3b75af" for nm in names])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _columns(results: list) -> list[tuple]:
    """The metrics any model has (a model of another vocabulary than the init's has no KL to it)."""
    return [c for c in COLUMNS if any(_metric(r, c[0])[0] for r in results)]


def plot(results: list, path: Path, n: int, rows: str = "held-out") -> Path:
    cell = lambda r, prefix, i: (_metric(r, prefix)[1] or (float("nan"), 0.0))[i]  # noqa: E731
    panels = [(title, [cell(r, prefix, 0) for r in results], [cell(r, prefix, 1) for r in results])
              for prefix, title, _ in _columns(results)]
    return bar_chart([r.name for r in results], panels, f"{rows} evaluation ({n} prompts, bars: mean ± standard error)",
                     path)
