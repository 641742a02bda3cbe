"""Draw the paper's figures from the summary.json files that lab/run.py leaves, and print a table.

    python lab/plot.py --results-dir runs/grid
    python lab/plot.py --results-dir lab/studies/decide lab/studies/evidence_random --out-dir lab/studies/across_tasks

Figure 5: O3F vs the noise baseline; Figure 6: omega 0 vs 1; Figure 2: CQL -> SAC across the switch
(score, Q bias, critic loss); Figure 3: CQL's online objectives; an aggregate panel and performance profiles, and
the models' offline evaluations along their pretraining (one directory's, also where it holds no fine-tuning yet).
The statistics are the field's (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"), through
the `rliable` package: per task, the interquartile mean (IQM) over seeds with 95% stratified-bootstrap confidence
intervals, and the probability that a run of one variant beats a run of the other. Runs fine-tuned from the same
model are also compared paired by seed: the mean difference with its 95% Student-t interval and the exact sign-flip
p-value beside the bootstrap's interval (with 5 seeds the bootstrap's is too narrow, and the smallest possible p is
0.0625). Scores of different tasks have different scales and are never pooled: several results directories (one
study per task) give per-task tables and, across tasks, the probability of improvement averaged over tasks. Two
complete runs of one variant, task and seed stop the plotter (one would silently stand for the other), and runs
that loaded the same model file are checked to agree at the switch (`--shared-models`: also against other studies).
Curves show the IQM with its CI band against online environment steps (0 is the switch). The tables are also
written to tables.md and, machine-readable with every seed's scores, statistics.json, next to the figures.
"""

import glob
import json
import os
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402

REPS = 2000  # bootstrap resamples (--reps)
MIN_SEEDS = 3  # below it no CI is given: a bootstrap over 1 seed gives a zero-width interval, over 2 the range
# rliable hands arch the RandomState it is given (see interval_estimates); arch warns that it prefers a Generator.
warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)

LABELS = {
    "o3f_iql": "IQL + O3F",
    "iql_noise": "IQL + noise",
    "o3f_iql_omega1": "IQL + O3F (omega = 1)",
    "o3f_iql_n10": "IQL + O3F (N = 10, ablation)",
    "o3f_iql_f05": "IQL + O3F, half of each batch online",
    "iql_noise_f05": "IQL + noise, half of each batch online",
    "o3f_lapo": "LAPO + O3F",
    "lapo_noise": "LAPO + noise",
    "o3f_lapo_omega1": "LAPO + O3F (omega = 1)",
    "cql_to_sac": "CQL -> SAC (objective switch)",
    "cql_same_objective": "CQL -> CQL (same objective)",
    "cql_linear": "CQL, threshold 5 -> 0.5 linearly",
    "cql_abrupt": "CQL, threshold 5 -> 0.5 at the switch",
    "iql_same_objective": "IQL (same objective)",
    "iql_expectile_abrupt": "IQL, expectile 0.7 -> 0.85 at the switch",
    "iql_expectile_linear": "IQL, expectile 0.7 -> 0.85 linearly",
    "awac": "AWAC (same objective)",
    "awac_lambda_abrupt": "AWAC, lambda 1 -> 0.1 at the switch",
    "awac_lambda_linear": "AWAC, lambda 1 -> 0.1 linearly",
    "awac_temperature0": "AWAC, temperature 0 in the critic's target (diagnostic)",
}
FIGURES = {  # file -> (title, groups of variants compared in one panel per task)
    "figure5_o3f_vs_noise.png": (
        "O3F vs the noise baseline (Figure 5)",
        [("o3f_iql", "iql_noise"), ("o3f_iql_n10", "iql_noise"), ("o3f_lapo", "lapo_noise")],
    ),
    "figure6_omega.png": (
        "Uncertainty optimism: omega = 0 vs 1 (Figure 6)",
        [("o3f_iql", "o3f_iql_omega1"), ("o3f_lapo", "o3f_lapo_omega1")],
    ),
    "online_fraction.png": (  # an extension beyond the paper: --online-fraction 0.5 (RLPD's symmetric sampling)
        "O3F vs noise with half of each batch from the online transitions (beyond the paper)",
        [("o3f_iql_f05", "iql_noise_f05")],
    ),
    "figure3_loosening.png": (
        "Loosening the offline objective's conservatism at the switch (Figure 3)",
        [
            ("cql_same_objective", "cql_abrupt", "cql_linear", "cql_to_sac"),
            ("iql_same_objective", "iql_expectile_abrupt", "iql_expectile_linear"),
            ("awac", "awac_lambda_abrupt", "awac_lambda_linear"),
        ],
    ),
}


@dataclass
class Args:
    results_dir: tuple[str, ...] = ("runs/grid",)
    """output directories of lab/run.py; several pool their runs (one study per task: the aggregates across
    tasks), and then need --out-dir"""
    out_dir: str | None = None
    """where to write the PNGs (default, for one results directory: {results_dir}/figures)"""
    reps: int = REPS
    """bootstrap resamples of every confidence interval"""
    shared_models: tuple[str, ...] = ()
    """other studies' folders whose runs fine-tune the same model files: their switch scores are checked against these
    runs' (the switch check table)"""


class DuplicateRun(Exception):
    """Two complete runs of the same variant, task and seed under the folders read."""


def load(results_dir) -> dict:
    """{variant: {env_id: [summary, ...]}} of the complete runs under `results_dir` (one directory, or several whose
    runs are pooled), each preceded by the offline evaluations of the pretraining run whose model it loaded (so
    curves show both sides of the switch)."""
    dirs = [results_dir] if isinstance(results_dir, str) else list(results_dir)
    pretraining = {
        summary["args"]["save_offline"]: summary["evaluations"]
        for summaries in load_pretraining(dirs).values()
        for summary in summaries
        if summary["args"].get("save_offline")
    }
    runs, seen = defaultdict(lambda: defaultdict(list)), {}
    for path in sorted(p for d in dirs for p in glob.glob(os.path.join(d, "*", "*", "seed*", "*", "summary.json"))):
        summary = json.load(open(path))
        variant, env_id = path.split(os.sep)[-5], path.split(os.sep)[-4]
        if summary.get("complete") and variant != "pretrain-runs":
            key = (variant, env_id, summary["args"]["seed"])
            if key in seen:  # a second run of one rule, task and seed would silently stand for the first
                raise DuplicateRun(
                    f"two complete runs of {variant} on {env_id} with seed {key[2]}: {seen[key]} and "
                    f"{os.path.dirname(path)}; keep one (move the other out of the study's folder)"
                )
            seen[key] = os.path.dirname(path)
            before = [
                e
                for e in pretraining.get(summary["args"].get("load_offline"), [])
                if e["step"] < summary["args"]["offline_steps"]
            ]
            runs[variant][env_id].append({**summary, "evaluations": before + summary["evaluations"]})
    return runs


def load_pretraining(results_dir) -> dict:
    """{(algorithm, env_id): [summary, ...]} of the complete pretraining runs under `results_dir` (one directory or
    several): the models lab/run.py made in `pretrain-runs/`, seed by seed."""
    dirs = [results_dir] if isinstance(results_dir, str) else list(results_dir)
    pretraining = defaultdict(list)
    for path in sorted(
        p for d in dirs for p in glob.glob(os.path.join(d, "pretrain-runs", "*", "*", "seed*", "*", "summary.json"))
    ):
        summary = json.load(open(path))
        if summary.get("complete"):
            pretraining[(path.split(os.sep)[-5], path.split(os.sep)[-4])].append(summary)
    return dict(pretraining)


def curve(summary: dict, key: str = "normalized_score"):
    """(steps relative to the switch, values) of one run's evaluations."""
    switch = summary["args"]["offline_steps"]
    points = [(e["step"] - switch, e[key]) for e in summary["evaluations"] if e.get(key) is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)


def iqm(scores: np.ndarray) -> np.ndarray:
    """The interquartile mean of a (runs, tasks) matrix (rliable's aggregate_iqm), as rliable's functions return it."""
    return np.array([metrics.aggregate_iqm(scores)])


def interval_estimates(scores: dict, func, reps: int | None, seed: int):
    """rliable's get_interval_estimates, repeatable: rliable 1.2's stratified bootstraps draw their resamples from
    NumPy's global generator (np.random.choice), not from the random_state they are handed, so the same seed gave
    different CIs from one process to the next. The global generator is seeded here and put back afterwards."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        return rly.get_interval_estimates(scores, func, reps=reps or REPS, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)


def iqm_ci(scores: np.ndarray, reps: int | None = None, seed: int = 0) -> tuple:
    """IQM and 95% stratified-bootstrap CI (runs resampled within each task) of a (runs, tasks) matrix."""
    point, interval = interval_estimates({"x": scores}, iqm, reps, seed)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def mean_ci(scores: np.ndarray, reps: int | None = None, seed: int = 0) -> tuple:
    """The mean over runs and tasks and its 95% stratified-bootstrap CI of a (runs, tasks) matrix."""
    point, cis = interval_estimates({"x": scores}, lambda x: np.array([metrics.aggregate_mean(x)]), reps, seed)
    return float(point["x"][0]), float(cis["x"][0, 0]), float(cis["x"][1, 0])


def profile_ci(scores: np.ndarray, taus: np.ndarray, reps: int | None = None, seed: int = 0) -> tuple:
    """The performance profile of a (runs, tasks) matrix: the fraction of runs scoring above each tau, over tasks,
    with its 95% stratified-bootstrap band (rliable's score distributions)."""
    point, cis = interval_estimates({"x": scores}, lambda x: rly.score_distributions(x, taus), reps, seed)
    return point["x"], cis["x"][0], cis["x"][1]


def improvement_ci(x: np.ndarray, y: np.ndarray, reps: int | None = None, seed: int = 0) -> tuple:
    """P(X > Y): the probability that a run of X scores above a run of Y on the same task (ties count one half),
    averaged over tasks, with its 95% stratified-bootstrap CI; x and y are (runs, tasks) matrices."""
    point, interval = interval_estimates(
        {"x,y": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps, seed
    )
    return float(point["x,y"][0]), float(interval["x,y"][0, 0]), float(interval["x,y"][1, 0])


def paired_difference_ci(d: np.ndarray, reps: int | None = None, seed: int = 0) -> tuple:
    """Mean of paired differences (first - second, one per seed and task: runs fine-tuned from the same pretrained
    model) with its 95% stratified-bootstrap CI (seeds resampled within each task); d is a (seeds, tasks) matrix."""
    point, interval = interval_estimates({"d": d}, lambda x: np.array([x.mean()]), reps, seed)
    return float(point["d"][0]), float(interval["d"][0, 0]), float(interval["d"][1, 0])


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple:
    """The mean of paired differences and its Student-t interval (n - 1 degrees of freedom): with few pairs it is
    wider than the percentile bootstrap's, which underestimates the spread of the mean of 5 values."""
    from scipy import stats

    d = np.asarray(d, dtype=float).ravel()
    if len(d) < 2:
        return float(d.mean()) if len(d) else float("nan"), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


MAX_EXACT_PAIRS = 20  # 2^20 sign patterns; a study's pairs are its seeds


def sign_flip_p(d: np.ndarray) -> float | None:
    """The exact two-sided sign-flip (paired permutation) p-value of "the mean difference is 0": the share of the 2^n
    ways to flip the pairs' signs whose mean is at least as far from 0 as the observed one. With 5 pairs the smallest
    it can be is 2/32 = 0.0625. None above MAX_EXACT_PAIRS pairs."""
    d = np.asarray(d, dtype=float).ravel()
    if not 0 < len(d) <= MAX_EXACT_PAIRS:
        return None
    signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
    means = np.abs(signs @ d) / len(d)
    return float(np.mean(means >= abs(d.mean()) * (1 - 1e-12) - 1e-12))


def paired_matrix(runs: dict, first: str, second: str, tasks: list, at: str) -> np.ndarray:
    """(seeds, tasks): first's score minus second's, for the seeds both ran on every task (`at` as score_matrix)."""
    by_seed = [
        [{s["args"]["seed"]: float(AT[at](*curve(s))) for s in runs[v][task]} for task in tasks]
        for v in (first, second)
    ]
    seeds = sorted(set.intersection(*(set(c) for columns in by_seed for c in columns)))
    return np.array([[by_seed[0][t][seed] - by_seed[1][t][seed] for t in range(len(tasks))] for seed in seeds])


def iqm_curve(summaries: list, key: str = "normalized_score", reps: int | None = None):
    """Per evaluation step (those every seed has): the IQM over seeds and its 95% bootstrap CI."""
    curves = [curve(s, key) for s in summaries]
    common = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
    values = np.array([[dict(zip(x.tolist(), y))[step] for step in common] for x, y in curves])  # (seeds, steps)
    per_step = lambda v: np.array([metrics.aggregate_iqm(v[:, :, t]) for t in range(v.shape[2])])  # noqa: E731
    point, interval = interval_estimates({"x": values[:, None, :]}, per_step, reps, 0)
    return np.array(common), point["x"], interval["x"][0], interval["x"][1]


AT = {  # where a run's score is read, from its evaluations (x: online steps from the switch, y: scores)
    "switch": lambda x, y: y[int(np.argmin(np.abs(x)))],  # the evaluation at the switch
    "end": lambda x, y: y[-1],  # the last: the paper's measure, and this project's primary one
    "mean": lambda x, y: y[x > 0].mean(),  # the mean of the online evaluations: less noisy, the area under the curve
}


def score_matrix(runs: dict, variant: str, env_ids: list, at: str) -> np.ndarray:
    """(seeds, tasks): each run's score at the switch (`at="switch"`), at the end of fine-tuning (`"end"`) or the
    mean of its online evaluations (`"mean"`), over the seeds that every task has."""
    columns = []
    for env_id in env_ids:
        by_seed = {}
        for summary in runs[variant][env_id]:
            by_seed[summary["args"]["seed"]] = float(AT[at](*curve(summary)))
        columns.append(by_seed)
    seeds = sorted(set.intersection(*(set(c) for c in columns)))
    return np.array([[c[seed] for c in columns] for seed in seeds])


def behaviour_curve(summaries: list, grid: np.ndarray):
    """Mean over seeds of the online training episodes' normalised return (the data the agent collected), each
    seed's episodes interpolated onto `grid` (online steps from the switch); None before the first episode ends."""
    curves = []
    for s in summaries:
        episodes = s.get("train_episodes") or []
        if not episodes:
            return None
        x = np.array([e["step"] - s["args"]["offline_steps"] for e in episodes], dtype=float)
        curves.append(np.interp(grid, x, [e["normalized_score"] for e in episodes], left=np.nan))
    return np.mean(curves, 0)


def panel(ax, runs, variants, env_id, key="normalized_score", online_only=True, behaviour=False):
    for variant in variants:
        summaries = runs.get(variant, {}).get(env_id)
        if not summaries:
            continue
        x, mid, low, high = iqm_curve(summaries, key)
        keep = x >= 0 if online_only else np.ones_like(x, bool)
        seeds = f"{len(summaries)} seed{'s' if len(summaries) != 1 else ''}"
        (line,) = ax.plot(x[keep], mid[keep], label=f"{LABELS.get(variant, variant)} ({seeds}, IQM)")
        if len(summaries) >= MIN_SEEDS:
            ax.fill_between(x[keep], low[keep], high[keep], alpha=0.2)  # 95% bootstrap CI
        collected = behaviour_curve(summaries, x[keep].astype(float)) if behaviour else None
        if collected is not None:  # what the agent's own acting scored while it trained, beside its evaluations
            ax.plot(
                x[keep],
                collected,
                ls="--",
                color=line.get_color(),
                label=f"{LABELS.get(variant, variant)}: training episodes",
            )
    ax.set_title(env_id, fontsize=9)
    ax.grid(alpha=0.3)


def draw_comparisons(runs: dict, out_dir: str) -> list:
    written = []
    for filename, (title, groups) in FIGURES.items():
        cells = [
            (group, env_id)
            for group in groups
            for env_id in sorted({e for v in group for e in runs.get(v, {})})
            if sum(bool(runs.get(v, {}).get(env_id)) for v in group) >= 2
        ]
        if not cells:
            continue
        fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), squeeze=False)
        for ax, (group, env_id) in zip(axes[0], cells):
            panel(ax, runs, group, env_id, behaviour=True)
            algorithm = LABELS.get(group[0], group[0]).split(" +")[0].split(" ->")[0].split(" (")[0].split(",")[0]
            ax.set_title(f"{algorithm} on {env_id}", fontsize=9)
            ax.set_xlabel("online environment steps (0 = the switch)")
            ax.set_ylabel("D4RL-normalised score")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)  # off the curves
        entries = max(len(ax.get_legend_handles_labels()[1]) for ax in axes[0])
        fig.set_size_inches(5 * len(cells), 3.4 + 0.13 * entries)  # room for the legends below the panels
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, filename), dpi=120)
        plt.close(fig)
        written.append(filename)
    return written


def draw_switch(runs: dict, out_dir: str) -> list:
    """Figure 2: score, Q bias and critic loss of CQL -> SAC on both sides of the switch."""
    written = []
    for env_id in sorted(runs.get("cql_to_sac", {})):
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
        for ax, (key, label) in zip(
            axes,
            (
                ("normalized_score", "D4RL-normalised score"),
                ("q_bias", "Q bias: Q(s, a) - discounted return"),
                ("critic_loss", "critic TD loss"),
            ),
        ):
            panel(ax, runs, ["cql_to_sac"], env_id, key, online_only=False)
            ax.axvline(0, color="k", lw=0.8, ls="--")
            ax.set_xlabel("environment steps from the switch (left: offline updates)")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"CQL -> SAC across the switch (Figure 2), {env_id}")
        fig.tight_layout()
        filename = f"figure2_cql_to_sac_{env_id}.png"
        fig.savefig(os.path.join(out_dir, filename), dpi=120)
        plt.close(fig)
        written.append(filename)
    return written


def draw_pretraining(pretraining: dict, out_dir: str) -> list:
    """The models' offline evaluations along pretraining, one line per seed and one panel per task: how good the
    policy each fine-tuning starts from is, and, on the mazes, whether it already succeeds too often to need exploring
    (their gates: success in % is their normalised score)."""
    if not pretraining:
        return []
    fig, axes = plt.subplots(1, len(pretraining), figsize=(5 * len(pretraining), 3.6), squeeze=False)
    for ax, ((algorithm, env_id), summaries) in zip(axes[0], sorted(pretraining.items())):
        for summary in sorted(summaries, key=lambda s: s["args"]["seed"]):
            offline = [e for e in summary["evaluations"] if e.get("phase", "offline") == "offline"]
            steps = [e["step"] for e in offline if e.get("normalized_score") is not None]
            scores = [e["normalized_score"] for e in offline if e.get("normalized_score") is not None]
            ax.plot(steps, scores, marker=".", label=f"seed {summary['args']['seed']}")
        episodes = sorted({str(s["args"].get("eval_episodes")) for s in summaries})
        ax.set_title(f"{algorithm.upper()} pretraining on {env_id}", fontsize=9)
        ax.set_xlabel(f"offline updates ({'/'.join(episodes)} evaluation episodes a point)", fontsize=8)
        ax.set_ylabel("D4RL-normalised score (mazes: success %)", fontsize=8)
        ax.legend(fontsize=7, title="models pretrained in this study", title_fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "pretraining.png"), dpi=120)
    plt.close(fig)
    return ["pretraining.png"]


def wall_clock(summaries: list) -> str:
    """Median wall-clock hours of the fine-tuning runs, from summary.json's `wall_s`; "-" where a run has none, and
    ">=" where some were counted only from a resumption (runs from before `wall_s` was recorded)."""
    if not summaries or any("wall_s" not in s for s in summaries):
        return "-"
    partial = any(s.get("wall_s_since_step", 0) > s["args"]["offline_steps"] for s in summaries)
    return f"{'>=' if partial else ''}{np.median([s['wall_s'] for s in summaries]) / 3600:.2f}"


def statistics(runs: dict) -> dict:
    """Everything the tables say, machine-readable: per variant and task the seeds, each seed's scores and the IQM
    [95% CI] at the switch, at the end and of the mean over fine-tuning; per comparison P(first > second) [95% CI]
    and the paired difference by seed [95% CI] at the end and of the mean, over the tasks both ran."""

    def estimate(scores):
        point, low, high = iqm_ci(scores)
        mean, mean_low, mean_high = mean_ci(scores)
        enough = len(scores) >= MIN_SEEDS
        return {
            "iqm": point,
            "ci": [low, high] if enough else None,
            "mean": mean,
            "mean_ci": [mean_low, mean_high] if enough else None,
            "seeds": len(scores),
        }

    variants = []
    for variant in runs:
        for env_id, summaries in sorted(runs[variant].items()):
            scores = {at: score_matrix(runs, variant, [env_id], at) for at in AT}
            variants.append(
                {
                    "variant": variant,
                    "label": LABELS.get(variant, variant),
                    "task": env_id,
                    "seeds": sorted(s["args"]["seed"] for s in summaries),
                    "eval_episodes": sorted({s["args"].get("eval_episodes", "?") for s in summaries}, key=str),
                    "hours_per_run": wall_clock(summaries),
                    **{at: {**estimate(m), "per_seed": m[:, 0].tolist()} for at, m in scores.items()},
                }
            )
    pairs = []
    for first, second, tasks in comparisons(runs):
        pair = {"first": first, "second": second, "tasks": tasks}
        for at in ("end", "mean"):
            x, y = score_matrix(runs, first, tasks, at), score_matrix(runs, second, tasks, at)
            p, low, high = improvement_ci(x, y)
            d = paired_matrix(runs, first, second, tasks, at)
            diff, d_low, d_high = paired_difference_ci(d) if d.size else (float("nan"),) * 3
            _, t_low, t_high = t_interval(d)
            enough = len(d) >= MIN_SEEDS
            paired = {
                "pairs": int(d.size),
                "mean": diff,
                "ci": [d_low, d_high] if enough else None,
                "t_ci": [t_low, t_high] if len(d) >= 2 else None,
                "sign_flip_p": sign_flip_p(d),
                "first_higher": int((d > 0).sum()),
                "per_seed": d[:, 0].tolist() if d.size else [],
            }
            p_ci = [low, high] if min(len(x), len(y)) >= MIN_SEEDS else None
            pair |= {
                "seeds": [len(x), len(y)],
                at: {"first": estimate(x), "second": estimate(y), "p": p, "p_ci": p_ci, "paired": paired},
            }
        pairs.append(pair)
    return {
        "statistics": "per task: IQM over seeds, 95% stratified-bootstrap CIs (rliable); paired differences with the "
        "95% Student-t interval and the exact sign-flip p-value beside the bootstrap's; across tasks: P(first > "
        "second) averaged over tasks",
        "reps": REPS,
        "variants": variants,
        "comparisons": pairs,
        "across_tasks": across_tasks(runs),
    }


def interval(bounds: list | None, fmt: str) -> str:
    """A 95% CI as the tables print it, or why there is none."""
    return f"[{bounds[0]:{fmt}}, {bounds[1]:{fmt}}]" if bounds else f"[no CI: < {MIN_SEEDS} seeds]"


def ci(x: dict) -> str:
    return f"{x['iqm']:.1f} {interval(x['ci'], '.1f')}"


def table(stats: dict) -> str:
    """Every variant and task: IQM over seeds [95% CI] at the switch, at the end of fine-tuning (the paper's measure)
    and of the mean over fine-tuning's evaluations."""
    lines = [
        "| variant | task | seeds | eval. episodes | at the switch: IQM [95% CI] "
        "| end of fine-tuning: IQM [95% CI] | change | mean over fine-tuning: IQM [95% CI] | hours per run (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in stats["variants"]:
        lines.append(
            f"| {v['label']} | {v['task']} | {len(v['seeds'])} | {', '.join(map(str, v['eval_episodes']))} "
            f"| {ci(v['switch'])} | {ci(v['end'])} | {v['end']['iqm'] - v['switch']['iqm']:+.1f} | {ci(v['mean'])} "
            f"| {v['hours_per_run']} |"
        )
    return "\n".join(lines)


def shared_tasks(runs: dict) -> list:
    """(first, second, tasks) of every pair a figure compares (a variant against its baseline), where both ran."""
    pairs = []
    for _, groups in FIGURES.values():
        for group in groups:
            for other in group[1:]:
                tasks = sorted(set(runs.get(group[0], {})) & set(runs.get(other, {})))
                if tasks:
                    pairs.append((group[0], other, tasks))
    return pairs


def comparisons(runs: dict) -> list:
    """(first, second, [task]) of every pair a figure compares, one task at a time: scores of different tasks have
    different scales (a maze's success rate, HalfCheetah's return), so no IQM, mean or difference pools them."""
    return [(first, second, [task]) for first, second, tasks in shared_tasks(runs) for task in tasks]


def across_tasks(runs: dict) -> list:
    """For each pair run on several tasks, the scale-free summary: P(first > second) on one task, averaged over the
    tasks (rliable's probability of improvement), with its 95% stratified-bootstrap CI, at the end and over
    fine-tuning, and how many tasks' paired mean favours the first."""
    rows = []
    for first, second, tasks in shared_tasks(runs):
        if len(tasks) < 2:
            continue
        row = {"first": first, "second": second, "tasks": tasks}
        for at in ("end", "mean"):
            x, y = score_matrix(runs, first, tasks, at), score_matrix(runs, second, tasks, at)
            p, low, high = improvement_ci(x, y)
            d = paired_matrix(runs, first, second, tasks, at)
            row[at] = {
                "p": p,
                "p_ci": [low, high] if min(len(x), len(y)) >= MIN_SEEDS else None,
                "tasks_favouring_first": int((d.mean(0) > 0).sum()),
            }
        rows.append(row)
    return rows


def improvement_table(stats: dict) -> str:
    """Each comparison over the tasks both ran: P(first > second) [95% CI] at the end of fine-tuning, and of the
    mean over fine-tuning."""
    lines = [
        "| comparison | tasks | seeds | end of fine-tuning: IQM [95% CI] of each | P(first > second) [95% CI] "
        "| mean over fine-tuning: IQM of each | P(first > second) [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in stats["comparisons"]:
        end, mean, first, second = (
            c["end"],
            c["mean"],
            LABELS.get(c["first"], c["first"]),
            LABELS.get(c["second"], c["second"]),
        )
        lines.append(
            f"| {first} vs {second} | {', '.join(c['tasks'])} "
            f"| {c['seeds'][0]}, {c['seeds'][1]} | {ci(end['first'])} vs {ci(end['second'])} "
            f"| {end['p']:.2f} {interval(end['p_ci'], '.2f')} "
            f"| {mean['first']['iqm']:.1f} vs {mean['second']['iqm']:.1f} "
            f"| {mean['p']:.2f} {interval(mean['p_ci'], '.2f')} |"
        )
    return "\n".join(lines)


def across_tasks_table(stats: dict) -> str:
    """Each pair run on several tasks: P(first > second) averaged over the tasks [95% CI], at the end of fine-tuning
    and over it, and on how many tasks the paired mean favours the first (scores of different tasks never pooled)."""
    if not stats["across_tasks"]:
        return ""
    lines = [
        "| comparison, across tasks | tasks | end: P(first > second) averaged over tasks [95% CI] | tasks favouring "
        "the first | over fine-tuning: P(first > second) [95% CI] | tasks favouring the first |",
        "|---|---|---|---|---|---|",
    ]
    for c in stats["across_tasks"]:
        first, second = LABELS.get(c["first"], c["first"]), LABELS.get(c["second"], c["second"])
        cells = [
            f"{c[at]['p']:.2f} {interval(c[at]['p_ci'], '.2f')} | {c[at]['tasks_favouring_first']} of {len(c['tasks'])}"
            for at in ("end", "mean")
        ]
        lines.append(f"| {first} vs {second} | {', '.join(c['tasks'])} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def t_ci(paired: dict) -> str:
    return f"[{paired['t_ci'][0]:+.2f}, {paired['t_ci'][1]:+.2f}]" if paired["t_ci"] else "[no interval: 1 pair]"


def p_value(p: float | None) -> str:
    return "-" if p is None else f"{p:.4f}"


def paired_table(stats: dict) -> str:
    """Each comparison on one task, paired by seed (both runs of a seed start from the same pretrained model): the mean
    of first minus second with its 95% t-interval and its stratified-bootstrap interval, the exact sign-flip p-value,
    at the end of fine-tuning and of the mean over fine-tuning, and in how many pairs the first was higher."""
    lines = [
        "| comparison, paired by seed | task | pairs | end of fine-tuning: first - second, t-interval; bootstrap "
        "| sign-flip p | first higher in | mean over fine-tuning: first - second, t-interval; bootstrap | sign-flip p "
        "| first higher in |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in stats["comparisons"]:
        end, mean = c["end"]["paired"], c["mean"]["paired"]
        if not end["pairs"]:
            continue
        first, second = LABELS.get(c["first"], c["first"]), LABELS.get(c["second"], c["second"])
        cells = [
            f"{x['mean']:+.2f} {t_ci(x)}; {interval(x['ci'], '+.2f')} | {p_value(x['sign_flip_p'])} "
            f"| {x['first_higher']} of {x['pairs']}"
            for x in (end, mean)
        ]
        lines.append(f"| {first} vs {second} | {', '.join(c['tasks'])} | {end['pairs']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def per_run_table(runs: dict) -> str:
    """Every run, by task and seed: its score at the switch, at the end and the mean over fine-tuning, the mean
    normalised return of its training episodes (the data it collected) and its wall-clock hours. Runs of one seed
    that loaded the same model file score the same at the switch when they ran on one machine (evaluations are
    deterministic there; across machines, float rounding can differ, and HalfCheetah's dynamics amplify it): where
    they do not, the row says so, for a reader to check that they started from the same model."""
    lines = [
        "| task | seed | variant | at the switch | end of fine-tuning | mean over fine-tuning "
        "| training episodes: mean (count) | hours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tasks = sorted({task for variant in runs for task in runs[variant]})
    for task in tasks:
        by_seed = defaultdict(list)
        for variant in runs:
            for summary in runs[variant].get(task, []):
                by_seed[summary["args"]["seed"]].append((variant, summary))
        for seed in sorted(by_seed):
            switch_by_model = defaultdict(set)
            for _, s in by_seed[seed]:
                switch_by_model[s["args"].get("load_offline")].add(round(float(AT["switch"](*curve(s))), 6))
            for variant, s in by_seed[seed]:
                switch, end, mean = (float(AT[at](*curve(s))) for at in ("switch", "end", "mean"))
                model = s["args"].get("load_offline")
                flag = (
                    " (differs from another run of this model file)"
                    if model and len(switch_by_model[model]) > 1
                    else ""
                )
                episodes = [e["normalized_score"] for e in s.get("train_episodes") or []]
                behaviour = f"{np.mean(episodes):.1f} ({len(episodes)})" if episodes else "-"
                hours = f"{s['wall_s'] / 3600:.2f}" if "wall_s" in s else "-"
                if s.get("wall_s_since_step", 0) > s["args"]["offline_steps"] and "wall_s" in s:
                    hours = ">=" + hours  # counted only from a resumption
                lines.append(
                    f"| {task} | {seed} | {LABELS.get(variant, variant)} | {switch:.1f}{flag} | {end:.1f} | {mean:.1f} "
                    f"| {behaviour} | {hours} |"
                )
    return "\n".join(lines)


def switch_table(runs: dict, shared: tuple = ()) -> str:
    """The switch check: runs that loaded the same model file score the same at the switch when they ran on one machine
    (evaluations are deterministic there; across machines float rounding can differ, and HalfCheetah amplifies it).
    Checked over the runs read and those of the `shared` folders (other studies fine-tuning the same models); each
    model file whose runs disagree is listed with every run's score and folder."""
    by_model = defaultdict(list)
    for group in (runs, *(load(folder) for folder in shared)):
        for variant in group:
            for summaries in group[variant].values():
                for s in summaries:
                    if s["args"].get("load_offline"):
                        where = os.sep.join(s["args"]["output_dir"].split(os.sep)[-4:])
                        by_model[s["args"]["load_offline"]].append((float(AT["switch"](*curve(s))), where))
    differ = {model: rows for model, rows in by_model.items() if len({round(x, 6) for x, _ in rows}) > 1}
    count = sum(map(len, by_model.values()))
    if not differ:
        return f"Switch check: the {count} runs of {len(by_model)} model files agree at the switch, model by model."
    lines = [
        f"Switch check: {len(differ)} of {len(by_model)} model files' runs disagree at the switch (another machine, or "
        "another model under the same name):",
        "",
        "| model file | switch scores: run (folder) |",
        "|---|---|",
    ]
    for model, rows in sorted(differ.items()):
        cells = "; ".join(f"{x:.2f} ({where})" for x, where in sorted(rows, key=lambda r: r[1]))
        lines.append(f"| {os.path.basename(model)} | {cells} |")
    return "\n".join(lines)


def draw_aggregate(runs: dict, out_dir: str) -> list:
    """One panel per comparison: each variant's IQM at the end of fine-tuning over seeds and tasks, with its 95% CI,
    and the probability of improvement."""
    pairs = comparisons(runs)
    if not pairs:
        return []
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    for ax, (first, second, tasks) in zip(axes.flat, pairs):
        scores = [score_matrix(runs, variant, tasks, "end") for variant in (first, second)]
        enough = min(len(x) for x in scores) >= MIN_SEEDS
        for row, x in enumerate(scores):
            mid, low, high = iqm_ci(x)
            xerr = [[mid - low], [high - mid]] if len(x) >= MIN_SEEDS else None
            ax.errorbar(mid, row, xerr=xerr, fmt="o", capsize=4, color=f"C{row}")
        p = improvement_ci(*scores)
        ax.set_yticks([0, 1], [LABELS.get(first, first), LABELS.get(second, second)], fontsize=8)
        ax.set_ylim(-0.6, 1.6)
        ax.set_xlabel("IQM of the D4RL-normalised score at the end, 95% CI", fontsize=8)
        p_interval = interval(list(p[1:]) if enough else None, ".2f")
        ax.set_title(f"{tasks[0]}; P(first > second) = {p[0]:.2f} {p_interval}", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "aggregate.png"), dpi=120)
    plt.close(fig)
    return ["aggregate.png"]


def draw_profiles(runs: dict, out_dir: str) -> list:
    """Performance profiles of each comparison over the tasks both ran (Agarwal et al., 2021): the fraction of runs
    whose normalised score exceeds tau, with 95% bands, at the end of fine-tuning and of the mean over it."""
    pairs = comparisons(runs)
    if not pairs:
        return []
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3 * len(pairs)), squeeze=False)
    for row, (first, second, tasks) in enumerate(pairs):
        for ax, at in zip(axes[row], ("end", "mean")):
            scores = [score_matrix(runs, variant, tasks, at) for variant in (first, second)]
            taus = np.linspace(min(x.min() for x in scores) - 1, max(x.max() for x in scores) + 1, 101)
            for colour, (variant, x) in enumerate(zip((first, second), scores)):
                profile, low, high = profile_ci(x, taus)
                ax.plot(taus, profile, color=f"C{colour}", label=f"{LABELS.get(variant, variant)} ({len(x)} seeds)")
                if len(x) >= MIN_SEEDS:
                    ax.fill_between(taus, low, high, color=f"C{colour}", alpha=0.2)
            what = "at the end of fine-tuning" if at == "end" else "mean over fine-tuning"
            ax.set_title(f"{tasks[0]}, {what}", fontsize=9)
            ax.set_xlabel("D4RL-normalised score tau", fontsize=8)
            ax.set_ylabel("fraction of runs > tau", fontsize=8)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "profiles.png"), dpi=120)
    plt.close(fig)
    return ["profiles.png"]


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.reps < 100:
        print(f"error: --reps {args.reps}: at least 100 resamples are needed for a 95% interval", file=sys.stderr)
        raise SystemExit(2)
    REPS = args.reps
    if len(args.results_dir) > 1 and not args.out_dir:
        print(
            "error: several --results-dir directories need --out-dir (where their pooled figures go)", file=sys.stderr
        )
        raise SystemExit(2)
    try:
        runs = load(args.results_dir)
        for folder in args.shared_models:  # their duplicates refused here too, before any figure
            load(folder)
    except DuplicateRun as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    pretraining = load_pretraining(args.results_dir) if len(args.results_dir) == 1 else {}  # pooled: per study
    if not runs and not pretraining:
        print(
            f"error: no complete runs under {' '.join(args.results_dir)} "
            "(expected {variant}/{env_id}/seed{n}/*/summary.json, or pretrain-runs/ of lab/run.py)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    out_dir = args.out_dir or os.path.join(args.results_dir[0], "figures")
    os.makedirs(out_dir, exist_ok=True)
    for filename in draw_pretraining(pretraining, out_dir):
        print(os.path.join(out_dir, filename))
    if not runs:  # a study that has only pretrained so far (a maze whose gate failed): its models' curves alone
        raise SystemExit(0)
    drawn = draw_comparisons(runs, out_dir) + draw_switch(runs, out_dir) + draw_aggregate(runs, out_dir)
    for filename in drawn + draw_profiles(runs, out_dir):
        print(os.path.join(out_dir, filename))
    stats = statistics(runs)
    parts = [table(stats), improvement_table(stats), paired_table(stats), across_tasks_table(stats)]
    parts += [per_run_table(runs), switch_table(runs, args.shared_models)]
    tables = "\n\n".join(part for part in parts if part)
    with open(os.path.join(out_dir, "statistics.json"), "w") as f:
        json.dump(stats, f, indent=1)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write(tables + "\n")
    print(os.path.join(out_dir, "statistics.json"))
    print(os.path.join(out_dir, "tables.md"))
    print(tables)
