"""lab/plot.py's statistics at five seeds: the paired t-interval, the exact sign-flip p-value, a duplicate run
refused, and the switch check across studies that share models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "lab"))
import plot  # noqa: E402


def test_the_paired_t_interval_is_students_with_n_minus_1_degrees_of_freedom():
    d = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    mean, low, high = plot.t_interval(d)
    # by hand: mean 3.2, sample sd sqrt(14.8 / 4) = 1.9235, t(0.975, 4) = 2.776445; half width t * sd / sqrt 5
    half = 2.7764451051977987 * np.sqrt(14.8 / 4) / np.sqrt(5)
    assert mean == pytest.approx(3.2) and low == pytest.approx(3.2 - half) and high == pytest.approx(3.2 + half)
    assert low == pytest.approx(0.8117, abs=1e-4)
    single = plot.t_interval(np.array([2.0]))
    assert single[0] == 2.0 and np.isnan(single[1]) and np.isnan(single[2])


def test_the_sign_flip_p_value_is_exact_over_all_sign_patterns():
    # five pairs of one sign: only all-plus and all-minus reach the observed |mean|: 2 of 32
    assert plot.sign_flip_p(np.array([0.5, 1.0, 2.0, 0.1, 3.0])) == pytest.approx(2 / 32)
    # by hand, d = (1, 2, 3, 4, -5): observed |mean| 1; the 32 patterns' |sums| >= 5 are counted
    d = np.array([1.0, 2.0, 3.0, 4.0, -5.0])
    sums = [
        abs(sum(s * x for s, x in zip(signs, d))) for signs in np.array(np.meshgrid(*[[1, -1]] * 5)).T.reshape(-1, 5)
    ]
    assert plot.sign_flip_p(d) == pytest.approx(np.mean(np.array(sums) >= 5 - 1e-9))
    assert plot.sign_flip_p(np.array([0.0, 0.0, 0.0])) == 1.0  # no difference: every pattern as extreme
    assert plot.sign_flip_p(np.ones(plot.MAX_EXACT_PAIRS + 1)) is None


def summary(seed: int, scores: list, model: str, output_dir: str) -> dict:
    """A complete run's summary.json: its evaluations at the switch (step 100) and every 50 steps after."""
    evaluations = [
        {"step": 100 + 50 * i, "phase": "online" if i else "offline", "normalized_score": x}
        for i, x in enumerate(scores)
    ]
    args = {"offline_steps": 100, "seed": seed, "eval_episodes": 10, "load_offline": model, "output_dir": output_dir}
    return {"args": args, "evaluations": evaluations, "complete": True, "final_normalized_score": scores[-1]}


def write(study, variant: str, seed: int, run: str, content: dict):
    folder = study / variant / "task" / f"seed{seed}" / run
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(content))


def plot_command(*args) -> list:
    return [sys.executable, os.path.join(ROOT, "lab", "plot.py"), *map(str, args), "--reps", "200"]


def test_a_duplicate_run_stops_the_plotter_with_one_line(tmp_path):
    study = tmp_path / "study"
    for seed in (1, 2, 3):
        for variant in ("o3f_iql", "iql_noise"):
            write(study, variant, seed, "run", summary(seed, [30, 31, 32], f"m{seed}.pt", f"/x/study/{variant}"))
    write(study, "iql_noise", 2, "again", summary(2, [30, 35, 36], "m2.pt", "/x/study/iql_noise"))
    result = subprocess.run(plot_command("--results-dir", study), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: two complete runs of iql_noise on task with seed 2: ")
    assert "Traceback" not in result.stderr and not (study / "figures").exists()


def test_the_paired_table_and_the_switch_check_across_studies(tmp_path):
    study, other = tmp_path / "study", tmp_path / "other"
    differences = {1: 1.0, 2: 2.0, 3: 0.5, 4: 1.5, 5: 3.0}
    for seed, d in differences.items():
        model = f"/models/m{seed}.pt"
        write(
            study, "o3f_iql", seed, "run", summary(seed, [30, 31, 32 + d], model, f"/x/study/o3f_iql/task/seed{seed}")
        )
        write(
            study, "iql_noise", seed, "run", summary(seed, [30, 31, 32], model, f"/x/study/iql_noise/task/seed{seed}")
        )
        switch = 30.4 if seed == 4 else 30  # seed 4's model scored otherwise at the switch in the other study
        write(
            other, "o3f_iql_f05", seed, "run", summary(seed, [switch, 33, 34], model, f"/y/other/f05/task/seed{seed}")
        )
    result = subprocess.run(
        plot_command("--results-dir", study, "--shared-models", other), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((study / "figures" / "statistics.json").read_text())
    (pair,) = [c for c in stats["comparisons"] if c["first"] == "o3f_iql"]
    paired = pair["end"]["paired"]
    mean, low, high = plot.t_interval(np.array(list(differences.values())))
    assert paired["mean"] == pytest.approx(1.6) and paired["t_ci"] == pytest.approx([low, high])
    assert paired["sign_flip_p"] == pytest.approx(0.0625) and paired["first_higher"] == 5
    assert paired["ci"][0] >= 0.5 and paired["ci"][1] <= 3.0  # the bootstrap's, inside the pairs' range
    tables = (study / "figures" / "tables.md").read_text()
    assert f"| +1.60 [{low:+.2f}, {high:+.2f}]; [" in tables and "| 0.0625 | 5 of 5 |" in tables
    assert "Switch check: 1 of 5 model files' runs disagree at the switch" in tables
    assert (
        "| m4.pt | 30.40 (other/f05/task/seed4); 30.00 (study/iql_noise/task/seed4); 30.00 (study/o3f_iql/task/seed4) |"
        in tables
    )
    alone = subprocess.run(plot_command("--results-dir", study), capture_output=True, text=True, timeout=120)
    assert "Switch check: the 10 runs of 5 model files agree at the switch, model by model." in alone.stdout
