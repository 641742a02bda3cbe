"""lab/run.py (the experiment grid) and lab/plot.py (the paper's figures)."""

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT

TINY = "--eval-freq 25 --eval-episodes 1 --batch-size 32 --log-freq 25"


def grid(out, data_dir, small_dataset, *flags):
    command = [
        sys.executable,
        os.path.join(ROOT, "lab", "run.py"),
        "--variants",
        "o3f_iql",
        "iql_noise",
        "--offline-steps",
        "50",
        "--online-steps",
        "50",
        "--output-dir",
        str(out),
        f"--extra={TINY} --dataset-path {small_dataset} --no-cuda",
        *flags,
    ]
    env = {**os.environ, "O3F_DATA_DIR": data_dir}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@contextlib.contextmanager
def working_in(*run_dirs):
    """Processes that look like runs working in `run_dirs` (`--output-dir` on their command lines), while inside."""
    workers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--output-dir", str(d)])
        for d in run_dirs
    ]
    try:
        for worker in workers:
            deadline = time.time() + 10
            while b"--output-dir" not in open(f"/proc/{worker.pid}/cmdline", "rb").read() and time.time() < deadline:
                time.sleep(0.05)  # until its command line is visible
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def summaries(out, variant):
    return [json.load(open(p)) for p in sorted(glob.glob(str(out / variant / "*" / "seed*" / "*" / "summary.json")))]


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory, data_dir, small_dataset):
    out = tmp_path_factory.mktemp("grid")
    result = grid(out, data_dir, small_dataset, "--seeds", "1", "2")
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    return out, result.stdout


def test_the_grid_runs_every_variant_and_seed(two_by_two):
    out, stdout = two_by_two
    assert "2 pretraining and 4 fine-tuning runs to do" in stdout
    for variant in ("o3f_iql", "iql_noise"):
        runs = summaries(out, variant)
        assert len(runs) == 2 and all(s["complete"] for s in runs)
        assert sorted(s["args"]["seed"] for s in runs) == [1, 2]


def test_pretraining_happens_once_per_seed_and_is_shared(two_by_two):
    out, _ = two_by_two
    assert sorted(os.listdir(out / "pretrained")) == [f"iql__embedded-halfcheetah-medium__seed{s}.pt" for s in (1, 2)]
    assert len(glob.glob(str(out / "pretrain-runs" / "iql" / "*" / "seed*" / "*"))) == 2
    o3f, noise = summaries(out, "o3f_iql"), summaries(out, "iql_noise")
    for a, b in zip(o3f, noise):  # both variants start from the very same pretrained model
        assert a["evaluations"][0]["normalized_score"] == b["evaluations"][0]["normalized_score"]


def test_a_second_invocation_skips_finished_runs(two_by_two, data_dir, small_dataset):
    out, _ = two_by_two
    models = {p: os.path.getmtime(p) for p in glob.glob(str(out / "pretrained" / "*.pt"))}
    result = grid(out, data_dir, small_dataset, "--seeds", "1", "2")
    assert result.returncode == 0 and "0 pretraining and 0 fine-tuning runs to do" in result.stdout
    assert {p: os.path.getmtime(p) for p in models} == models


def test_the_same_runs_go_through_a_local_ray_instance(tmp_path, data_dir, small_dataset):
    pytest.importorskip("ray")
    result = grid(tmp_path, data_dir, small_dataset, "--seeds", "3", "--ray-address", "local")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(summaries(tmp_path, "o3f_iql")) == len(summaries(tmp_path, "iql_noise")) == 1


def fake_summary(variant, seed, scores, q_bias=None, switch=100):
    evaluations = [
        {
            "step": switch + 50 * (i - 1),
            "phase": "offline" if i <= 1 else "online",
            "normalized_score": s,
            "return": 10.0 * s,
            "q_bias": None if q_bias is None else q_bias[i],
            "critic_loss": 1.0 + i,
        }
        for i, s in enumerate(scores)
    ]
    return {
        "args": {"offline_steps": switch, "seed": seed, "eval_episodes": 5},
        "run_name": f"{variant}-{seed}",
        "evaluations": evaluations,
        "complete": True,
    }


def write_fake(results, variant, seed, summary, env_id="embedded-halfcheetah-medium"):
    path = results / variant / env_id / f"seed{seed}" / "run"
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))


def test_the_plotter_draws_the_paper_figures_and_a_table(tmp_path):
    results = tmp_path / "results"
    for seed, offset in ((1, 0.0), (2, 2.0)):
        timed = fake_summary("o3f_iql", seed, [10, 20 + offset, 30 + offset, 40 + offset])
        write_fake(results, "o3f_iql", seed, {**timed, "wall_s": 3600.0 * seed, "wall_s_since_step": 100})
        write_fake(
            results, "iql_noise", seed, fake_summary("iql_noise", seed, [10, 20 + offset, 22 + offset, 24 + offset])
        )
        write_fake(results, "o3f_lapo", seed, fake_summary("o3f_lapo", seed, [5, 6, 7, 8]))
        write_fake(results, "lapo_noise", seed, fake_summary("lapo_noise", seed, [5, 5, 5, 5]))
    write_fake(results, "cql_to_sac", 1, fake_summary("cql_to_sac", 1, [30, 40, 20, 35], q_bias=[1, 2, 40, 5]))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", str(results), "--reps", "200"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = results / "figures"
    assert sorted(os.listdir(figures)) == [
        "aggregate.png",
        "figure2_cql_to_sac_embedded-halfcheetah-medium.png",
        "figure5_o3f_vs_noise.png",
        "profiles.png",
        "statistics.json",
        "tables.md",
    ]
    # The table: IQM over the two seeds (of two, their mean) at the switch (step 100) and at the end (step 200); two
    # seeds are too few for a bootstrap CI (resampling them gives the range), so the table says there is none.
    # The runs took 1 and 2 hours (summary.json's wall_s, counted from the switch): median 1.5; noise's have none.
    # The mean over fine-tuning: of the online evaluations (steps 150 and 200), 35 and 37 for O3F, 23 and 25 for noise.
    none = "[no CI: < 3 seeds]"
    row = f"| 2 | 5 | 21.0 {none} | 41.0 {none} | +20.0 | 36.0 {none} | 1.50 |"
    assert f"| IQL + O3F | embedded-halfcheetah-medium {row}" in result.stdout
    row = f"| 2 | 5 | 21.0 {none} | 25.0 {none} | +4.0 | 24.0 {none} | - |"
    assert f"| IQL + noise | embedded-halfcheetah-medium {row}" in result.stdout
    # O3F's two end scores (40, 42) both beat noise's (24, 26): probability of improvement 1.
    assert "| IQL + O3F vs IQL + noise | embedded-halfcheetah-medium | 2, 2 |" in result.stdout
    assert f"| 41.0 {none} vs 25.0 {none} | 1.00 {none} | 36.0 vs 24.0 | 1.00 {none} |" in result.stdout
    # the same tables in tables.md, and every number with each seed's scores in statistics.json
    assert (figures / "tables.md").read_text().strip() in result.stdout
    stats = json.loads((figures / "statistics.json").read_text())
    o3f = next(v for v in stats["variants"] if v["variant"] == "o3f_iql")
    assert o3f["seeds"] == [1, 2] and o3f["end"]["per_seed"] == [40.0, 42.0] and o3f["mean"]["per_seed"] == [35.0, 37.0]
    assert o3f["end"]["iqm"] == pytest.approx(41.0) and o3f["end"]["ci"] is None and o3f["end"]["seeds"] == 2
    pair = next(c for c in stats["comparisons"] if (c["first"], c["second"]) == ("o3f_iql", "iql_noise"))
    assert pair["end"]["p"] == pytest.approx(1.0) and pair["mean"]["p_ci"] is None


def drawn_figures(monkeypatch, results) -> dict:
    """What plot.py draws from `results`, as its own matplotlib figures (nothing written): file name -> figure."""
    from matplotlib.figure import Figure

    plot = plot_module()
    figures = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: figures.__setitem__(os.path.basename(path), fig))
    monkeypatch.setattr(plot.plt, "close", lambda fig=None: None)
    monkeypatch.setattr(plot, "REPS", 200)
    runs = plot.load(str(results))
    plot.draw_comparisons(runs, "out"), plot.draw_switch(runs, "out"), plot.draw_aggregate(runs, "out")
    return figures


def curves(ax) -> dict:
    """A panel's lines by their legend labels: label -> (x, y)."""
    return {line.get_label(): tuple(map(list, line.get_data())) for line in ax.get_lines()}


def test_figure_5_draws_each_algorithms_iqm_curves_and_the_collected_episodes(monkeypatch, tmp_path):
    results = tmp_path / "results"
    for seed, offset in ((1, 0.0), (2, 2.0)):
        o3f = fake_summary("o3f_iql", seed, [10, 20 + offset, 30 + offset, 40 + offset])
        episodes = [{"step": step, "normalized_score": 43.0 + offset} for step in (150, 200)]  # the data collected
        write_fake(results, "o3f_iql", seed, {**o3f, "train_episodes": episodes})
        write_fake(results, "iql_noise", seed, fake_summary("iql_noise", seed, [10, 20 + offset, 22, 24]))
        write_fake(results, "o3f_lapo", seed, fake_summary("o3f_lapo", seed, [5, 6, 7, 8]))
        write_fake(results, "lapo_noise", seed, fake_summary("lapo_noise", seed, [5, 5, 5, 5]))
    write_fake(results, "cql_to_sac", 1, fake_summary("cql_to_sac", 1, [30, 40, 20, 35], q_bias=[1, 2, 40, 5]))
    figures = drawn_figures(monkeypatch, results)
    assert sorted(figures) == [
        "aggregate.png",
        "figure2_cql_to_sac_embedded-halfcheetah-medium.png",
        "figure5_o3f_vs_noise.png",
    ]
    iql, lapo = figures["figure5_o3f_vs_noise.png"].axes
    assert iql.get_title() == "IQL on embedded-halfcheetah-medium" and "LAPO" in lapo.get_title()
    assert iql.get_ylabel() == "D4RL-normalised score" and iql.get_xlabel().startswith("online environment steps")
    # online steps from the switch (0, 50, 100); two seeds' IQM is their mean
    assert curves(iql)["IQL + O3F (2 seeds, IQM)"] == ([0, 50, 100], [21.0, 31.0, 41.0])
    assert curves(iql)["IQL + noise (2 seeds, IQM)"] == ([0, 50, 100], [21.0, 22.0, 24.0])
    assert curves(lapo)["LAPO + noise (2 seeds, IQM)"][1] == [5.0, 5.0, 5.0]
    # the training episodes each run collected, dashed beside its curve: their score at each step, over the seeds
    assert curves(iql)["IQL + O3F: training episodes"][1][1:] == [44.0, 44.0]
    # Figure 2: score, Q bias and critic loss across the switch (offline steps left of 0), one seed
    score, bias, loss = figures["figure2_cql_to_sac_embedded-halfcheetah-medium.png"].axes
    assert [ax.get_ylabel() for ax in (score, bias, loss)] == [
        "D4RL-normalised score",
        "Q bias: Q(s, a) - discounted return",
        "critic TD loss",
    ]
    label = "CQL -> SAC (objective switch) (1 seed, IQM)"
    assert curves(score)[label] == ([-50, 0, 50, 100], [30.0, 40.0, 20.0, 35.0])
    assert curves(bias)[label][1] == [1.0, 2.0, 40.0, 5.0]
    # the aggregate: one panel per comparison, each variant's end score on its row
    (o3f_vs_noise, lapo_vs_noise) = figures["aggregate.png"].axes
    assert [t.get_text() for t in o3f_vs_noise.get_yticklabels()] == ["IQL + O3F", "IQL + noise"]


def plot_module():
    import plot

    return plot


def test_iqm_is_the_mean_of_the_middle_half_and_its_interval_contains_it():
    plot = plot_module()
    scores = np.array([100.0, 1, 2, 3, 4, 5, 6, 7])[:, None]  # 8 runs of one task; the top and bottom quarter drop out
    point, low, high = plot.iqm_ci(scores)
    assert point == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert low < point < high and 1 <= low and high < 100


def test_iqm_pools_tasks_and_the_bootstrap_resamples_runs_within_each_task():
    plot = plot_module()
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 tasks: 8 scores
    point, low, high = plot.iqm_ci(scores)
    assert point == pytest.approx(np.mean([3.0, 4.0, 10.0, 20.0]))  # the middle half of all 8
    same_runs = np.array([[5.0, 50.0]] * 4)  # no spread within a task: every stratified resample is the same
    assert plot.iqm_ci(same_runs) == pytest.approx((27.5, 27.5, 27.5))


def test_probability_of_improvement_counts_the_pairs_of_runs_one_beats_the_other():
    plot = plot_module()
    x, y = np.array([[3.0], [4.0], [6.0]]), np.array([[1.0], [5.0]])
    point, low, high = plot.improvement_ci(x, y)
    assert point == pytest.approx(4 / 6)  # 3 > 1, 4 > 1, 6 > 1, 6 > 5 of the 6 pairs
    assert low <= point <= high and 0 <= low and high <= 1
    assert plot.improvement_ci(np.ones((3, 1)), np.ones((3, 1)))[0] == pytest.approx(0.5)  # ties count one half


def test_the_confidence_intervals_do_not_depend_on_numpys_global_random_state():
    # rliable's bootstraps draw from NumPy's global generator: whatever drew from it before must not move a CI
    plot = plot_module()
    x, y = np.array([[38.8], [39.1], [39.2], [39.1], [39.3]]), np.array([[38.0], [39.5], [38.2], [39.0], [38.6]])
    estimates = []
    for state in (1, 2):
        np.random.seed(state)
        estimates.append(
            (plot.iqm_ci(x, reps=500), plot.improvement_ci(x, y, reps=500), plot.paired_difference_ci(x - y, reps=500))
        )
    assert estimates[0] == estimates[1]
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    plot.iqm_ci(x, reps=500)
    assert (np.random.get_state()[1] == before).all()  # and the caller's global state is left as it was


def test_the_score_matrix_holds_each_seeds_score_at_the_switch_and_at_the_end():
    plot = plot_module()
    runs = {"v": {"a": [fake_summary("v", 1, [10, 20, 30]), fake_summary("v", 2, [10, 22, 33])]}}
    assert plot.score_matrix(runs, "v", ["a"], "switch").tolist() == [[20.0], [22.0]]  # the evaluation at step 100
    assert plot.score_matrix(runs, "v", ["a"], "end").tolist() == [[30.0], [33.0]]
    runs = {"v": {"a": [fake_summary("v", 1, [10, 20, 30, 50]), fake_summary("v", 2, [10, 22, 33, 34])]}}
    assert plot.score_matrix(runs, "v", ["a"], "mean").tolist() == [[40.0], [33.5]]  # of the online evaluations only


def test_the_paired_difference_matches_seeds_and_its_interval_contains_the_mean():
    plot = plot_module()
    runs = {
        "o3f": {"a": [fake_summary("o3f", 1, [10, 20, 31]), fake_summary("o3f", 2, [10, 22, 30])]},
        "noise": {
            "a": [fake_summary("noise", 2, [10, 22, 27]), fake_summary("noise", 1, [10, 20, 30])]
            + [fake_summary("noise", 3, [10, 25, 99])]  # no O3F run of seed 3: left out
        },
    }
    assert plot.paired_matrix(runs, "o3f", "noise", ["a"], "end").tolist() == [[1.0], [3.0]]  # seed 1, seed 2
    point, low, high = plot.paired_difference_ci(np.array([[1.0], [2.0], [6.0]]))
    assert point == pytest.approx(3.0)
    assert 1.0 <= low < point < high <= 6.0
    assert plot.paired_difference_ci(np.array([[0.5], [0.5], [0.5]])) == pytest.approx((0.5, 0.5, 0.5))


def test_the_per_run_table_lists_each_run_and_flags_runs_of_one_model_that_differ_at_the_switch():
    plot = plot_module()
    o3f, noise, other = (
        fake_summary(v, seed, scores)
        for v, seed, scores in (
            ("o3f", 1, [10, 20, 31, 33]),
            ("noise", 1, [10, 21, 30, 28]),
            ("noise", 2, [10, 22, 25, 26]),
        )
    )
    for s in (o3f, noise):
        s["args"]["load_offline"] = "pretrained/seed1.pt"  # both runs of seed 1 loaded one model file
    noise["train_episodes"] = [{"step": 200, "normalized_score": 10.0}, {"step": 300, "normalized_score": 13.0}]
    noise |= {"wall_s": 7200.0, "wall_s_since_step": 100}
    rows = plot.per_run_table({"o3f": {"a": [o3f]}, "noise": {"a": [noise, other]}}).splitlines()[2:]
    assert rows == [
        "| a | 1 | o3f | 20.0 (differs from another run of this model file) | 33.0 | 32.0 | - | - |",
        "| a | 1 | noise | 21.0 (differs from another run of this model file) | 28.0 | 29.0 | 11.5 (2) | 2.00 |",
        "| a | 2 | noise | 22.0 | 26.0 | 25.5 | - | - |",
    ]
    noise["evaluations"][1]["normalized_score"] = 20.0  # the same model, the same score at the switch: no flag
    assert "differs" not in plot.per_run_table({"o3f": {"a": [o3f]}, "noise": {"a": [noise]}})


def test_the_tables_give_no_interval_below_three_seeds():
    # a bootstrap over one seed has zero width: the tables say there is no CI rather than print [x, x]
    plot = plot_module()
    runs = {
        "o3f_lapo": {"a": [fake_summary("o3f_lapo", 1, [10, 20, 31])]},
        "lapo_noise": {"a": [fake_summary("lapo_noise", 1, [10, 20, 30])]},
        "o3f_iql": {"a": [fake_summary("o3f_iql", s, [10, 20, 30 + s]) for s in (1, 2, 3)]},
        "iql_noise": {"a": [fake_summary("iql_noise", s, [10, 20, 29 + s]) for s in (1, 2, 3)]},
    }
    stats = plot.statistics(runs)
    by_variant = {v["variant"]: v for v in stats["variants"]}
    assert by_variant["o3f_lapo"]["end"]["ci"] is None and by_variant["o3f_iql"]["end"]["ci"] is not None
    lapo = next(c for c in stats["comparisons"] if c["first"] == "o3f_lapo")
    assert lapo["end"]["p"] == 1.0 and lapo["end"]["p_ci"] is None and lapo["end"]["paired"]["ci"] is None
    tables = plot.table(stats) + plot.improvement_table(stats) + plot.paired_table(stats)
    assert "| LAPO + O3F | a | 1 | 5 | 20.0 [no CI: < 3 seeds] | 31.0 [no CI: < 3 seeds] |" in tables
    assert "| +1.00 [no interval: 1 pair]; [no CI: < 3 seeds] | 1.0000 | 1 of 1 |" in tables
    assert "| IQL + O3F | a | 3 | 5 | 20.0 [20.0, 20.0] | 32.0 [31.0, 33.0] |" in tables


def test_the_plotter_says_so_when_there_is_nothing_to_draw_or_too_few_resamples(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no complete runs" in result.stderr
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", str(tmp_path), "--reps", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --reps 10: at least 100 resamples are needed for a 95% interval"
    ]


def test_the_models_pretraining_curves_are_drawn_and_precede_the_fine_tunings_that_load_them(monkeypatch, tmp_path):
    plot = plot_module()
    results, env = tmp_path / "results", "embedded-pointmaze-large-10k"
    for seed, scores in ((2, [0.0, 60.0, 90.0]), (1, [10.0, 50.0, 70.0]), (3, [0.0, 0.0, 100.0])):
        evaluations = [{"step": 100 * (i + 1), "phase": "offline", "normalized_score": x} for i, x in enumerate(scores)]
        args = {"seed": seed, "eval_episodes": 10, "save_offline": f"pretrained/seed{seed}.pt"}
        write_fake(
            results / "pretrain-runs", "iql", seed, {"args": args, "evaluations": evaluations, "complete": True}, env
        )
    unfinished = {"args": {"seed": 4, "eval_episodes": 10}, "evaluations": [], "complete": False}
    write_fake(results / "pretrain-runs", "iql", 4, unfinished, env)  # still training: not drawn
    # a study that has only pretrained (the mazes whose gates failed): the command draws the models' curves alone
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(results / "figures") == ["pretraining.png"]
    assert result.stdout.split() == [str(results / "figures" / "pretraining.png")]
    # one line per finished seed, in seed order: its offline evaluations against the updates
    figures = {}
    monkeypatch.setattr(
        plot.plt.Figure, "savefig", lambda fig, path, **kw: figures.__setitem__(os.path.basename(path), fig)
    )
    monkeypatch.setattr(plot.plt, "close", lambda fig=None: None)
    pretraining = plot.load_pretraining(str(results))
    assert list(pretraining) == [("iql", env)]
    assert plot.draw_pretraining(pretraining, "out") == ["pretraining.png"]
    (ax,) = figures["pretraining.png"].axes
    assert curves(ax) == {
        "seed 1": ([100, 200, 300], [10.0, 50.0, 70.0]),
        "seed 2": ([100, 200, 300], [0.0, 60.0, 90.0]),
        "seed 3": ([100, 200, 300], [0.0, 0.0, 100.0]),
    }
    assert ax.get_title() == f"IQL pretraining on {env}" and "(10 evaluation episodes a point)" in ax.get_xlabel()
    # a fine-tuning run from seed 2's model (its own evaluations from the switch at 300 on) is drawn after that
    # model's evaluations before the switch
    run = fake_summary("o3f_iql", 2, [90.0, 95.0], switch=300)
    run["args"]["load_offline"] = "pretrained/seed2.pt"
    run["evaluations"] = [{**e, "step": e["step"] + 50} for e in run["evaluations"]]  # at the switch, then online
    write_fake(results, "o3f_iql", 2, run, env)
    (loaded,) = plot.load(str(results))["o3f_iql"][env]
    assert [(e["step"], e["normalized_score"]) for e in loaded["evaluations"]] == [
        (100, 0.0),
        (200, 60.0),
        (300, 90.0),
        (350, 95.0),
    ]


def test_the_plotter_draws_the_training_episodes_beside_the_evaluations():
    plot = plot_module()
    runs = [
        {
            "args": {"offline_steps": 100},
            "train_episodes": [{"step": 200, "normalized_score": 10.0}, {"step": 300, "normalized_score": 30.0}],
        },
        {
            "args": {"offline_steps": 100},
            "train_episodes": [{"step": 200, "normalized_score": 20.0}, {"step": 300, "normalized_score": 20.0}],
        },
    ]
    curve = plot.behaviour_curve(runs, np.array([0.0, 100.0, 150.0, 200.0]))
    assert np.isnan(curve[0])  # before the first training episode ended
    assert curve[1:].tolist() == [15.0, 20.0, 25.0]  # each seed interpolated, then the mean over seeds
    assert plot.behaviour_curve([{"args": {"offline_steps": 0}}], np.array([0.0])) is None  # runs from before the key


def test_the_runner_resumes_a_stopped_pretraining_and_keeps_phase_flags_apart(tmp_path):
    import run

    stopped = tmp_path / "pretrain-runs" / "iql" / "embedded-halfcheetah-medium" / "seed1" / "run"
    stopped.mkdir(parents=True)
    (stopped / "checkpoint.pt").write_bytes(b"")
    (stopped / "summary.json").write_text(json.dumps({"complete": False}))
    args = run.Args(
        variants=["o3f_iql"],
        seeds=[1, 2],
        output_dir=str(tmp_path),
        pretrain_extra="--snapshot-steps 10",
        finetune_extra="--snapshot-every 5",
    )
    pretrain, finetune, _ = run.plan(args)
    commands = {name: command for name, command in pretrain.values()}
    assert commands["pretrain iql embedded-halfcheetah-medium seed 1 (resumed)"][2:4] == [
        "--resume",
        str(stopped / "checkpoint.pt"),
    ]
    fresh = commands["pretrain iql embedded-halfcheetah-medium seed 2"]
    assert "--snapshot-steps" in fresh and "--snapshot-every" not in fresh
    assert (
        all("--snapshot-every" in command and "--snapshot-steps" not in command for _, command, _ in finetune)
        and len(finetune) == 2
    )
    args.pretrain_only = True
    assert run.plan(args)[1] == []


def test_a_new_machine_remakes_only_the_models_that_runs_left_to_do_need(tmp_path):
    """Models are not committed: on a new machine a finished study's models are missing. Nothing is retrained for
    runs that are complete; a model that an unfinished run needs is, and a stopped retraining resumes beside the
    finished first pretraining rather than starting over."""

    import run

    env = "embedded-halfcheetah-medium"

    def make_run(run_dir, complete, checkpoint):
        run_dir.mkdir(parents=True)
        summary = {"complete": complete, "args": {"offline_steps": 50, "online_steps": 50}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        if checkpoint:
            (run_dir / "checkpoint.pt").write_bytes(b"")

    # seed 2's pretraining finished (its checkpoint kept), seed 1's model came from elsewhere; no model file is left
    make_run(tmp_path / "pretrain-runs" / "iql" / env / "seed2" / "first", True, True)
    for variant in ("o3f_iql", "iql_noise"):  # seed 1's fine-tunings are complete, seed 2's noise run is too
        make_run(tmp_path / variant / env / "seed1" / "run", True, False)
    make_run(tmp_path / "iql_noise" / env / "seed2" / "run", True, False)
    args = run.Args(variants=["o3f_iql", "iql_noise"], seeds=[1, 2], output_dir=str(tmp_path), workers=1)
    pretrain, finetune, _ = run.plan(args)
    assert [name for name, _ in pretrain.values()] == [f"pretrain iql {env} seed 2"]
    assert [name for name, _, _ in finetune] == [f"o3f_iql {env} seed 2"]
    states = {row["run"]: row["state"] for row in run.study_status(args)[0]}
    assert states[f"pretrain iql {env} seed 1"] == "complete" and states[f"o3f_iql {env} seed 2"] == "not started"
    assert states[f"pretrain iql {env} seed 2"] == "to remake (model missing)"
    retraining = tmp_path / "pretrain-runs" / "iql" / env / "seed2" / "second"
    make_run(retraining, False, False)  # the retraining was stopped part-way
    torch.save({"step": 20}, retraining / "checkpoint.pt")
    (command,) = [command for _, command in run.plan(args)[0].values()]
    assert command[2:4] == ["--resume", str(retraining / "checkpoint.pt")]
    states = {row["run"]: (row["state"], row["step"]) for row in run.study_status(args)[0]}
    assert states[f"pretrain iql {env} seed 2"] == ("stopped", 20)  # the retraining's, not the finished first run's
    args.pretrain_only = True  # a study that only pretrains redoes none that finished here, and runs the others
    assert [name for name, _ in run.plan(args)[0].values()] == [f"pretrain iql {env} seed 1"]


def test_figure_3_has_a_panel_for_each_of_cql_iql_and_awac(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for variant, scores in (
        ("cql_same_objective", [5, 6, 7, 8]),
        ("cql_abrupt", [5, 6, 9, 9]),
        ("iql_same_objective", [30, 31, 32, 33]),
        ("iql_expectile_linear", [30, 31, 30, 29]),
        ("awac", [20, 21, 22, 23]),
        ("awac_lambda_abrupt", [20, 15, 18, 24]),
    ):
        write_fake(results, variant, 1, fake_summary(variant, 1, scores))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", str(results), "--reps", "200"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cql, iql, awac = drawn_figures(monkeypatch, results)["figure3_loosening.png"].axes  # three panels side by side
    assert [ax.get_title().split(" on ")[0] for ax in (cql, iql, awac)] == ["CQL", "IQL", "AWAC"]
    assert sorted(curves(awac)) == [
        "AWAC (same objective) (1 seed, IQM)",
        "AWAC, lambda 1 -> 0.1 at the switch (1 seed, IQM)",
    ]
    assert curves(awac)["AWAC, lambda 1 -> 0.1 at the switch (1 seed, IQM)"][1] == [15.0, 18.0, 24.0]
    for row in (
        "| AWAC (same objective) vs AWAC, lambda 1 -> 0.1 at the switch |",
        "| IQL (same objective) vs IQL, expectile",
    ):
        assert row in result.stdout


def test_the_awac_comparison_sets_d3rlpys_evaluations_beside_awac_pys(tmp_path):
    d3rlpy = [{"step": 5000 + 1000 * i, "normalized_score": s} for i, s in enumerate([30.0, 20.0, 4.0, 6.0])]
    (tmp_path / "d3" / "embedded-halfcheetah-medium").mkdir(parents=True)
    (tmp_path / "d3" / "embedded-halfcheetah-medium" / "seed1.json").write_text(json.dumps({"evaluations": d3rlpy}))
    ours = fake_summary("awac", 1, [31.0, 33.0, 2.0, 1.0], switch=5000)
    ours["evaluations"] = [{**e, "step": 5000 + 1000 * i} for i, e in enumerate(ours["evaluations"])]
    write_fake(tmp_path / "ours", "awac", 1, ours)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "lab", "peers", "awac_vs_d3rlpy.py"),
            "--report-only",
            "--output-dir",
            str(tmp_path / "d3"),
            "--awac-dir",
            str(tmp_path / "ours"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # at the switch (step 5000), the mean, lowest and last of the online evaluations (steps after 5000)
    assert "| d3rlpy 2.8.1 AWAC | 1 | 30.0 | 10.0 | 4.0 | 6.0 |" in result.stdout
    assert "| awac.py (awac) | 1 | 31.0 | 12.0 | 1.0 | 1.0 |" in result.stdout
    assert "temperature0" not in result.stdout  # no such runs: no row


def test_the_runner_goes_seed_by_seed_and_starts_with_the_runs_whose_model_exists(tmp_path, monkeypatch):
    import run

    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "iql__embedded-halfcheetah-medium__seed2.pt").write_bytes(b"")  # seed 2's model exists
    args = run.Args(variants=["o3f_iql", "iql_noise"], seeds=[1, 2], output_dir=str(tmp_path), workers=1)
    pretrain, finetune, _ = run.plan(args)
    assert [name for name, _ in pretrain.values()] == ["pretrain iql embedded-halfcheetah-medium seed 1"]
    names = [name for name, _, _ in finetune]
    assert names == [f"{v} embedded-halfcheetah-medium seed {s}" for s in (1, 2) for v in ("o3f_iql", "iql_noise")]
    started = []
    monkeypatch.setattr(run, "run_command", lambda command, threads: started.append(command) or 0)
    pretrain_codes, finetune_codes = run.execute(pretrain, finetune, args)
    by_command = {id(command): name for name, command, _ in finetune} | {
        id(command): name for name, command in pretrain.values()
    }
    assert [by_command[id(c)] for c in started] == [
        names[2],
        names[3],
        "pretrain iql embedded-halfcheetah-medium seed 1",
    ] + names[:2]
    assert pretrain_codes == [0] and finetune_codes == [0, 0, 0, 0]


def test_the_runner_fine_tunes_one_tasks_models_on_another_with_its_data(tmp_path):
    """--pretrained-on: the any-start maze's runs load (and, where missing, pretrain) the 20k maze's models."""
    import run

    fixed, anywhere = "embedded-pointmaze-large-20k", "embedded-pointmaze-large-20k-any-start"
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / f"iql__{fixed}__seed1.pt").write_bytes(b"")  # seed 1's model exists
    args = run.Args(
        variants=["o3f_iql"], env_ids=[anywhere], seeds=[1, 2], output_dir=str(tmp_path), pretrained_on=fixed
    )
    pretrain, finetune, _ = run.plan(args)
    ((name, command),) = pretrain.values()
    assert name == f"pretrain iql {fixed} seed 2" and command[command.index("--env-id") + 1] == fixed
    assert command[command.index("--save-offline") + 1] == str(tmp_path / "pretrained" / f"iql__{fixed}__seed2.pt")
    for seed, (name, command, model) in zip((1, 2), finetune):
        assert name == f"o3f_iql {anywhere} seed {seed}" and command[command.index("--env-id") + 1] == anywhere
        assert (
            command[command.index("--load-offline") + 1]
            == model
            == str(tmp_path / "pretrained" / f"iql__{fixed}__seed{seed}.pt")
        )
    rows, _ = run.study_status(args)
    assert [row["run"] for row in rows] == [
        f"pretrain iql {fixed} seed 1",
        f"o3f_iql {anywhere} seed 1",
        f"pretrain iql {fixed} seed 2",
        f"o3f_iql {anywhere} seed 2",
    ]
    assert rows[0]["state"] == "complete"


def test_each_seeds_fine_tuning_starts_once_its_model_exists_before_the_next_seeds_pretraining(tmp_path, monkeypatch):
    import run

    args = run.Args(variants=["o3f_iql"], seeds=[1, 2, 3], output_dir=str(tmp_path), workers=1)
    pretrain, finetune, _ = run.plan(args)
    names = {id(command): name for name, command in pretrain.values()} | {
        id(command): name for name, command, _ in finetune
    }
    started = []

    def fake_run(command, threads):
        started.append(names[id(command)])
        return 3 if names[id(command)] == "pretrain iql embedded-halfcheetah-medium seed 2" else 0

    monkeypatch.setattr(run, "run_command", fake_run)
    pretrain_codes, finetune_codes = run.execute(pretrain, finetune, args)
    env = "embedded-halfcheetah-medium"
    assert started == [  # not every pretraining first: seed 1 is whole before seed 2 starts
        f"pretrain iql {env} seed 1",
        f"o3f_iql {env} seed 1",
        f"pretrain iql {env} seed 2",
        f"pretrain iql {env} seed 3",  # seed 2's fine-tuning is skipped: its pretraining failed
        f"o3f_iql {env} seed 3",
    ]
    assert pretrain_codes == [0, 3, 0] and finetune_codes == [0, 3, 0]


def test_the_runner_leaves_runs_that_another_process_works_on_alone(tmp_path, monkeypatch):
    import run

    env = "embedded-halfcheetah-medium"
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / f"iql__{env}__seed1.pt").write_bytes(b"")  # seed 1's model exists, seed 2's does not
    for run_dir in (tmp_path / "iql_noise" / env / "seed1", tmp_path / "pretrain-runs" / "iql" / env / "seed2"):
        (run_dir / "run").mkdir(parents=True)
        (run_dir / "run" / "checkpoint.pt").write_bytes(b"")  # stopped, it would be resumed
    args = run.Args(variants=["o3f_iql", "iql_noise"], seeds=[1, 2], output_dir=str(tmp_path), workers=1)
    pretrain, finetune, elsewhere = run.plan(args)
    assert len(pretrain) == 1 and len(finetune) == 4 and elsewhere == []
    # another process resumes seed 1's noise run and seed 2's pretraining: neither is started twice, nor is what
    # waits for seed 2's model
    with working_in(tmp_path / "iql_noise" / env / "seed1", tmp_path / "pretrain-runs" / "iql" / env / "seed2"):
        pretrain, finetune, elsewhere = run.plan(args)
    assert pretrain == {} and [name for name, _, _ in finetune] == [f"o3f_iql {env} seed 1"]
    assert elsewhere == [
        f"iql_noise {env} seed 1",
        f"pretrain iql {env} seed 2",
        f"o3f_iql {env} seed 2",
        f"iql_noise {env} seed 2",
    ]
    started = []
    monkeypatch.setattr(run, "run_command", lambda command, threads: started.append(command) or 0)
    assert run.execute(pretrain, finetune, args) == ([], [0]) and started == [finetune[0][1]]


def test_a_job_is_looked_at_again_when_its_turn_comes(tmp_path, monkeypatch):
    """The plan may be hours old when a job starts: a run another process took up meanwhile is left to it (two
    processes in one run directory would overwrite each other), one that ended is done, one stopped is resumed."""
    import run

    env = "embedded-halfcheetah-medium"
    args = run.Args(variants=["iql_noise"], seeds=[1], output_dir=str(tmp_path), workers=1)
    pretrain, finetune, _ = run.plan(args)  # nothing exists yet: a fresh pretraining, then a fresh fine-tuning
    ((_, pretraining),), ((_, tuning, _),) = pretrain.values(), finetune
    run_dir, model = str(tmp_path / "iql_noise" / env / "seed1"), tmp_path / "pretrained" / f"iql__{env}__seed1.pt"
    started = []
    monkeypatch.setattr(run.subprocess, "call", lambda command, **kwargs: started.append(command) or 0)
    with working_in(run_dir):  # another runner started this run after the plan was made
        assert run.run_command(tuning, 1) == run.ELSEWHERE and started == []
        assert run.execute({}, finetune, args) == ([], [run.ELSEWHERE]) and started == []
    model.parent.mkdir()
    model.write_bytes(b"")  # the model was made meanwhile
    assert run.run_command(pretraining, 1) == 0 and started == []
    (tmp_path / "iql_noise" / env / "seed1" / "run").mkdir(parents=True)
    checkpoint = tmp_path / "iql_noise" / env / "seed1" / "run" / "checkpoint.pt"
    checkpoint.write_bytes(b"")  # started and stopped meanwhile: resumed, not started afresh beside it
    assert run.run_command(tuning, 1) == 0
    assert started == [[tuning[0], tuning[1], "--resume", str(checkpoint), "--output-dir", run_dir]]
    (checkpoint.parent / "summary.json").write_text(json.dumps({"complete": True}))  # and ended meanwhile: done
    assert run.run_command(tuning, 1) == 0 and len(started) == 1
    model.unlink()
    assert run.run_command(pretraining, 1) == 0 and started[-1] == pretraining  # a model to make: made


def test_the_status_reads_each_runs_checkpoint_and_estimates_what_is_left(tmp_path, capsys, monkeypatch):

    import run

    env = "embedded-halfcheetah-medium"
    monkeypatch.setattr(run, "PACE_MIN_STEPS", 50)  # this test's runs are short
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / f"iql__{env}__seed1.pt").write_bytes(b"")  # seed 1's model exists
    done = tmp_path / "o3f_iql" / env / "seed1" / "run"
    done.mkdir(parents=True)
    args = {"offline_steps": 300, "online_steps": 100}
    summary = {"complete": True, "args": args, "wall_s": 3600.0, "wall_s_since_step": 300}  # 36 s per step
    (done / "summary.json").write_text(json.dumps(summary))
    stopped = tmp_path / "iql_noise" / env / "seed1" / "run"
    stopped.mkdir(parents=True)
    (stopped / "summary.json").write_text(json.dumps({"complete": False, "args": args}))
    summary = {"complete": False, "wall_s": 900.0, "wall_s_since_step": 300}  # 50 steps in 900 s: 18 s per step
    torch.save({"algorithm": "iql", "step": 350, "summary": summary}, stopped / "checkpoint.pt")
    status = run.Args(
        variants=["o3f_iql", "iql_noise"], seeds=[1, 2], offline_steps=300, online_steps=100, output_dir=str(tmp_path)
    )
    rows, closing = run.study_status(status)
    by_run = {row["run"]: row for row in rows}
    assert [row["run"] for row in rows] == [
        f"pretrain iql {env} seed 1",
        f"o3f_iql {env} seed 1",
        f"iql_noise {env} seed 1",
        f"pretrain iql {env} seed 2",
        f"o3f_iql {env} seed 2",
        f"iql_noise {env} seed 2",
    ]
    assert by_run[f"pretrain iql {env} seed 1"]["state"] == "complete"
    assert by_run[f"o3f_iql {env} seed 1"]["left_s"] == 0.0
    assert by_run[f"iql_noise {env} seed 1"]["state"] == "stopped" and by_run[f"iql_noise {env} seed 1"]["step"] == 350
    assert by_run[f"iql_noise {env} seed 1"]["left_s"] == pytest.approx(50 * 18.0)  # its own pace
    assert by_run[f"o3f_iql {env} seed 2"]["left_s"] == pytest.approx(100 * 36.0)  # its variant's pace
    assert by_run[f"iql_noise {env} seed 2"]["left_s"] == pytest.approx(100 * 18.0)
    assert "left_s" not in by_run[f"pretrain iql {env} seed 2"]  # no pretraining pace measured
    assert closing.startswith("4 of 6 runs to finish: 1.8 run-hours left") and "1 of them with no pace" in closing
    hours = float(re.search(r"about ([\d.]+) hours with --workers", closing)[1])  # and the clock time it ends at
    end = time.mktime(time.strptime(re.search(r"\(ending about ([\d: -]+) if it runs", closing)[1], "%Y-%m-%d %H:%M"))
    assert abs(end - (time.time() + hours * 3600)) < 0.05 * 3600 + 60  # the hours are printed to a tenth
    run.print_status(status)
    printed = capsys.readouterr().out
    assert f"| iql_noise {env} seed 1 | stopped (checkpoint 0 min old) | 350 | 400 | 0.25 | 0.25 |" in printed
    assert f"| pretrain iql {env} seed 2 | not started | - | 300 | - | ? |" in printed
    # a process working in the run's directory: running (another directory's process does not count)
    run_dir = str(stopped.parent)
    for where, state in ((run_dir + "-other", "stopped"), (run_dir, "running")):
        with working_in(where):
            assert run.progress(run_dir)["state"] == state
    fresh = str(tmp_path / "o3f_iql" / env / "seed2")  # started, no checkpoint yet
    assert run.progress(fresh)["state"] == "not started"
    with working_in(fresh):
        assert run.progress(fresh) == {"state": "running", "step": 0}
    # without /proc: its log next to the directory, written in the last 5 minutes
    monkeypatch.setattr(run, "PROC", str(tmp_path / "no-proc"))
    log = tmp_path / "iql_noise" / env / "seed1.log"
    log.write_text("online: 88%")
    assert run.progress(run_dir)["state"] == "running"
    os.utime(log, (time.time() - 600, time.time() - 600))
    assert run.progress(run_dir)["state"] == "stopped"
    # a variant with no run yet takes the pace of the fine-tuning runs of its base algorithm (the median)
    status.variants = ["o3f_iql", "iql_noise", "o3f_iql_omega1"]
    by_run = {row["run"]: row for row in run.study_status(status)[0]}
    assert by_run[f"o3f_iql_omega1 {env} seed 2"]["left_s"] == pytest.approx(100 * 36.0)  # of 18 and 36 s


def test_a_runs_own_pace_counts_once_it_has_run_enough_steps_to_leave_its_start_behind():
    import run

    summary = {"wall_s": 3600.0, "wall_s_since_step": 1000}  # a run that loaded, compiled and evaluated for an hour
    assert run.pace(summary, 1001) == {"wall_s": 3600.0}  # one step on: no pace (its kind's stands in)
    assert run.pace(summary, 1000 + run.PACE_MIN_STEPS) == {"wall_s": 3600.0, "s_per_step": 3600.0 / run.PACE_MIN_STEPS}


SAVES_THEN_EXITS = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(143)))
open(sys.argv[1], "w").close()  # ready: its handler is in place
time.sleep(60)
"""


def test_the_studies_script_stops_its_runners_and_their_runs_even_orphaned_but_nothing_elsewhere(tmp_path):

    tree, other, ready = tmp_path / "checkout", tmp_path / "other", str(tmp_path / "ready")
    (tree / "lab").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "lab", "studies.sh"), tree / "lab")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    procs = {  # what stop must end: a runner in this checkout, a run (orphaned or not: found by its directory)
        "runner": subprocess.Popen(
            [*sleep, "lab/run.py", "--output-dir", "lab/studies/premise", "--workers", "1"], cwd=tree
        ),
        "run": subprocess.Popen(  # a run takes a moment to save its checkpoint on SIGTERM: stop waits for it
            [
                sys.executable,
                "-c",
                SAVES_THEN_EXITS,
                ready,
                "--output-dir",
                f"{tree}/lab/studies/premise/pretrain-runs/lapo/x/seed1",
            ]
        ),
        # and what it must leave: another checkout's runner and run
        "other runner": subprocess.Popen(
            [*sleep, "lab/run.py", "--output-dir", "lab/studies/premise", "--workers", "1"],
            cwd=other.mkdir() or other,
        ),
        "other run": subprocess.Popen(
            [*sleep, "--output-dir", f"{other}/lab/studies/premise/pretrain-runs/lapo/x/seed1"]
        ),
    }
    try:
        for _ in range(600):  # the run's handler in place (a loaded machine starts Python slowly)
            if os.path.exists(ready):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # their command lines visible
        stop = subprocess.run(
            ["bash", str(tree / "lab" / "studies.sh"), "stop"], capture_output=True, text=True, timeout=60
        )
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.strip() == "stopped the runs in lab/studies/premise"
        assert procs["run"].poll() == 143  # ended (its checkpoint saved) before stop returned: a start may follow
        assert procs["runner"].wait(timeout=10) == -15  # SIGTERM
        time.sleep(0.5)
        assert procs["other runner"].poll() is None and procs["other run"].poll() is None
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def studies_named() -> list:
    """The STUDIES list of lab/studies.sh, in its order."""
    text = open(os.path.join(ROOT, "lab", "studies.sh")).read()
    return re.search(r"^STUDIES=\(([^)]*)\)", text, re.M)[1].split()


def test_the_studies_script_reports_every_study_and_refuses_an_unknown_command_or_study():
    script = os.path.join(ROOT, "lab", "studies.sh")
    wrong = subprocess.run(["bash", script, "begin"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "usage: bash lab/studies.sh start|status [STUDY ...] | stop | figures"
    unknown = subprocess.run(["bash", script, "status", "decide", "nosuch"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.startswith("error: unknown study nosuch; known: premise_iql_100k ")
    status = subprocess.run(["bash", script, "status"], capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    studies = [line[3:] for line in status.stdout.splitlines() if line.startswith("## ")]
    assert studies == studies_named() and "lapo_figure5" in studies
    # each study: lab/run.py --status's table and closing line, or one line saying why it has not started
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", status.stdout, re.M | re.S))
    for study, text in sections.items():
        assert ("runs to finish" in text) != bool(re.fullmatch(r"not started: [^\n]+\n", text)), study
    assert "| pretrain iql embedded-halfcheetah-medium-1m seed 5 |" in sections["decide"]  # seeds 1-5
    assert "| pretrain lapo embedded-halfcheetah-medium-1m seed 5 |" in sections["lapo_figure5"]
    one = subprocess.run(["bash", script, "status", "lapo_utd20"], capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and [line for line in one.stdout.splitlines() if line.startswith("## ")] == [
        "## lapo_utd20"
    ]


def shell_functions(*names: str) -> str:
    """The named functions of lab/studies.sh, as text to run in a shell of a test's own."""
    script = os.path.join(ROOT, "lab", "studies.sh")
    found = [
        subprocess.run(["sed", "-n", f"/^{name}()/,/^}}/p", script], capture_output=True, text=True).stdout
        for name in names
    ]
    assert all(found), names
    return "set -euo pipefail\n" + "\n".join(found)


def test_a_study_with_a_gate_starts_only_once_its_record_says_pass(tmp_path):
    """A gate is read and written down before any of a study's runs: no gate.md, the study may start; a gate.md
    starts it only with the line "Decision: pass" (pending or failed gates keep it from starting)."""
    check = shell_functions("gate_passed") + "\ngate_passed study && echo starts || echo waits"

    def reading(record: str | None) -> str:
        (tmp_path / "study").mkdir(exist_ok=True)
        gate = tmp_path / "study" / "gate.md"
        if record is None:
            gate.unlink(missing_ok=True)
        else:
            gate.write_text(record)
        result = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.stderr == ""
        return result.stdout.strip()

    assert reading(None) == "starts"
    assert reading("# Gate\n\nDecision: pending (2 of 5 models read)\n") == "waits"
    assert reading("Decision: fail (mean 86%)\n") == "waits"
    assert reading("# Gate\n\n| seed 1 | 61 |\n\nDecision: pass (mean 72.4%)\n") == "starts"


def test_every_study_entry_is_in_its_own_folder_of_the_lab(tmp_path):
    """Each entry of STUDIES is an array of lab/run.py flags whose --output-dir is a folder of lab/studies/ that holds
    the study's README; the variants it names are lab/run.py's."""
    check = (
        shell_functions("folder")
        + "\n"
        + open(os.path.join(ROOT, "lab", "studies.sh"))
        .read()
        .split("STUDIES=(")[0]
        .split("export OMP_NUM_THREADS=1")[1]
    )
    check += "\nfor s in " + " ".join(studies_named()) + '; do echo "$s $(folder $s)"; done'
    result = subprocess.run(["bash", "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    folders = dict(line.split() for line in result.stdout.splitlines())
    assert sorted(folders) == sorted(studies_named())
    for study, folder in folders.items():
        assert folder.startswith("lab/studies/"), study
        assert os.path.isfile(os.path.join(ROOT, folder, "README.md")), study


def test_the_figures_draw_a_study_once_a_run_or_a_model_is_finished(tmp_path):
    """`studies.sh figures` plots a study's directory once it holds a complete fine-tuning run or a finished model (a
    maze whose gate failed: its models' pretraining curves); one with only runs or models still going has none yet."""
    write_fake(tmp_path / "models" / "pretrain-runs", "iql", 1, {**fake_summary("iql", 1, [10]), "complete": True})
    write_fake(tmp_path / "training" / "pretrain-runs", "iql", 1, {**fake_summary("iql", 1, [10]), "complete": False})
    write_fake(tmp_path / "going", "o3f_iql", 1, {**fake_summary("o3f_iql", 1, [10, 20]), "complete": False})
    write_fake(tmp_path / "done", "o3f_iql", 1, {**fake_summary("o3f_iql", 1, [10, 20]), "complete": True})
    studies = "models training going done absent"
    loop = f'for d in {studies}; do if has_runs "$d" || has_models "$d"; then echo "$d"; fi; done'
    check = shell_functions("complete_runs", "has_runs", "has_models") + "\n" + loop
    result = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["models", "done"], result.stderr
    assert 'if has_runs "$dir" || has_models "$dir"; then' in open(os.path.join(ROOT, "lab", "studies.sh")).read()


def test_several_results_directories_compare_task_by_task_and_never_pool_scales(tmp_path):
    """One study per task (as the evidence campaign runs them): each task compared on its own (its IQM, paired
    differences), and across tasks only the scale-free probability of improvement averaged over the tasks."""
    for study, env_id, base in (("decide", "task-a", 0.0), ("random", "task-b", 100.0)):
        for seed in (1, 2, 3):
            o3f = fake_summary("o3f_iql", seed, [10, 20, 30, base + seed])
            write_fake(tmp_path / study, "o3f_iql", seed, o3f, env_id)
            noise = fake_summary("iql_noise", seed, [10, 20, 30, base + (4 if env_id == "task-b" and seed == 3 else 0)])
            write_fake(tmp_path / study, "iql_noise", seed, noise, env_id)
    plot = [sys.executable, os.path.join(ROOT, "lab", "plot.py"), "--results-dir", tmp_path / "decide"]
    plot = list(map(str, plot + [tmp_path / "random", "--reps", "200"]))
    refused = subprocess.run(plot, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: several --results-dir directories need --out-dir (where their pooled figures go)"
    ]
    result = subprocess.run(plot + ["--out-dir", str(tmp_path / "across")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "profiles.png" in os.listdir(tmp_path / "across")
    stats = json.loads((tmp_path / "across" / "statistics.json").read_text())
    pairs = {c["tasks"][0]: c for c in stats["comparisons"] if (c["first"], c["second"]) == ("o3f_iql", "iql_noise")}
    assert sorted(pairs) == ["task-a", "task-b"]  # one comparison per task, nothing pooled across them
    assert pairs["task-a"]["end"]["first"]["mean"] == pytest.approx(2.0)  # O3F 1, 2, 3 against noise 0
    assert pairs["task-b"]["end"]["second"]["mean"] == pytest.approx(100 + 4 / 3)  # noise 100, 100, 104
    assert pairs["task-b"]["end"]["paired"]["per_seed"] == pytest.approx([1.0, 2.0, -1.0])
    (across,) = stats["across_tasks"]
    assert across["tasks"] == ["task-a", "task-b"]
    # task a: every O3F run beats every noise run (1.0); task b: 101, 102, 103 against 100, 100, 104: 6 of 9 (2/3)
    assert across["end"]["p"] == pytest.approx((1.0 + 6 / 9) / 2)
    assert across["end"]["tasks_favouring_first"] == 2
    assert "| IQL + O3F vs IQL + noise | task-a, task-b | 0.83 [" in result.stdout  # the across-tasks table's row


def test_a_performance_profile_is_the_fraction_of_runs_above_each_threshold():
    plot = plot_module()
    profile, low, high = plot.profile_ci(
        np.array([[1.0, 5.0], [3.0, 7.0]]), np.array([0.0, 2.0, 4.0, 6.0, 8.0]), reps=200
    )
    assert profile.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])  # of the 4 runs x tasks, above each tau
    assert (low <= profile + 1e-9).all() and (profile <= high + 1e-9).all()


def test_the_runner_runs_the_scripts_as_they_are_at_the_commit_a_study_names(tmp_path, capsys):
    """--code-at: every planned command runs the commit's own script (with make_datasets.py and datasets/ beside it,
    which the embedded tasks need), extracted once; a commit the checkout lacks stops the runner with one line."""
    import run

    args = run.Args(variants=["o3f_lapo", "iql_noise"], seeds=[1], output_dir=str(tmp_path), code_at="HEAD")
    pretrain, finetune, _ = run.plan(args)
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    folder = tmp_path / f"code-{head[:12]}"
    scripts = [command[1] for _, command in pretrain.values()] + [command[1] for _, command, _ in finetune]
    assert scripts == [str(folder / name) for name in ("o3f_lapo.py", "o3f_iql.py", "o3f_lapo.py", "iql_noise.py")]
    for name in ("o3f_lapo.py", "iql_noise.py", "make_datasets.py", "datasets/halfcheetah-medium-behaviour.pt"):
        committed = subprocess.run(["git", "-C", ROOT, "show", f"HEAD:{name}"], capture_output=True).stdout
        assert (folder / name).read_bytes() == committed, name
    (folder / "o3f_lapo.py").write_text("# extracted once: a second plan reuses the folder\n")
    assert run.plan(args)[1][0][1][1] == str(folder / "o3f_lapo.py") and (folder / "o3f_lapo.py").read_text()[0] == "#"
    assert not list(tmp_path.glob("*.part*"))
    with pytest.raises(SystemExit) as stop:
        run.plan(run.Args(variants=["o3f_lapo"], output_dir=str(tmp_path), code_at="0" * 40))
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --code-at {'0' * 40}: no such commit (git fetch, or name another commit)"
    ]
