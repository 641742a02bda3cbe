"""IQL's losses against hand-computed values, and the data conventions they rely on."""

import contextlib
import copy
import glob
import json
import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import o3f_iql
from conftest import COMPILE, random_batch, smooth_graph_adam, stand_in_cuda_graphs, write_d4rl


def test_expectile_loss_weights_positive_and_negative_errors_asymmetrically():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # 0.7 on positive errors, 0.3 on negative ones: (0.7*4 + 0.3*1 + 0.7*0.25 + 0.3*9) / 4
    expected = (0.7 * 4 + 0.3 * 1 + 0.7 * 0.25 + 0.3 * 9) / 4
    assert o3f_iql.expectile_loss(diff, 0.7).item() == pytest.approx(expected)


def test_expectile_one_half_is_half_the_mean_squared_error():
    diff = torch.randn(100)
    assert o3f_iql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item(), rel=1e-6)


def test_awr_weight_is_exp_beta_advantage_clipped_at_100():
    weights = o3f_iql.awr_weight(torch.tensor([0.0, 1.0, -1.0, 10.0]), beta=3.0)
    assert weights.tolist() == pytest.approx([1.0, math.exp(3.0), math.exp(-3.0), 100.0], rel=1e-6)


def test_ensemble_has_independent_critics():
    """Critic j is an MLP of its own: its output is its own weights' forward pass, and nothing else moves it."""
    torch.manual_seed(0)
    qf = o3f_iql.QEnsemble(obs_dim=4, act_dim=2, num_critics=5)
    obs, act = torch.randn(8, 4), torch.randn(8, 2)
    q = qf(obs, act)
    assert q.shape == (5, 8)
    for j in range(5):  # by hand: relu(x W1 + b1) -> relu(. W2 + b2) -> . W3 + b3, with member j's weights
        x = torch.cat([obs, act], -1)
        for k, layer in enumerate(qf.layers):
            x = x @ layer.weight[j] + layer.bias[j]
            x = x.relu() if k < len(qf.layers) - 1 else x
        assert torch.allclose(q[j], x.squeeze(-1), atol=1e-6)
    with torch.no_grad():
        qf.layers[0].weight[2] += 1.0  # change critic 2 only
    moved = (qf(obs, act) != q).any(1)
    assert moved.tolist() == [False, False, True, False, False]


def write_d4rl_file(path, with_next_observations):
    # Two episodes: a 3-step one cut by a time limit, then a 2-step one that terminates.
    obs = np.arange(5, dtype=np.float32)[:, None].repeat(2, 1)
    more = {"next_observations": obs + 100} if with_next_observations else {}
    write_d4rl(
        path,
        obs,
        np.zeros((5, 1)),
        [1, 2, 3, 10, 20],
        [0, 0, 0, 0, 1],
        timeouts=np.array([0, 0, 1, 0, 0], bool),
        **more,
    )


def test_loader_keeps_timeouts_bootstrapped_and_terminals_terminal(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl_file(path, with_next_observations=True)
    data = o3f_iql.load_dataset("halfcheetah-medium-v2", str(path))
    assert data["terminals"].tolist() == [0, 0, 0, 0, 1]  # the time-limit end is not terminal
    assert data["next_observations"][:, 0].tolist() == [100, 101, 102, 103, 104]
    assert sorted(data["episode_returns"].tolist()) == [6, 30]


def test_loader_derives_next_observations_and_drops_time_limit_ends(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl_file(path, with_next_observations=False)
    data = o3f_iql.load_dataset("halfcheetah-medium-v2", str(path))
    # Rows 0, 1 and 3 have a stored successor; row 2 ends by time limit, row 4 is the file's last.
    assert data["observations"][:, 0].tolist() == [0, 1, 3]
    assert data["next_observations"][:, 0].tolist() == [1, 2, 4]
    assert data["rewards"].tolist() == [1, 2, 10]


def test_locomotion_rewards_are_scaled_by_the_range_of_episode_returns():
    scale = o3f_iql.reward_transform("halfcheetah-medium-v2", np.array([100.0, 300.0, 600.0]))
    assert scale(np.float32(5.0)) == pytest.approx(5.0 * 1000 / 500)
    assert o3f_iql.reward_transform("antmaze-large-diverse-v2", np.array([0.0, 1.0]))(1.0) == 0.0


def test_normalized_score_uses_d4rl_reference_returns():
    assert o3f_iql.normalized_score("halfcheetah-medium-v2", -280.178953) == pytest.approx(0.0)
    assert o3f_iql.normalized_score("embedded-halfcheetah-random", 12135.0) == pytest.approx(100.0)


def iql_agent(obs_dim=4, act_dim=2, optimizer=None):
    """A whole IQL agent on hand-made spaces (Adam, or `optimizer` with lr 1e-2)."""
    torch.manual_seed(0)
    env = SimpleNamespace(
        observation_space=gym.spaces.Box(-1, 1, (obs_dim,)), action_space=gym.spaces.Box(-1, 1, (act_dim,))
    )
    args = SimpleNamespace(
        num_critics=5,
        learning_rate=1e-3,
        compile=False,
        cudagraphs=False,
        expectile=0.7,
        beta=3.0,
        gamma=0.99,
        tau=0.005,
    )
    agent = o3f_iql.Agent(env, args, torch.device("cpu"))
    if optimizer is not None:  # SGD: Adam's first steps are +-lr wherever a gradient is ~0, so rounding would flip them
        for name, net in (("actor", agent.actor), ("q", agent.qf), ("v", agent.vf)):
            setattr(agent, f"{name}_optimizer", optimizer(net.parameters(), lr=1e-2))
    return agent, args


def test_iql_update_matches_hand_computed_losses_and_polyak_targets():
    agent, args = iql_agent()
    batch = obs, actions, rewards, next_obs, dones = random_batch(4)
    before = copy.deepcopy(agent)

    losses = o3f_iql.iql_update(agent, batch, 0.7, args)

    with torch.no_grad():
        min_q = before.qf_target(obs, actions).min(0).values
        diff = min_q - before.vf(obs)
        expected_vf = (torch.where(diff > 0, 0.7, 0.3) * diff**2).mean()
        # The actor and the critics use V after its step (agent.vf now holds it; nothing changes it afterwards).
        weights = torch.exp(3.0 * (min_q - agent.vf(obs))).clamp(max=100)
        expected_actor = -(weights * before.actor(obs).log_prob(actions).sum(-1)).mean()
        td_target = rewards + 0.99 * (1 - dones) * agent.vf(next_obs)
        expected_qf = sum(((before.qf(obs, actions)[j] - td_target) ** 2).mean() for j in range(5))
    assert losses["vf_loss"].item() == pytest.approx(expected_vf.item(), rel=1e-5)
    assert losses["actor_loss"].item() == pytest.approx(expected_actor.item(), rel=1e-5)
    assert losses["qf_loss"].item() == pytest.approx(expected_qf.item(), rel=1e-5)
    for p, t_new, t_old in zip(agent.qf.parameters(), agent.qf_target.parameters(), before.qf_target.parameters()):
        assert torch.allclose(t_new, t_old + 0.005 * (p - t_old), atol=1e-7)


def test_batched_ensemble_is_m_independent_mlps():
    torch.manual_seed(0)
    qf = o3f_iql.QEnsemble(obs_dim=4, act_dim=2, num_critics=3)
    obs, act = torch.randn(6, 4), torch.randn(6, 2)
    x = torch.cat([obs, act], -1)
    for j in range(3):  # critic j by hand: relu(relu(x W1 + b1) W2 + b2) W3 + b3 with its own slice of every layer
        h = x
        for k, layer in enumerate(qf.layers):
            h = h @ layer.weight[j] + layer.bias[j]
            h = h.relu() if k < len(qf.layers) - 1 else h
        assert torch.allclose(qf(obs, act)[j], h.squeeze(-1), atol=1e-6)
    # nn.Linear's initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), independently per critic
    first = qf.layers[0].weight
    assert first.abs().max() <= 6**-0.5 and first.abs().max() > 0.9 * 6**-0.5
    assert not torch.allclose(first[0], first[1])


def test_compiled_update_equals_the_eager_update(traced_whole):
    """--compile's one graph (a graph break, which would run eager code instead, fails the test) computes what eager
    code computes."""
    eager, args = iql_agent(optimizer=smooth_graph_adam(o3f_iql))
    compiled = copy.deepcopy(eager)
    update = o3f_iql.maybe_compile(o3f_iql.iql_update, COMPILE)
    for _ in range(3):
        batch = random_batch(4)
        expected = o3f_iql.iql_update(eager, batch, 0.7, args)
        got = update(compiled, batch, 0.7, args)
        for name in expected:
            assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-4, abs=1e-6)
    for name in ("actor", "qf", "qf_target", "vf"):
        for p_e, p_c in zip(getattr(eager, name).parameters(), getattr(compiled, name).parameters()):
            assert torch.allclose(p_e, p_c, atol=1e-6)


def schedule(**values):
    return SimpleNamespace(
        **{"expectile": 0.7, "online_expectile": 0.85, "online_steps": 100, "schedule": "linear", **values}
    )


def test_the_linear_expectile_schedule_reaches_its_end_value_at_the_last_online_step():
    assert o3f_iql.expectile_at(0, schedule()) == 0.7  # offline
    assert o3f_iql.expectile_at(50, schedule()) == pytest.approx(0.775)
    assert o3f_iql.expectile_at(100, schedule()) == pytest.approx(0.85)


def test_the_abrupt_expectile_schedule_is_at_its_end_value_from_the_first_online_step():
    assert o3f_iql.expectile_at(0, schedule(schedule="abrupt")) == 0.7
    assert o3f_iql.expectile_at(1, schedule(schedule="abrupt")) == 0.85


def test_without_an_online_expectile_the_offline_one_stays():
    for kind in ("abrupt", "linear"):
        assert o3f_iql.expectile_at(100, schedule(online_expectile=None, schedule=kind)) == 0.7


def test_the_update_regresses_v_at_the_expectile_it_is_given():
    agent, args = iql_agent()
    batch = obs, actions, *_ = random_batch(4)
    before = copy.deepcopy(agent)
    losses = o3f_iql.iql_update(agent, batch, 0.85, args)  # args.expectile is 0.7: the argument wins
    with torch.no_grad():
        diff = before.qf_target(obs, actions).min(0).values - before.vf(obs)
        expected = (torch.where(diff > 0, 0.85, 0.15) * diff**2).mean()
    assert losses["vf_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def evaluations(run_script, small_dataset, out, *flags):
    result = run_script(
        "iql_noise.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        out,
        "--offline-steps",
        40,
        "--online-steps",
        40,
        "--eval-freq",
        20,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
        *flags,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = glob.glob(str(out / "*" / "summary.json"))
    return [e["normalized_score"] for e in json.load(open(path))["evaluations"]]


def test_the_default_run_is_the_run_whose_expectile_stays(run_script, small_dataset, tmp_path):
    """iql_noise.py's default is unchanged by the schedule: a linear move from 0.7 to 0.7 gives the same history,
    and a move to 0.85 leaves the offline phase alone and changes the online one."""
    default = evaluations(run_script, small_dataset, tmp_path / "a")
    assert (
        evaluations(run_script, small_dataset, tmp_path / "b", "--online-expectile", 0.7, "--schedule", "linear")
        == default
    )
    moved = evaluations(run_script, small_dataset, tmp_path / "c", "--online-expectile", 0.85)
    assert moved[:2] == default[:2] and moved[2:] != default[2:]  # evaluations at 20, 40 (offline), then 60, 80


class FakeGraph:
    """torch.cuda.CUDAGraph as a CPU test sees it: what is captured is recorded, not run, and runs at each replay."""

    capturing = None

    def __init__(self):
        self.recorded = []

    def replay(self):
        for op in self.recorded:
            op()


@contextlib.contextmanager
def fake_capture(graph, pool):
    assert pool == "the pool"  # every graph records into one memory pool
    FakeGraph.capturing = graph
    yield
    FakeGraph.capturing = None


def test_cuda_graph_blocks_warm_up_record_once_per_shape_then_replay(monkeypatch):
    """--cudagraphs: the first two calls of a block with the same n and bool/int inputs run their n steps as they are
    (the warm-up: a compiled update compiles at its first call); the third runs its n steps and records n more without
    running them; each later call replays them, reading float inputs from device tensors allocated once and written
    before the replay, and hands back copies of the graph's outputs (the next replay overwrites the graph's own). Only
    --block steps and one step are recorded: another n (a remainder at a boundary) runs as n calls of one step."""
    zeros, allocated = torch.zeros, []
    monkeypatch.setattr(torch, "zeros", lambda *size, device=None, **kw: allocated.append(device) or zeros(*size, **kw))
    stand_in_cuda_graphs(monkeypatch, FakeGraph, fake_capture, pool="the pool")
    ran, recorded = [], []

    def step(scale, double):  # a training step whose effect is to note scale (x2 if double) and return it
        out = zeros(())

        def run():
            ran.append(float(scale) * (2 if double else 1))
            out.fill_(ran[-1])

        FakeGraph.capturing.recorded.append(run) if FakeGraph.capturing else run()
        recorded.append(FakeGraph.capturing is not None)
        return {"loss": out}

    updates = o3f_iql.block_runner(step, SimpleNamespace(cudagraphs=True, block=3))
    first = updates(3, 0.5, True)
    assert ran == [1.0] * 3 and first["loss"].item() == 1.0 and not any(recorded)  # warm-up: the call's own 3 steps
    updates(3, 0.25, True)
    assert ran[3:] == [0.5] * 3 and not any(recorded)  # still warming up, with the new float
    third = updates(3, 0.75, True)
    assert ran[6:] == [1.5] * 3 and third["loss"].item() == 1.5 and recorded[-3:] == [True] * 3  # ran, then recorded
    assert len(ran) == 9  # the 3 recorded steps did not run
    fourth = updates(3, 0.25, True)
    assert ran[9:] == [0.5] * 3 and fourth["loss"].item() == 0.5  # a replay, with the new float
    updates(3, 1.0, True)
    assert ran[12:] == [2.0] * 3 and fourth["loss"].item() == 0.5  # the earlier result is a copy the replay left alone
    assert allocated == ["cuda"]  # the float input's device tensor, allocated once (the step's own zeros aside)
    updates(2, 0.25, False)  # a remainder, another bool: two calls of one step, warming up that step's graph
    assert ran[15:] == [0.25, 0.25] and len(recorded) == 3 * 3 + 3 + 2 and not any(recorded[-2:])
    last = updates(2, 0.5, False)  # the third call of one step records it (after running it), the fourth replays it
    assert ran[17:] == [0.5, 0.5] and recorded[-2:] == [False, True] and last["loss"].item() == 0.5
    assert allocated == ["cuda"]  # every graph reads its float input from the one device tensor, written before
    eager = o3f_iql.block_runner(step, SimpleNamespace(cudagraphs=False))(2, 0.5, False)
    assert ran[19:] == [0.5, 0.5] and eager["loss"].item() == 0.5  # eager and --compile: a loop
