"""Draw the paper's figures from the summary.json files that benchmarks/run.py leaves, and print a table.

    python benchmarks/plot.py --results-dir results

Figure 5: O3F vs the noise baseline; Figure 6: omega 0 vs 1; Figure 2: CQL -> SAC across the switch
(score, Q bias, critic loss); Figure 3: CQL's online objectives. Each panel shows the mean over seeds
with a band of one standard deviation, against online environment steps (0 is the switch). A figure
is drawn when its runs exist; the table lists every variant's score at the switch and at the end.
"""
import glob
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

LABELS = {"o3f_iql": "IQL + O3F", "iql_noise": "IQL + noise", "o3f_iql_omega1": "IQL + O3F (omega = 1)",
          "o3f_lapo": "LAPO + O3F", "lapo_noise": "LAPO + noise", "o3f_lapo_omega1": "LAPO + O3F (omega = 1)",
          "cql_to_sac": "CQL -> SAC (objective switch)", "cql_same_objective": "CQL -> CQL (same objective)",
          "cql_linear": "CQL, threshold 5 -> 0.5 linearly", "cql_abrupt": "CQL, threshold 5 -> 0.5 at the switch"}
FIGURES = {  # file -> (title, groups of variants compared in one panel per task)
    "figure5_o3f_vs_noise.png": ("O3F vs the noise baseline (Figure 5)", [("o3f_iql", "iql_noise"), ("o3f_lapo", "lapo_noise")]),
    "figure6_omega.png": ("Uncertainty optimism: omega = 0 vs 1 (Figure 6)", [("o3f_iql", "o3f_iql_omega1"), ("o3f_lapo", "o3f_lapo_omega1")]),
    "figure3_cql_objectives.png": ("CQL's online objective (Figure 3)", [("cql_to_sac", "cql_same_objective", "cql_linear", "cql_abrupt")]),
}


@dataclass
class Args:
    results_dir: str = "results"
    """the output directory of benchmarks/run.py"""
    out_dir: Optional[str] = None
    """where to write the PNGs (default: {results_dir}/figures)"""


def load(results_dir: str) -> dict:
    """{variant: {env_id: [summary, ...]}} of the complete runs, each preceded by the offline evaluations of
    the pretraining run whose model it loaded (so curves show both sides of the switch)."""
    pretraining = {}
    for path in glob.glob(os.path.join(results_dir, "pretrain-runs", "*", "*", "seed*", "*", "summary.json")):
        summary = json.load(open(path))
        if summary.get("complete") and summary["args"].get("save_offline"):
            pretraining[summary["args"]["save_offline"]] = summary["evaluations"]
    runs = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*", "seed*", "*", "summary.json"))):
        summary = json.load(open(path))
        variant, env_id = path.split(os.sep)[-5], path.split(os.sep)[-4]
        if summary.get("complete") and variant != "pretrain-runs":
            before = [e for e in pretraining.get(summary["args"].get("load_offline"), []) if e["step"] < summary["args"]["offline_steps"]]
            runs[variant][env_id].append({**summary, "evaluations": before + summary["evaluations"]})
    return runs


def curve(summary: dict, key: str = "normalized_score"):
    """(steps relative to the switch, values) of one run's evaluations."""
    switch = summary["args"]["offline_steps"]
    points = [(e["step"] - switch, e[key]) for e in summary["evaluations"] if e.get(key) is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)


def mean_band(summaries: list, key: str = "normalized_score"):
    """Mean and standard deviation over seeds at the steps every seed evaluated."""
    curves = [curve(s, key) for s in summaries]
    common = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
    values = np.array([[dict(zip(x.tolist(), y))[step] for step in common] for x, y in curves])
    return np.array(common), values.mean(0), values.std(0)


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
        x, mean, std = mean_band(summaries, key)
        keep = x >= 0 if online_only else np.ones_like(x, bool)
        line, = ax.plot(x[keep], mean[keep], label=f"{LABELS.get(variant, variant)} ({len(summaries)} seeds)")
        ax.fill_between(x[keep], (mean - std)[keep], (mean + std)[keep], alpha=0.2)
        collected = behaviour_curve(summaries, x[keep].astype(float)) if behaviour else None
        if collected is not None:  # what the agent's own acting scored while it trained, beside its evaluations
            ax.plot(x[keep], collected, ls="--", color=line.get_color(), label=f"{LABELS.get(variant, variant)}: training episodes")
    ax.set_title(env_id, fontsize=9)
    ax.grid(alpha=0.3)


def draw_comparisons(runs: dict, out_dir: str) -> list:
    written = []
    for filename, (title, groups) in FIGURES.items():
        cells = [(group, env_id) for group in groups for env_id in sorted({e for v in group for e in runs.get(v, {})})
                 if sum(bool(runs.get(v, {}).get(env_id)) for v in group) >= 2]
        if not cells:
            continue
        fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), squeeze=False)
        for ax, (group, env_id) in zip(axes[0], cells):
            panel(ax, runs, group, env_id, behaviour=True)
            ax.set_title(f"{LABELS.get(group[0], group[0]).split(' +')[0].split(' ->')[0]} on {env_id}", fontsize=9)
            ax.set_xlabel("online environment steps (0 = the switch)")
            ax.set_ylabel("D4RL-normalised score")
            ax.legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, filename), dpi=120)
        plt.close(fig)
        written.append(filename)
    return written


def draw_switch(runs: dict, out_dir: str) -> list:
    """Figure 2: score, Q bias and critic loss of CQL -> SAC on both sides of the switch."""
    written = []
    for env_id, summaries in sorted(runs.get("cql_to_sac", {}).items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
        for ax, (key, label) in zip(axes, (("normalized_score", "D4RL-normalised score"),
                                           ("q_bias", "Q bias: Q(s, a) - discounted return"), ("critic_loss", "critic TD loss"))):
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


def table(runs: dict) -> str:
    lines = ["| variant | task | seeds | at the switch | end of fine-tuning | change |", "|---|---|---|---|---|---|"]
    for variant in runs:
        for env_id, summaries in sorted(runs[variant].items()):
            x, mean, std = mean_band(summaries)
            start, end = int(np.argmin(np.abs(x))), len(x) - 1
            lines.append(f"| {LABELS.get(variant, variant)} | {env_id} | {len(summaries)} | {mean[start]:.1f} ± {std[start]:.1f} "
                         f"| {mean[end]:.1f} ± {std[end]:.1f} | {mean[end] - mean[start]:+.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = tyro.cli(Args)
    runs = load(args.results_dir)
    if not runs:
        print(f"error: no complete runs under {args.results_dir} (expected {{variant}}/{{env_id}}/seed{{n}}/*/summary.json)", file=sys.stderr)
        raise SystemExit(2)
    out_dir = args.out_dir or os.path.join(args.results_dir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    for filename in draw_comparisons(runs, out_dir) + draw_switch(runs, out_dir):
        print(os.path.join(out_dir, filename))
    print(table(runs))
