"""The selection diagnostic (lab/premise.py) and the model snapshots it reads."""

import glob
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import premise  # noqa: E402
from conftest import ROOT


class Line:
    """A deterministic toy with MuJoCo's state interface: position x, velocity unused; a step moves x by the
    action and pays x (after the move); reaching x >= 10 terminates."""

    def __init__(self):
        self.unwrapped = self
        self.data = type("Data", (), {"qpos": np.zeros(1), "qvel": np.zeros(1)})()

    def set_state(self, qpos, qvel):
        self.data.qpos, self.data.qvel = np.array(qpos, dtype=float), np.array(qvel, dtype=float)

    def step(self, action):
        self.data.qpos = self.data.qpos + float(np.asarray(action).reshape(-1)[0])
        x = float(self.data.qpos[0])
        return np.array([x]), x, x >= 10, False, {}


def halve(obs):
    return -obs / 2  # the "policy": move halfway back to 0


def test_true_return_on_a_deterministic_toy_equals_the_hand_computed_one():
    envs = [Line(), Line()]
    states = [(np.array([1.0]), np.zeros(1)), (np.array([3.0]), np.zeros(1))]
    returns = premise.true_returns(
        halve, envs, states, np.array([[1.0], [8.0]]), horizon=2, gamma=0.9, scale_reward=lambda r: 10 * r
    )
    # From x=1, act +1: x=2 (r 2); the policy halves: x=1 (r 1), x=0.5 (r 0.5).
    assert returns[0] == pytest.approx(10 * (2 + 0.9 * 1 + 0.81 * 0.5))
    # From x=3, act +8: x=11 (r 11) terminates: nothing after it counts.
    assert returns[1] == pytest.approx(10 * 11)
    cut = premise.true_returns(
        halve,
        envs,
        states,
        np.array([[1.0], [8.0]]),
        horizon=2,
        gamma=0.9,
        scale_reward=lambda r: 10 * r,
        partial=(0, 1, 2),
    )
    assert cut[:, 0] == pytest.approx([20, 20 + 9, 20 + 9 + 4.05]) and cut[:, 1] == pytest.approx([110, 110, 110])


def test_the_horizon_counts_the_executed_action_and_h_policy_steps():
    (ret,) = premise.true_returns(
        halve,
        [Line()],
        [(np.array([4.0]), np.zeros(1))],
        np.array([[0.0]]),
        horizon=0,
        gamma=0.5,
        scale_reward=lambda r: r,
    )
    assert ret == pytest.approx(4.0)  # H = 0: the executed action's reward only


def test_statistics_on_hand_made_numbers():
    assert premise.mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / np.sqrt(3)))
    assert premise.spearman([1, 2, 3, 4], [10, 40, 20, 30]) == pytest.approx(0.4)
    assert premise.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: [0.5, 0.5, 2, 3] against [0, 1, 2, 3]
    assert premise.spearman([5, 5, 7, 9], [1, 2, 3, 4]) == pytest.approx(
        np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1]
    )
    # a constant sample (a sparse reward no candidate reached) has no order: undefined, and left out of the mean
    assert np.isnan(premise.spearman([-95.1, -95.1, -95.1], [1, 2, 3]))
    assert premise.mean_se([np.nan, 1.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert all(np.isnan(premise.mean_se([np.nan, np.nan])))


def test_the_eta_times_each_kind_of_phase_by_its_own_finished_phases(monkeypatch, capsys):
    clock = iter([0.0, 0.0, 10.0, 20.0, 120.0])  # created; then phases 0, 1, 2 and 3 begin
    monkeypatch.setattr(premise.time, "time", lambda: next(clock))
    progress = premise.Progress([("rule", 100), ("rule", 100), ("rank", 1000), ("rank", 1000)])
    progress(0, "a")  # nothing finished: no ETA
    progress(1, "b")  # one rule phase took 10 s: 10 s for the other, 0.1 s per step for each rank phase
    progress(2, "c")
    progress(3, "d")  # the rank phase took 100 s
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("about ")[1] for line in lines] == ["? s left)", "210 s left)", "200 s left)", "100 s left)"]
    assert lines[3].startswith("  [3/4] d (120 s,")


def hand_made_model(seed, online_steps, policy, gain, gain_se=0.5, h10=0.1, exp_name="o3f_iql", offline=300_000):
    """One diagnostic line: the policy mean's score, O3F N 100's gain at sigma 0.2, the 10-step rank correlation."""
    rule = lambda kind, n, sigma, **x: {"kind": kind, "n": n, "sigma": sigma, "omega": 0.0, **x}  # noqa: E731
    return {
        "algorithm": "iql",
        "dataset_size": 1_000_000,
        "train_seed": seed,
        "step": offline + online_steps,
        "online_steps": online_steps,
        "phase": "online" if online_steps else "offline",
        "exp_name": exp_name if online_steps else None,
        "rules": [
            rule("policy", 1, 0.0, episode_score=policy, episode_score_se=0.3),
            rule(
                "o3f",
                100,
                0.2,
                episode_score=policy + gain,
                episode_score_se=0.2,
                episode_gain=gain,
                episode_gain_se=gain_se,
            ),
        ],
        "rank": [{"sigma": 0.2, "by_horizon": [{"horizon": 10, "spearman": h10, "spearman_se": 0.05}]}],
    }


def test_the_fine_tuning_table_pools_the_runs_seeds_and_shows_the_switch_once():
    switch = [hand_made_model(1, 0, 38.0, 9.0), hand_made_model(2, 0, 39.0, 11.0)]
    online = [
        hand_made_model(1, 100_000, 41.0, 10.0),
        hand_made_model(2, 100_000, 42.0, 12.0),
        hand_made_model(2, 20_000, 40.0, 10.5, gain_se=0.4),  # one seed: its own standard error
        hand_made_model(1, 100_000, 38.5, 10.7, exp_name="iql_noise"),
        # seed 1 again, fine-tuned from a longer-trained model: a run of its own, never pooled with the others
        hand_made_model(1, 20_000, 43.0, 8.0, offline=1_000_000),
    ]
    longer = hand_made_model(1, 0, 42.0, 7.0, offline=1_000_000)
    rows = premise.online_table(online, switch + [hand_made_model(3, 0, 30.0, 0.0), longer]).splitlines()[2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[:3] for c in cells] == [
        ["pretrained model, at the switch (IQL, 1000k data, 300k updates)", "0", "1, 2"],  # once, the runs' seeds
        ["iql_noise (IQL, 1000k data, 300k updates)", "100,000", "1"],
        ["o3f_iql (IQL, 1000k data, 300k updates)", "20,000", "2"],
        ["o3f_iql (IQL, 1000k data, 300k updates)", "100,000", "1, 2"],
        ["pretrained model, at the switch (IQL, 1000k data, 1000k updates)", "0", "1"],
        ["o3f_iql (IQL, 1000k data, 1000k updates)", "20,000", "1"],
    ]
    assert cells[4][9] == "+7.0 ± 0.5" and cells[5][9] == "+8.0 ± 0.5" and cells[5][3] == "43.0 ± 0.3"
    # two seeds: the mean, and the standard error over the seeds (values 1 apart: 0.5)
    assert cells[3][3] == "41.5 ± 0.5" and cells[3][9] == "+11.0 ± 1.0" and cells[0][9] == "+10.0 ± 1.0"
    assert cells[2][9] == "+10.5 ± 0.4" and cells[2][12] == "+0.10 ± 0.05"
    assert cells[3][5] == "" and cells[3][7] == ""  # not measured: noise's score, the gain at sigma 0.05
    # O3F over the deterministic policy: the scores' difference, its error from theirs (hypot(0.2, 0.3) = 0.36);
    # over a ~ pi: not measured here
    assert cells[5][11] == "+8.0 ± 0.4" and cells[5][10] == "" and cells[5][4] == ""


def test_the_glance_table_has_one_column_per_budget_and_pools_the_seeds():
    models = [
        hand_made_model(1, 0, 30.0, -7.0, offline=30_000),
        hand_made_model(1, 0, 38.0, 9.0, gain_se=0.7),
        hand_made_model(2, 0, 38.0, 11.0),
        hand_made_model(3, 0, 38.0, 13.0),
        {**hand_made_model(1, 0, 38.0, 5.0, offline=100_000), "algorithm": "lapo"},
    ]
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in premise.glance_table(models).splitlines()]
    assert rows[0] == ["algorithm", "data", "O3F N 100 minus", "30k updates", "100k updates", "300k updates"]
    # one row per reference measured: noise, and the deterministic policy (a ~ pi is not in these models)
    assert rows[2] == ["IQL", "1000k", "noise", "-7.0 ± 0.5", "", "+11.0 ± 1.2 (3 seeds)"]  # 9, 11, 13: se 2/sqrt(3)
    assert rows[3] == ["IQL", "1000k", "the deterministic policy", "-7.0 ± 0.4", "", "+11.0 ± 1.2 (3 seeds)"]
    assert rows[4] == ["LAPO", "1000k", "noise", "", "+5.0 ± 0.5", ""]
    assert len(rows) == 6 and rows[5][2] == "the deterministic policy"
    assert len(premise.glance_table(models, sigma=0.1).splitlines()) == 2  # nothing measured at sigma 0.1


def test_gains_over_each_reference_are_the_score_differences():
    r = hand_made_model(1, 0, 38.0, 9.0)
    sample = {"kind": "sample", "n": 1, "sigma": 0.0, "omega": 0.0, "episode_score": 41.0, "episode_score_se": 0.4}
    r["rules"].append(sample)
    assert premise.gain_over(r, "noise") == (9.0, 0.5)  # the stored per-episode difference
    assert premise.gain_over(r, "policy") == pytest.approx((9.0, np.hypot(0.2, 0.3)))  # O3F 47.0 - 38.0
    assert premise.gain_over(r, "sample") == pytest.approx((6.0, np.hypot(0.2, 0.4)))  # 47.0 - 41.0
    assert premise.gain_over(r, "sample", sigma=0.1) is None  # O3F not measured at sigma 0.1


def test_the_pretraining_figure_draws_each_seeds_gain_along_the_budget(monkeypatch, tmp_path):
    def model(seed, offline, gain, algorithm="iql"):
        r = hand_made_model(seed, 0, 38.0, gain, offline=offline)
        r["rules"][1] |= {"true_gain": gain / 10, "true_gain_se": 0.1}
        r["rank"][0]["by_horizon"][0] |= {"replicate_spearman": 0.9, "replicate_spearman_se": 0.01}
        return {**r, "algorithm": algorithm}

    offline = [model(1, 30_000, -7.0), model(1, 300_000, 9.0), model(2, 300_000, 11.0), model(1, 100_000, 5.0, "lapo")]
    figures = []
    monkeypatch.setattr(premise, "save_figure", lambda fig, title, out: figures.append(fig) or out)
    premise.plot_offline(offline, str(tmp_path / "premise.png"))
    axes = np.array(figures[0].axes).reshape(4, 2)  # four measures (rows) for each algorithm and data size
    assert [ax.get_title() for ax in axes[0]] == ["IQL, 1000k transitions", "LAPO, 1000k transitions"]
    drawn = sorted((list(c.lines[0].get_ydata()), len(c.lines[0].get_xdata())) for c in axes[0, 0].containers)
    assert drawn == [([-7.0, 9.0], 2), ([11.0], 1)]  # one line per training seed, along its budgets
    (lapo,) = axes[0, 1].containers
    assert list(lapo.lines[0].get_ydata()) == [5.0] and list(lapo.lines[0].get_xdata()) == pytest.approx(
        [100_000 / 1.06]
    )


def test_two_datasets_of_one_size_stay_apart_in_the_tables_and_the_figure(monkeypatch, tmp_path):
    """The medium and the random 1M data: the same algorithm and size, each its own rows and its own column."""

    def model(env_id, offline, gain):
        r = hand_made_model(1, 0, 30.0, gain, offline=offline)
        r["rules"][1] |= {"true_gain": gain / 10, "true_gain_se": 0.1}
        r["rank"][0]["by_horizon"][0] |= {"replicate_spearman": 0.9, "replicate_spearman_se": 0.01}
        return {**r, "env_id": env_id}

    medium = [
        model("embedded-halfcheetah-medium-1m", 30_000, 1.0),
        model("embedded-halfcheetah-medium-1m", 100_000, 2.0),
    ]
    random = [
        model("embedded-halfcheetah-random-1m", 30_000, -1.0),
        model("embedded-halfcheetah-random-1m", 100_000, -2.0),
    ]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in premise.glance_table(medium + random).splitlines()]
    noise = {row[1]: row[3:] for row in rows[2:] if row[2] == "noise"}
    assert noise == {
        "halfcheetah-medium, 1000k": ["+1.0 ± 0.5", "+2.0 ± 0.5"],
        "halfcheetah-random, 1000k": ["-1.0 ± 0.5", "-2.0 ± 0.5"],
    }
    figures = []
    monkeypatch.setattr(premise, "save_figure", lambda fig, title, out: figures.append(fig) or out)
    premise.plot_offline(medium + random, str(tmp_path / "premise.png"))
    titles = [ax.get_title() for ax in np.array(figures[0].axes).reshape(4, 2)[0]]
    assert titles == ["IQL, halfcheetah-medium, 1000k transitions", "IQL, halfcheetah-random, 1000k transitions"]


def test_the_fine_tuning_figure_draws_runs_from_different_pretraining_budgets_apart(monkeypatch, tmp_path):
    def model(seed, online_steps, gain, offline=300_000, exp_name="o3f_iql"):
        r = hand_made_model(seed, online_steps, 38.0, gain, exp_name=exp_name, offline=offline)
        noise = {"kind": "noise", "n": 1, "sigma": 0.2, "omega": 0.0, "episode_score": 33.0, "episode_score_se": 0.1}
        return {**r, "rules": r["rules"] + [noise]}

    offline = [model(1, 0, 9.0), model(1, 0, 7.0, offline=1_000_000)]
    online = [model(1, 20_000, 10.0), model(1, 100_000, 11.0), model(1, 5_000, 8.0, offline=1_000_000)]
    figures = []
    monkeypatch.setattr(premise, "save_figure", lambda fig, title, out: figures.append(fig))
    premise.plot_online(online, offline, str(tmp_path / "online.png"))
    lines = [c.lines[0] for c in figures[0].axes[0].containers]  # one error-bar line per run
    drawn = sorted((list(line.get_xdata()), list(line.get_ydata())) for line in lines)
    assert drawn == [([0, 5_000], [7.0, 8.0]), ([0, 20_000, 100_000], [9.0, 10.0, 11.0])]  # each from its own switch
    colours = {line.get_color() for line in lines}
    assert len(colours) == 2  # and told apart


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, small_dataset, data_dir):
    """Tiny IQL and LAPO runs on the small HalfCheetah data, keeping snapshots at steps 10 and 20."""
    out = tmp_path_factory.mktemp("snap")
    paths = {}
    for script in ("o3f_iql.py", "o3f_lapo.py"):
        run = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, script),
                "--no-cuda",
                "--env-id",
                "embedded-halfcheetah-medium",
                "--dataset-path",
                small_dataset,
                "--offline-steps",
                "20",
                "--online-steps",
                "0",
                "--eval-freq",
                "20",
                "--eval-episodes",
                "1",
                "--batch-size",
                "32",
                "--snapshot-steps",
                "10",
                "20",
                "--output-dir",
                str(out / script),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "O3F_DATA_DIR": data_dir},
        )
        assert run.returncode == 0, run.stderr[-2000:]
        found = sorted(glob.glob(str(out / script / "*" / "snapshots" / "*.pt")))
        assert [os.path.basename(p) for p in found] == ["step0000010.pt", "step0000020.pt"]
        paths[script] = found
    return paths


SMALL = dict(
    sigmas=(0.0, 0.2), n_candidates=(5,), omegas=(0.0,), episodes=1, states=4, horizon=5, rank_candidates=3, seed=0
)


def measure(path, **overrides):
    return premise.measure_model(premise.Agent(path), premise.Measure(models=(path,), **{**SMALL, **overrides}))


@pytest.mark.parametrize("script", ["o3f_iql.py", "o3f_lapo.py"])
def test_per_state_o3f_and_noise_act_on_the_same_states_from_the_same_draws(snapshots, script):
    result = measure(snapshots[script][0])
    rows = {row["rule"]: row for row in result["rules"]}
    # sigma 0: every candidate is the base action, so O3F's pick is the noise baseline's: zero gain, exactly,
    # which holds only if both rules act on the same states from the same draw.
    o3f0 = rows["O3F N5 s0"]
    assert o3f0["true_gain"] == 0.0 and o3f0["true_gain_se"] == 0.0 and o3f0["predicted_gain"] == 0.0
    assert o3f0["true"] == rows["noise s0"]["true"]
    assert rows["O3F N5 s0.2"]["true"] != rows["noise s0.2"]["true"]  # with spread, the two rules act differently
    assert result["algorithm"] == ("iql" if script == "o3f_iql.py" else "lapo") and result["step"] == 10
    assert result["tail_weight"] == pytest.approx(0.99**6)


def test_a_model_without_optimiser_state_measures_the_same(snapshots, tmp_path):
    full = snapshots["o3f_iql.py"][1]
    state = torch.load(full, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("_optimizer")}, tmp_path / "model.pt")
    a, b = measure(full), measure(str(tmp_path / "model.pt"))
    for r in (a, b):
        r.pop("wall_s"), r.pop("model")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (sigma 0: no ranking) equal to NaN


def test_two_runs_on_the_same_model_agree(snapshots):
    a, b = measure(snapshots["o3f_iql.py"][1]), measure(snapshots["o3f_iql.py"][1])
    a.pop("wall_s"), b.pop("wall_s")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (sigma 0: no ranking) equal to NaN


def test_the_diagnostic_uses_the_scripts_policy_and_reward_units(snapshots, small_dataset):
    import o3f_iql

    agent = premise.Agent(snapshots["o3f_iql.py"][1])
    obs = np.random.default_rng(0).standard_normal((3, 17)).astype(np.float32)
    assert np.allclose(agent.policy(obs), agent.model.actor(torch.as_tensor(obs)).mean.detach().numpy())
    returns = o3f_iql.load_dataset("embedded-halfcheetah-medium", small_dataset)["episode_returns"]
    assert agent.scale_reward(1.0) == pytest.approx(
        o3f_iql.reward_transform("embedded-halfcheetah-medium", returns)(1.0)
    )


def test_measure_writes_one_json_line_per_model_and_skips_what_is_done(snapshots, tmp_path):
    out = tmp_path / "d.jsonl"
    flags = [
        "--sigmas",
        "0.2",
        "--n-candidates",
        "3",
        "--episodes",
        "1",
        "--states",
        "2",
        "--horizon",
        "2",
        "--rank-candidates",
        "2",
    ]
    command = [
        sys.executable,
        os.path.join(ROOT, "lab", "premise.py"),
        "measure",
        *snapshots["o3f_lapo.py"],
        "--out",
        str(out),
        *flags,
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20] and "| O3F N3 s0.2 |" in first.stdout
    assert [r["train_seed"] for r in lines] == [1, 1]  # the run's --seed (the script's default)
    platform = lines[0]["platform"]  # where it was measured: the scores repeat bitwise only there
    assert platform["torch"] == importlib.metadata.version("torch") and platform["gpu"] is None and platform["cpu"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("skipped") == 2 and len(out.read_text().splitlines()) == 2
    plotted = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "premise.py"), "plot", "--results", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    assert os.path.isfile(tmp_path / "premise.png")  # what it shows: test_the_pretraining_figure_draws_...
    assert (
        "| LAPO | halfcheetah-medium, 3k | 1 | 10 | 0.2 |" in plotted.stdout
    )  # one row per model and sigma, with its training seed


def test_a_model_of_another_algorithm_is_one_line(tmp_path):
    path = tmp_path / "cql.pt"
    torch.save({"algorithm": "cql"}, path)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "premise.py"), "measure", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not cql" in result.stderr


@pytest.mark.parametrize("extra", [[], ["--env-id", "embedded-halfcheetah-medium"]])
def test_a_model_without_its_task_or_arguments_is_one_line(tmp_path, extra):
    path = tmp_path / "partial.pt"
    torch.save({"algorithm": "iql", "step": 3}, path)  # no env_id, no args: not a file the scripts write
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "lab", "premise.py"), "measure", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("without env_id, args: not one this project's scripts saved")


@pytest.mark.parametrize(
    "script, other", [("o3f_iql.py", "iql_noise.py"), ("o3f_iql.py", "o3f_iql.py"), ("o3f_lapo.py", "o3f_lapo.py")]
)
def test_a_snapshot_loads_into_every_script_of_its_base_algorithm(
    snapshots, run_script, small_dataset, tmp_path, script, other
):
    snapshot = snapshots[script][0]
    result = run_script(
        other,
        "--env-id",
        "embedded-halfcheetah-medium",
        "--dataset-path",
        small_dataset,
        "--load-offline",
        snapshot,
        "--online-steps",
        3,
        "--eval-freq",
        100,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
        "--output-dir",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = glob.glob(str(tmp_path / "*" / "summary.json"))
    summary = json.load(open(summary))
    assert summary["args"]["offline_steps"] == 10  # the snapshot's step: fine-tuning starts where it was taken
    assert summary["evaluations"][0]["step"] == 10


def test_online_training_episodes_are_in_the_summary(run_script, small_dataset, tmp_path):
    result = run_script(
        "iql_noise.py",
        "--env-id",
        "embedded-halfcheetah-medium",
        "--dataset-path",
        small_dataset,
        "--offline-steps",
        5,
        "--online-steps",
        1001,
        "--eval-freq",
        5000,
        "--eval-episodes",
        1,
        "--batch-size",
        8,
        "--output-dir",
        tmp_path,
        "--snapshot-every",
        500,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = glob.glob(str(tmp_path / "*" / "summary.json"))
    episodes = json.load(open(summary))["train_episodes"]
    assert [e["step"] for e in episodes] == [1005] and all(e["length"] == 1000 for e in episodes)
    import o3f_iql

    assert episodes[0]["normalized_score"] == pytest.approx(
        o3f_iql.normalized_score("embedded-halfcheetah-medium", episodes[0]["return"])
    )
    snapshots = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*" / "snapshots" / "*.pt")))
    assert snapshots == ["step0000500.pt", "step0001000.pt"]  # --snapshot-every, online too

    # The diagnostic along fine-tuning: each online snapshot is one line, with the run it comes from, and a figure.
    premise_py = os.path.join(ROOT, "lab", "premise.py")
    out = tmp_path / "d.jsonl"
    flags = ["--sigmas", "0.2", "--n-candidates", "100", "--episodes", "1", "--states", "2", "--horizon", "2"]
    paths = sorted(glob.glob(str(tmp_path / "*" / "snapshots" / "*.pt")))
    measured = subprocess.run(
        [sys.executable, premise_py, "measure", *paths, "--out", str(out), *flags, "--rank-candidates", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert measured.returncode == 0, measured.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["phase"], r["online_steps"], r["exp_name"]) for r in lines] == [
        ("online", 495, "iql_noise"),
        ("online", 995, "iql_noise"),
    ]
    plotted = subprocess.run(
        [sys.executable, premise_py, "plot", "--results", str(out)], capture_output=True, text=True, timeout=300
    )
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    assert os.path.isfile(tmp_path / "premise_online.png") and not os.path.exists(tmp_path / "premise.png")
    # the models along fine-tuning go to the second table, one row per rule and online step
    assert (
        "| iql_noise (IQL, halfcheetah-medium, 3k data, 5 updates) | 495 | 1 |" in plotted.stdout
        and "| IQL | halfcheetah-medium, 3k |" not in plotted.stdout
    )


def test_a_maze_state_and_its_goal_restore_bit_for_bit():
    """In a maze the reward and the episode's end depend on the goal, kept by the maze around the MuJoCo simulator."""
    import o3f_iql

    env, other = o3f_iql.make_env("embedded-pointmaze-medium"), o3f_iql.make_env("embedded-pointmaze-medium")
    env.reset(seed=0), other.reset(seed=1)
    env.action_space.seed(0)
    for _ in range(5):
        env.step(env.action_space.sample())
    state = premise.save_state(env)
    actions = [env.action_space.sample() for _ in range(20)]
    first = [env.unwrapped.step(a) for a in actions]
    other.unwrapped.goal = other.unwrapped.goal + 1.0  # elsewhere, with another goal
    premise.restore_state(other, state)
    assert np.array_equal(other.unwrapped.goal, state[3])
    second = [other.unwrapped.step(a) for a in actions]
    for (o1, r1, t1, *_), (o2, r2, t2, *_) in zip(first, second):
        assert np.array_equal(o1["observation"], o2["observation"]) and (r1, t1) == (r2, t2)


def test_the_diagnostic_reads_a_maze_model(tmp_path, data_dir):
    """A tiny IQL model of the sparse-reward maze: every rule acts and is scored (success rate, 0-100)."""
    import make_datasets

    data = make_datasets.generate("embedded-pointmaze-medium", str(tmp_path / "maze.hdf5"), seed=0, transitions=3000)
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "o3f_iql.py"),
            "--no-cuda",
            "--env-id",
            "embedded-pointmaze-medium",
            "--dataset-path",
            data,
            "--offline-steps",
            "20",
            "--online-steps",
            "0",
            "--eval-episodes",
            "1",
            "--batch-size",
            "32",
            "--save-offline",
            str(tmp_path / "maze.pt"),
            "--output-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "O3F_DATA_DIR": data_dir},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    agent = premise.Agent(str(tmp_path / "maze.pt"))
    result = premise.measure_model(agent, premise.Measure(models=(str(tmp_path / "maze.pt"),), **SMALL))
    rows = {row["rule"]: row for row in result["rules"]}
    assert set(rows) == {"policy mean", "a ~ pi", "noise s0", "O3F N5 s0", "noise s0.2", "O3F N5 s0.2"}
    assert all(row["episode_score"] in (0.0, 100.0) for row in rows.values())  # one episode: failed or succeeded
    assert rows["O3F N5 s0"]["true_gain"] == 0.0  # per state, the same draw: sigma 0 picks noise's action
    # far from the goal within H = 5 steps every candidate's true return is the same: the ranking is undefined, and
    # said so, rather than a correlation with the candidates' order
    (ranking,) = [r for r in result["rank"] if r["sigma"] == 0.2]
    assert all(x["ranked_states"] == 0 and np.isnan(x["spearman"]) for x in ranking["by_horizon"])
    assert "sigma 0.2: every h: n/a (the candidates' true returns tie in every state)" in premise.table(result)


def test_the_diagnostic_measures_the_20k_mazes_model_from_any_start_cell(tmp_path, data_dir, capsys, monkeypatch):
    """`--env-id`: a model measured on another task with its data (the 20k maze's from any start cell): its episodes
    start all over the maze, its line names that task, and a task with other data is refused in one line; a model
    done on a task is skipped before its data and env load, and one of a task this code lacks is one line."""
    import make_datasets

    data = make_datasets.generate("embedded-pointmaze-large-20k", str(tmp_path / "m.hdf5"), seed=0, transitions=2000)
    command = [
        sys.executable,
        os.path.join(ROOT, "o3f_iql.py"),
        "--no-cuda",
        "--env-id",
        "embedded-pointmaze-large-20k",
    ]
    command += ["--dataset-path", data, "--offline-steps", "10", "--online-steps", "0", "--eval-episodes", "1"]
    command += ["--batch-size", "32", "--save-offline", str(tmp_path / "m.pt"), "--output-dir", str(tmp_path / "runs")]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "O3F_DATA_DIR": data_dir}
    )
    assert run.returncode == 0, run.stderr[-2000:]
    agent = premise.Agent(str(tmp_path / "m.pt"), env_id="embedded-pointmaze-large-20k-any-start")
    env = agent.script.make_env(agent.env_id)
    assert len({tuple(np.round(env.reset(seed=10_000 + i)[0][:2])) for i in range(5)}) == 5  # episode_scores' starts
    result = premise.measure_model(agent, premise.Measure(models=(str(tmp_path / "m.pt"),), **SMALL))
    assert result["env_id"] == "embedded-pointmaze-large-20k-any-start" and result["dataset_size"] == 2000
    done = tmp_path / "done.jsonl"  # a model is done per task: read on its own task, it is still to do on another
    done.write_text(json.dumps({"model": "m.pt", "env_id": "embedded-pointmaze-large-20k"}) + "\n")
    assert premise.done_models(str(done)) == {("m.pt", "embedded-pointmaze-large-20k")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        premise.Agent(str(tmp_path / "m.pt"), env_id="embedded-pointmaze-large")  # the same maze, other data
    assert refused.value.code == 2 and "not a task with its data" in capsys.readouterr().err
    model = os.path.relpath(tmp_path / "m.pt", ROOT)
    done.write_text(json.dumps({"model": model, "env_id": "embedded-pointmaze-large-20k"}) + "\n")
    with monkeypatch.context() as m:
        m.setattr(premise, "Agent", None)  # a skipped model builds no Agent (no data, no env)
        premise.measure(premise.Measure(models=(str(tmp_path / "m.pt"),), out=str(done), **SMALL))
    assert "skipped" in capsys.readouterr().err and len(done.read_text().splitlines()) == 1
    gone = tmp_path / "gone.pt"  # a model saved for a task this code no longer knows
    torch.save({**torch.load(tmp_path / "m.pt", weights_only=True), "env_id": "pointmaze-gone-v0"}, gone)
    with pytest.raises(SystemExit) as refused:
        premise.Agent(str(gone))
    assert refused.value.code == 2 and "pointmaze-gone-v0 is not a task of o3f_iql.py" in capsys.readouterr().err
