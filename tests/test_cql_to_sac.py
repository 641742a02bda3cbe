"""cql_to_sac.py: CQL's conservative term, the switch to SAC, its schedules and Figure 2's Q bias."""

import copy
import glob
import json
import os
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

import cql_to_sac
import make_datasets
from conftest import COMPILE, smooth_graph_adam

ARGS = SimpleNamespace(
    gamma=0.99,
    tau=0.005,
    cql_weight=5.0,
    cql_n_actions=10,
    cql_target_gap=5.0,
    online_target_gap=0.5,
    online_steps=100,
    schedule="linear",
)


class PeakedCritic(nn.Module):
    """Q(s, a) = sign * 10 * |a - a_data|^2: peaked at the data's action (sign -1) or highest away from it (+1)."""

    def __init__(self, data_action, sign):
        super().__init__()
        self.data_action, self.sign = data_action, sign

    def forward(self, obs, actions):
        return (self.sign * 10 * ((actions - self.data_action) ** 2).sum(-1))[None]


def test_conservative_term_is_larger_when_the_critic_overrates_out_of_data_actions():
    torch.manual_seed(0)
    actor = cql_to_sac.Actor(4, 2)
    obs, next_obs = torch.randn(64, 4), torch.randn(64, 4)
    data_action = torch.zeros(2)
    actions = data_action.expand(64, -1)
    gaps = {}
    for sign in (-1, 1):
        torch.manual_seed(1)
        gaps[sign] = cql_to_sac.conservative_gap(
            PeakedCritic(data_action, sign), actor, obs, next_obs, actions, 10
        ).item()
    assert gaps[1] > gaps[-1] + 10  # pushing down Q off the data costs more where Q is high off the data


def test_conservative_gap_is_logsumexp_minus_data_q_for_a_constant_critic():
    # A constant critic Q = c: the gap is the log of the summed inverse densities of the proposals.
    class Constant(nn.Module):
        def forward(self, obs, actions):
            return torch.full((1, len(obs)), 3.0)

    class FixedDensity(nn.Module):  # a "policy" whose samples have log-density 0
        def forward(self, obs):
            return torch.zeros(len(obs), 2), torch.zeros(len(obs))

    gap = cql_to_sac.conservative_gap(
        Constant(), FixedDensity(), torch.zeros(8, 4), torch.zeros(8, 4), torch.zeros(8, 2), 10
    )
    # 10 uniform draws with density 0.25 and 20 policy draws with density 1: log(10 * 4 + 20) + 3 - 3
    assert gap.item() == pytest.approx(np.log(10 * 4 + 20), rel=1e-5)


def make_learner(seed=0, optimizer=None):
    """A whole CQL/SAC agent on hand-made spaces (Adam with lr 1e-2, or `optimizer`), and a batch."""
    torch.manual_seed(seed)
    env = SimpleNamespace(observation_space=gym.spaces.Box(-1, 1, (4,)), action_space=gym.spaces.Box(-1, 1, (2,)))
    args = SimpleNamespace(**vars(ARGS), policy_lr=1e-2, q_lr=1e-2, compile=False, cudagraphs=False)
    agent = cql_to_sac.Agent(env, args, torch.device("cpu"))
    if optimizer is not None:  # SGD: Adam's first steps are +-lr wherever a gradient is ~0, so rounding would flip them
        for name in ("actor", "q", "alpha", "alpha_prime"):
            net = getattr(agent, {"q": "qf"}.get(name, name))
            setattr(agent, f"{name}_optimizer", optimizer(net.parameters(), lr=1e-2))
    batch = (
        torch.randn(32, 4),
        torch.rand(32, 2) * 2 - 1,
        torch.randn(32),
        torch.randn(32, 4),
        (torch.rand(32) < 0.3).float(),
    )
    return agent, batch


def test_cql_update_matches_hand_computed_losses_and_polyak_targets():
    agent, batch = make_learner()
    obs, actions, rewards, next_obs, dones = batch
    before = copy.deepcopy(agent)
    torch.manual_seed(9)
    losses = cql_to_sac.cql_update(agent, batch, True, 5.0, ARGS)

    with torch.no_grad():
        torch.manual_seed(9)  # the same draws, in the update's order
        next_actions, next_log_prob = before.actor(next_obs)
        next_v = before.qf_target(next_obs, next_actions).min(0).values - 1.0 * next_log_prob  # alpha = exp(0)
        td_target = rewards + 0.99 * (1 - dones) * next_v
        q = before.qf(obs, actions)
        expected_td = ((q[0] - td_target) ** 2).mean() + ((q[1] - td_target) ** 2).mean()
        gap = 5.0 * cql_to_sac.conservative_gap(before.qf, before.actor, obs, next_obs, actions, 10)
        expected_qf = expected_td + (1.0 * (gap - 5.0)).sum()  # alpha' = exp(0) before its step
        pi_actions, log_prob = before.actor(obs)  # the actor's step sees the critics after theirs
        expected_actor = (1.0 * log_prob - agent.qf(obs, pi_actions).min(0).values).mean()
    assert losses["td_loss"].item() == pytest.approx(expected_td.item(), rel=1e-5)
    assert losses["cql_gap"].item() == pytest.approx(gap.mean().item(), rel=1e-5)
    assert losses["qf_loss"].item() == pytest.approx(expected_qf.item(), rel=1e-5)
    assert losses["actor_loss"].item() == pytest.approx(expected_actor.item(), rel=1e-5)
    for p, t_new, t_old in zip(agent.qf.parameters(), agent.qf_target.parameters(), before.qf_target.parameters()):
        assert torch.allclose(t_new, t_old + 0.005 * (p - t_old), atol=1e-7)


@pytest.mark.parametrize("target_gap, grows", [(-1000.0, True), (1000.0, False)])
def test_the_lagrange_multiplier_grows_while_the_gap_exceeds_the_threshold(target_gap, grows):
    agent, batch = make_learner()
    before = agent.alpha_prime.log_value.item()
    losses = cql_to_sac.cql_update(agent, batch, True, target_gap, ARGS)
    assert (agent.alpha_prime.log_value.item() > before) == grows
    assert (losses["cql_gap"].item() > target_gap) == grows


def test_online_sac_has_no_conservative_term():
    agent, batch = make_learner()
    before = agent.alpha_prime.log_value.item()
    losses = cql_to_sac.cql_update(agent, batch, False, 5.0, ARGS)
    assert "cql_gap" not in losses and losses["qf_loss"].item() == losses["td_loss"].item()
    assert agent.alpha_prime.log_value.item() == before  # untouched online under SAC


def test_compiled_update_equals_the_eager_update(compiled_draws_eagers_random_numbers):
    """--compile's one graph, CQL's and SAC's (a graph break fails the test), computes what eager does."""
    eager, _ = make_learner(optimizer=smooth_graph_adam(cql_to_sac))
    compiled = copy.deepcopy(eager)
    update = cql_to_sac.maybe_compile(cql_to_sac.cql_update, COMPILE)
    for i, conservative in enumerate((True, True, False)):  # both phases, as at the switch
        _, batch = make_learner(seed=10 + i)
        torch.manual_seed(i)
        expected = cql_to_sac.cql_update(eager, batch, conservative, 5.0, ARGS)
        torch.manual_seed(i)
        got = update(compiled, batch, conservative, 5.0, ARGS)
        for name in expected:
            assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-4, abs=1e-6), name
    for name in ("actor", "qf", "qf_target", "alpha", "alpha_prime"):
        for p_e, p_c in zip(getattr(eager, name).parameters(), getattr(compiled, name).parameters()):
            assert torch.allclose(p_e, p_c, atol=1e-5), name


def test_the_linear_schedule_moves_from_the_offline_to_the_online_threshold():
    assert cql_to_sac.target_gap_at(0, ARGS) == 5.0
    assert cql_to_sac.target_gap_at(50, ARGS) == pytest.approx(2.75)
    assert cql_to_sac.target_gap_at(100, ARGS) == pytest.approx(0.5)  # the end value at the last online step


def test_the_abrupt_schedule_is_at_its_end_value_from_the_first_online_step():
    abrupt = SimpleNamespace(**{**vars(ARGS), "schedule": "abrupt"})
    assert cql_to_sac.target_gap_at(1, abrupt) == 0.5


def test_without_an_online_threshold_the_offline_one_stays():
    same = SimpleNamespace(**{**vars(ARGS), "online_target_gap": None})
    assert cql_to_sac.target_gap_at(100, same) == 5.0


def test_monte_carlo_returns_match_a_hand_computed_discounted_sum():
    assert cql_to_sac.discounted_returns(np.array([1.0, 2.0, 3.0]), 0.5).tolist() == [1 + 1 + 0.75, 2 + 1.5, 3]


def test_time_limit_ends_keep_only_pairs_whose_return_is_exact_enough():
    # gamma 0.5, tolerance 1%: the tail beyond 7 steps weighs 0.5^7 < 0.01, so a cut episode of 10 keeps 3 pairs.
    assert cql_to_sac.exact_enough(10, terminated=False, gamma=0.5).tolist() == [True] * 3 + [False] * 7
    assert cql_to_sac.exact_enough(10, terminated=True, gamma=0.5).all()
    bias, q, g = cql_to_sac.q_bias(np.full(10, 2.0), [1.0] * 10, terminated=False, gamma=0.5)
    assert len(bias) == 3
    assert np.allclose(g, [(1 - 0.5 ** (10 - t)) / 0.5 for t in range(3)]) and np.allclose(bias, 2.0 - g)


@pytest.fixture(scope="module")
def maze_dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("maze") / "maze.hdf5")
    return make_datasets.generate("embedded-pointmaze-medium", path, seed=0, transitions=2000)


def run_cql(run_script, maze_dataset, out, *flags):
    result = run_script(
        "cql_to_sac.py",
        "--env-id",
        "embedded-pointmaze-medium",
        "--dataset-path",
        maze_dataset,
        "--output-dir",
        out,
        "--offline-steps",
        40,
        "--online-steps",
        620,
        "--eval-freq",
        40,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
        "--cql-n-actions",
        2,
        "--switch-window",
        20,
        "--log-freq",
        100,
        *flags,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = glob.glob(str(out / "*"))
    return run_dir


@pytest.fixture(scope="module")
def switch_run(run_script, maze_dataset, tmp_path_factory):
    """One CQL -> SAC run across the switch: 40 offline updates, then 620 online steps (one whole episode)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run_cql(run_script, maze_dataset, tmp_path_factory.mktemp("switch"))
    events = EventAccumulator(run_dir)
    events.Reload()
    return json.load(open(os.path.join(run_dir, "summary.json"))), events, run_dir


def test_every_evaluation_records_score_q_bias_and_critic_loss_on_both_sides_of_the_switch(switch_run):
    summary, _, _ = switch_run
    assert summary["evaluations"][0]["phase"] == "offline" and summary["evaluations"][-1]["phase"] == "online"
    for e in summary["evaluations"]:
        assert {"normalized_score", "return", "q_bias", "q_ratio", "critic_loss"} <= set(e) and e["critic_loss"] > 0
    assert torch.load(os.path.join(switch_run[2], "offline.pt"), weights_only=True)["algorithm"] == "cql"


def test_each_online_episode_records_its_q_bias(switch_run):
    summary, events, _ = switch_run
    (episode,) = summary["online_episodes"]  # one 600-step online episode completed
    assert episode["step"] == 40 + 600 and episode["q_bias"] == pytest.approx(episode["q"] - episode["mc_return"])
    assert {"diagnostics/q_bias", "eval/q_bias", "eval/normalized_score"} <= set(events.Tags()["scalars"])


def test_the_conservative_term_ends_at_the_switch_and_the_critic_loss_is_logged_finely_around_it(switch_run):
    _, events, _ = switch_run
    gap_steps = [e.step for e in events.Scalars("losses/cql_gap")]
    td_steps = [e.step for e in events.Scalars("losses/td_loss")]
    assert gap_steps and max(gap_steps) <= 40
    assert {20, 30, 40, 50, 60} <= set(td_steps)  # every 10 steps within --switch-window of the switch


def test_same_objective_online_keeps_the_conservative_term_on_its_schedule(run_script, maze_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run_cql(
        run_script,
        maze_dataset,
        tmp_path,
        "--online-objective",
        "cql",
        "--online-target-gap",
        0.5,
        "--schedule",
        "linear",
    )
    events = EventAccumulator(run_dir)
    events.Reload()
    assert max(e.step for e in events.Scalars("losses/cql_gap")) == 600  # still there online (last log step)
    gaps = {e.step: e.value for e in events.Scalars("losses/target_gap")}
    assert gaps[40] == 5.0 and gaps[600] == pytest.approx(5.0 - 4.5 * 560 / 620, rel=1e-4)


def test_a_target_gap_without_the_cql_objective_is_refused(run_script, maze_dataset):
    result = run_script(
        "cql_to_sac.py",
        "--env-id",
        "embedded-pointmaze-medium",
        "--dataset-path",
        maze_dataset,
        "--online-target-gap",
        0.5,
    )
    assert result.returncode == 2 and "--online-objective cql" in result.stderr and "Traceback" not in result.stderr
