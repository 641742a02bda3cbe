"""o3f_lapo.py: LAPO with a REDQ critic ensemble, UTD online, and O3F selection."""

import collections
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

import o3f_lapo
from conftest import COMPILE, random_batch, smooth_graph_adam


class HandBuiltEnsemble(nn.Module):
    """Q_j(s, a) = values[j] for every sample; records which members each call evaluated."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.as_tensor(values, dtype=torch.float32)
        self.num_critics = len(values)  # only the ensemble size matters to the REDQ subset
        self.calls = []

    def forward(self, obs, actions, members=None):
        members = list(range(len(self.values))) if members is None else members.tolist()
        self.calls.append(members)
        return self.values[members][:, None].expand(-1, len(obs))


def test_redq_target_is_the_min_over_a_fresh_random_subset():
    qf = HandBuiltEnsemble([5.0, 1.0, 4.0, 2.0, 3.0])
    obs, actions = torch.zeros(7, 3), torch.zeros(7, 2)
    torch.manual_seed(0)
    for _ in range(50):
        target = o3f_lapo.redq_target(qf, obs, actions, num_min_q=2, doubleq_min=1.0)
        members = qf.calls[-1]
        assert len(members) == 2 and len(set(members)) == 2  # exactly num_min_q distinct critics
        assert torch.equal(target, torch.full((7,), min(qf.values[members].tolist())))
    assert len({tuple(sorted(m)) for m in qf.calls}) > 3  # the subset changes from update to update


def test_redq_targets_subset_is_uniform_over_the_pairs_of_critics():
    qf = HandBuiltEnsemble([5.0, 1.0, 4.0, 2.0, 3.0])
    torch.manual_seed(2)
    for _ in range(2000):
        o3f_lapo.redq_target(qf, torch.zeros(1, 3), torch.zeros(1, 2), num_min_q=2, doubleq_min=1.0)
    counts = collections.Counter(tuple(sorted(m)) for m in qf.calls)
    assert len(counts) == 10 and all(140 <= n <= 260 for n in counts.values())  # 200 each; 4.2 sd either side


def test_redq_target_mixes_min_and_max_with_doubleq_min():
    qf = HandBuiltEnsemble([5.0, 1.0, 4.0, 2.0, 3.0])
    torch.manual_seed(1)
    target = o3f_lapo.redq_target(qf, torch.zeros(3, 3), torch.zeros(3, 2), num_min_q=3, doubleq_min=0.7)
    chosen = qf.values[qf.calls[-1]]
    assert len(set(qf.calls[-1])) == 3
    assert torch.allclose(target, torch.full((3,), 0.7 * chosen.min().item() + 0.3 * chosen.max().item()))


def test_cvae_weight_is_tau_e_where_the_advantage_is_positive():
    weights = o3f_lapo.expectile_weight(torch.tensor([2.0, -1.0, 0.0, 1e-6]), 0.9)
    assert torch.allclose(weights, torch.tensor([0.9, 0.1, 0.1, 0.9]))


def test_kl_divergence_matches_the_closed_form():
    mu, log_var = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    expected = 0.5 * ((1.0 + 1.0 - 1.0 - 0.0) + (torch.e**2 + 0.0 - 1.0 - 2.0))
    assert o3f_lapo.kl_divergence(mu, log_var).item() == pytest.approx(float(expected))


def test_latent_action_never_leaves_its_bounds():
    policy = o3f_lapo.LatentPolicy(obs_dim=4, latent_dim=6, max_latent_action=2.0)
    z = policy(torch.randn(1000, 4) * 1e4)
    assert z.abs().max() <= 2.0 and z.abs().max() > 1.9  # saturates at the bound, never beyond


def make_agent(act_dim=2, obs_dim=3, qf=None, low=-1.0, high=1.0):
    """What the selection reads of an agent: latent policy, target decoder, normaliser, critics and bounds."""
    torch.manual_seed(0)
    normalizer = o3f_lapo.Normalizer(torch.randn(100, obs_dim).numpy(), (torch.rand(100, act_dim) * 2 - 1).numpy())
    return SimpleNamespace(
        latent_policy=o3f_lapo.LatentPolicy(obs_dim, 2 * act_dim, 2.0),
        cvae_target=o3f_lapo.CVAE(obs_dim, act_dim, 2 * act_dim),
        normalizer=normalizer,
        qf=qf,
        low=low * torch.ones(act_dim),
        high=high * torch.ones(act_dim),
    )


def selection(n, sigma=0.2, omega=0.0):
    return SimpleNamespace(n_candidates=n, sigma=sigma, omega=omega)


def test_selection_executes_the_candidate_with_the_best_score():
    class Recording(nn.Module):  # Q_j(s, c) = -|c_norm - 0.3|^2 + j: the best candidate is the one nearest 0.3
        def forward(self, obs, actions, members=None):
            self.scored = actions
            return torch.stack([-((actions - 0.3) ** 2).sum(-1) + j for j in range(5)])

    agent = make_agent(qf=Recording())
    action = o3f_lapo.select_action(agent, torch.zeros(1, 3), selection(100, sigma=0.5))
    best = (-((agent.qf.scored - 0.3) ** 2).sum(-1)).argmax()
    assert torch.allclose(agent.normalizer.action(action), agent.qf.scored[best])  # scored in LAPO's normalised units
    assert (action >= agent.low).all() and (action <= agent.high).all()


def test_one_candidate_is_one_gaussian_draw_around_the_policy_action():
    agent = make_agent(
        qf=lambda o, c, members=None: torch.zeros(5, len(c)), low=-5.0, high=5.0
    )  # with one candidate no critic matters
    obs = torch.zeros(1, 3)
    a = o3f_lapo.policy_action(agent, obs)
    torch.manual_seed(3)
    expected = (a + 0.2 * torch.randn(1, 2))[0]
    torch.manual_seed(3)
    assert torch.equal(o3f_lapo.select_action(agent, obs, selection(1)), expected)


def test_the_lapo_plus_noise_baseline_draws_n_a_sigma_squared():
    agent = make_agent(qf=lambda o, c, members=None: torch.zeros(5, len(c)), low=-5.0, high=5.0)
    obs = torch.zeros(1, 3)
    a = o3f_lapo.policy_action(agent, obs)
    torch.manual_seed(4)
    draws = torch.stack([o3f_lapo.select_action(agent, obs, selection(1)) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), a[0], atol=0.02) and torch.allclose(
        draws.std(0), torch.full((2,), 0.2), atol=0.01
    )


def full_agent(obs_dim=3, act_dim=2, v_min=-10.0, v_max=10.0, optimizer=torch.optim.Adam):
    """A whole LAPO agent on hand-made spaces and data statistics."""
    torch.manual_seed(0)
    env = SimpleNamespace(
        observation_space=gym.spaces.Box(-1, 1, (obs_dim,)), action_space=gym.spaces.Box(-1, 1, (act_dim,))
    )
    data = {
        "observations": np.random.default_rng(0).normal(size=(100, obs_dim)).astype(np.float32),
        "actions": np.random.default_rng(1).uniform(-1, 1, size=(100, act_dim)).astype(np.float32),
    }
    args = SimpleNamespace(
        max_latent_action=2.0,
        num_critics=5,
        learning_rate=1e-3,
        compile=False,
        cudagraphs=False,
        gamma=0.99,
        tau=0.005,
        num_min_q=2,
        doubleq_min=0.75,
        expectile=0.9,
        kl_beta=0.5,
    )
    agent = o3f_lapo.Agent(env, data, v_min, v_max, args, torch.device("cpu"))
    if (
        optimizer is not torch.optim.Adam
    ):  # SGD: Adam's first steps are +-lr wherever a gradient is ~0, so rounding would flip them
        agent.cvae_optimizer = optimizer(agent.cvae.parameters(), lr=1e-2)
        agent.policy_optimizer = optimizer(agent.latent_policy.parameters(), lr=1e-2)
        agent.critic_optimizer = optimizer([*agent.qf.parameters(), *agent.vf.parameters()], lr=1e-2)
    return agent, args


def test_critic_update_matches_hand_computed_losses_and_polyak_targets():
    agent, args = full_agent(v_min=-0.02, v_max=0.02)  # clamps tight enough to bind
    batch = random_batch(3)
    before = copy.deepcopy(agent)
    torch.manual_seed(7)
    losses = o3f_lapo.critic_update(agent, batch, args)

    obs, actions, rewards, next_obs, dones = batch
    n = before.normalizer
    obs, actions, next_obs = n.obs(obs), n.action(actions), n.obs(next_obs)
    with torch.no_grad():
        torch.manual_seed(7)  # the same draws: the smoothing noise, then the REDQ subset
        target_q = rewards + 0.99 * (1 - dones) * before.vf(next_obs)
        z = before.latent_policy_target(obs)
        z = z + (0.1 * torch.randn_like(z)).clamp(-0.2, 0.2)
        members = torch.rand(5).topk(2).indices
        q = before.qf_target(obs, before.cvae_target.decode(obs, z))[members]
        target_v = (0.75 * q.min(0).values + 0.25 * q.max(0).values).clamp(-0.02, 0.02)
        expected_qf = sum(((before.qf(obs, actions)[j] - target_q) ** 2).mean() for j in range(5))
        expected_vf = ((before.vf(obs) - target_v) ** 2).mean()
    assert (target_v.abs() == 0.02).any() and (target_v.abs() < 0.02).any()  # the clamp acted on some rows, not all
    assert losses["qf_loss"].item() == pytest.approx(expected_qf.item(), rel=1e-5)
    assert losses["vf_loss"].item() == pytest.approx(expected_vf.item(), rel=1e-5)
    for p, t_new, t_old in zip(agent.qf.parameters(), agent.qf_target.parameters(), before.qf_target.parameters()):
        assert torch.allclose(t_new, t_old + 0.005 * (p - t_old), atol=1e-7)
    for p_new, p_old in zip(agent.latent_policy.parameters(), before.latent_policy.parameters()):
        assert torch.equal(p_new, p_old)  # the critic step leaves the policy alone


def test_actor_update_matches_hand_computed_losses_and_polyak_targets():
    agent, args = full_agent()
    batch = random_batch(3)
    before = copy.deepcopy(agent)
    torch.manual_seed(8)
    losses = o3f_lapo.actor_update(agent, batch, args)

    obs, actions, rewards, next_obs, dones = batch
    n = before.normalizer
    obs, actions, next_obs = n.obs(obs), n.action(actions), n.obs(next_obs)
    with torch.no_grad():
        torch.manual_seed(8)  # the same draws: the REDQ subset, then the CVAE's reparameterisation noise
        members = torch.rand(5).topk(2).indices
        q = before.qf_target(next_obs, before.cvae_target.decode(next_obs, before.latent_policy_target(next_obs)))[
            members
        ]
        advantage = rewards + 0.99 * (1 - dones) * (0.75 * q.min(0).values + 0.25 * q.max(0).values) - before.vf(obs)
        weights = torch.where(advantage > 0, 0.9, 0.1)
        mu, log_var = before.cvae.encoder(torch.cat([obs, actions], -1)).chunk(2, -1)
        z = mu + torch.exp(log_var / 2) * torch.randn_like(mu)
        reconstruction = before.cvae.decoder(torch.cat([obs, z], -1))
        kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)
        expected_cvae = (weights * (((reconstruction - actions) ** 2).sum(-1) + 0.5 * kl)).mean()
        # The policy step sees the critics as they are (the actor update does not touch them) and the target decoder.
        expected_policy = -before.qf(obs, before.cvae_target.decode(obs, before.latent_policy(obs))).mean()
    assert losses["cvae_loss"].item() == pytest.approx(expected_cvae.item(), rel=1e-5)
    assert losses["policy_loss"].item() == pytest.approx(expected_policy.item(), rel=1e-5)
    assert losses["advantage_weight"].item() == pytest.approx(weights.mean().item(), rel=1e-6)
    for net, target, old_target in (
        ("cvae", "cvae_target", "cvae_target"),
        ("latent_policy", "latent_policy_target", "latent_policy_target"),
    ):
        for p, t_new, t_old in zip(
            getattr(agent, net).parameters(),
            getattr(agent, target).parameters(),
            getattr(before, old_target).parameters(),
        ):
            assert torch.allclose(t_new, t_old + 0.005 * (p - t_old), atol=1e-7)
    for p_new, p_old in zip(agent.qf.parameters(), before.qf.parameters()):
        assert torch.equal(p_new, p_old)  # the actor step leaves the critics alone


def test_compiled_updates_equal_the_eager_updates(compiled_draws_eagers_random_numbers):
    """--compile's one graph per update (a graph break fails the test) computes what eager code computes."""
    eager, args = full_agent(optimizer=smooth_graph_adam(o3f_lapo))
    compiled = copy.deepcopy(eager)
    critic, actor = (o3f_lapo.maybe_compile(fn, COMPILE) for fn in (o3f_lapo.critic_update, o3f_lapo.actor_update))
    for i in range(3):
        batch = random_batch(3)
        torch.manual_seed(i)
        expected = o3f_lapo.critic_update(eager, batch, args) | o3f_lapo.actor_update(eager, batch, args)
        torch.manual_seed(i)
        got = critic(compiled, batch, args) | actor(compiled, batch, args)
        for name in expected:
            assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-4, abs=1e-6), name
    for name in ("qf", "vf", "cvae", "latent_policy", "qf_target", "cvae_target", "latent_policy_target"):
        for p_e, p_c in zip(getattr(eager, name).parameters(), getattr(compiled, name).parameters()):
            assert torch.allclose(p_e, p_c, atol=1e-5), name


def test_a_compiled_block_of_steps_equals_the_eager_steps_one_by_one(compiled_draws_eagers_random_numbers):
    """--compile with blocks: n training steps (--utd critic updates, then the actor's, each drawing its own batch from
    the buffer) in one call, as eager code takes them one call at a time."""
    eager, args = full_agent(optimizer=smooth_graph_adam(o3f_lapo))
    compiled, batch_size = copy.deepcopy(eager), 16
    data = dict(zip(("observations", "actions", "rewards", "next_observations", "terminals"), random_batch(3, n=200)))
    rb = o3f_lapo.ReplayBuffer({k: v.numpy() for k, v in data.items()}, 200, torch.device("cpu"))

    def training_step(agent, critic_update, actor_update):
        def one_step(utd):
            for _ in range(utd):
                losses = critic_update(agent, rb.sample(batch_size), args)
            return losses | actor_update(agent, rb.sample(batch_size), args)

        return one_step

    torch.manual_seed(0)
    step = training_step(eager, o3f_lapo.critic_update, o3f_lapo.actor_update)
    expected = [step(2) for _ in range(3)][-1]
    torch.manual_seed(0)
    graphs = (o3f_lapo.maybe_compile(fn, COMPILE) for fn in (o3f_lapo.critic_update, o3f_lapo.actor_update))
    got = o3f_lapo.block_runner(training_step(compiled, *graphs), COMPILE)(3, 2)
    for name in expected:
        assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-4, abs=1e-6), name
    for name in ("qf", "vf", "cvae", "latent_policy", "qf_target"):
        for p_e, p_c in zip(getattr(eager, name).parameters(), getattr(compiled, name).parameters()):
            assert torch.allclose(p_e, p_c, atol=1e-5), name
    assert not torch.equal(next(eager.qf.parameters()), next(full_agent()[0].qf.parameters()))  # they did learn


TINY = [
    "--offline-steps",
    30,
    "--online-steps",
    10,
    "--utd",
    3,
    "--eval-freq",
    20,
    "--eval-episodes",
    1,
    "--batch-size",
    64,
    "--log-freq",
    10,
]


@pytest.fixture(scope="module")
def lapo_run(run_script, small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lapo")
    result = run_script("o3f_lapo.py", "--dataset-path", small_dataset, "--output-dir", out, *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = glob.glob(str(out / "*"))
    return run_dir


def test_utd_sets_the_critic_steps_per_env_step_online(lapo_run):
    final = torch.load(os.path.join(lapo_run, "final.pt"), weights_only=True)
    steps = lambda opt: {int(s["step"]) for s in final[opt]["state"].values()}  # noqa: E731
    assert steps("critic_optimizer") == {30 * 1 + 10 * 3}  # one per offline update, --utd 3 per env step online
    assert steps("cvae_optimizer") == steps("policy_optimizer") == {30 + 10}


def test_a_lapo_run_evaluates_offline_then_online_with_the_paper_defaults(lapo_run):
    summary = json.load(open(os.path.join(lapo_run, "summary.json")))
    assert [(e["step"], e["phase"]) for e in summary["evaluations"]] == [
        (20, "offline"),
        (30, "offline"),
        (40, "online"),
    ]
    assert summary["complete"] and summary["args"]["n_candidates"] == 100 and summary["args"]["doubleq_min"] == 1.0


def test_a_lapo_run_logs_its_losses_and_scores_to_tensorboard(lapo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(lapo_run)
    events.Reload()
    tags = {"losses/qf_loss", "losses/vf_loss", "losses/cvae_loss", "losses/policy_loss", "eval/normalized_score"}
    assert tags <= set(events.Tags()["scalars"])


def test_the_offline_model_is_saved_at_the_switch_with_five_critics(lapo_run):
    state = torch.load(os.path.join(lapo_run, "offline.pt"), weights_only=True)
    assert state["algorithm"] == "lapo" and state["step"] == 30 and state["qf"]["layers.0.weight"].shape[0] == 5


def test_the_offline_checkpoint_reloads_into_the_same_policy(run_script, small_dataset, lapo_run, tmp_path):
    result = run_script(
        "o3f_lapo.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path,
        "--load-offline",
        os.path.join(lapo_run, "offline.pt"),
        "--n-candidates",
        1,
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = glob.glob(str(tmp_path / "*" / "summary.json"))
    reloaded = json.load(open(summary))["evaluations"]
    original = json.load(open(os.path.join(lapo_run, "summary.json")))["evaluations"]
    assert reloaded[0] == original[1]  # the score at the switch, from the loaded model


def test_an_iql_checkpoint_does_not_load_into_lapo(run_script, small_dataset, tmp_path):
    torch.save({"algorithm": "iql", "env_id": "embedded-halfcheetah-medium", "step": 1}, tmp_path / "iql.pt")
    result = run_script("o3f_lapo.py", "--dataset-path", small_dataset, "--load-offline", tmp_path / "iql.pt")
    assert result.returncode == 2 and "needs o3f_lapo.py" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, word", [(["--utd", 0], "--utd"), (["--num-min-q", 6], "--num-min-q")])
def test_impossible_lapo_values(run_script, small_dataset, flags, word):
    result = run_script("o3f_lapo.py", "--dataset-path", small_dataset, *flags)
    assert result.returncode == 2 and word in result.stderr and "Traceback" not in result.stderr


def test_a_subset_of_members_gives_those_critics_rows():
    torch.manual_seed(0)
    qf = o3f_lapo.QEnsemble(obs_dim=3, act_dim=2, num_critics=5)
    obs, actions = torch.randn(4, 3), torch.randn(4, 2)
    members = torch.tensor([3, 0])
    assert torch.allclose(qf(obs, actions, members), qf(obs, actions)[members], atol=1e-6)
