"""o3f_lapo.py: LAPO with a REDQ critic ensemble, UTD online, and O3F selection."""
import glob
import json
import os

import pytest
import torch
import torch.nn as nn

import o3f_lapo


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


def make_agent(act_dim=2, obs_dim=3):
    torch.manual_seed(0)
    normalizer = o3f_lapo.Normalizer(torch.randn(100, obs_dim).numpy(), (torch.rand(100, act_dim) * 2 - 1).numpy())
    return (o3f_lapo.LatentPolicy(obs_dim, 2 * act_dim, 2.0), o3f_lapo.CVAE(obs_dim, act_dim, 2 * act_dim), normalizer)


def test_selection_executes_the_candidate_with_the_best_score():
    latent_policy, cvae, normalizer = make_agent()

    class Recording(nn.Module):  # Q_j(s, c) = -|c_norm - 0.3|^2 + j: the best candidate is the one nearest 0.3
        def forward(self, obs, actions, members=None):
            self.scored = actions
            return torch.stack([-((actions - 0.3) ** 2).sum(-1) + j for j in range(5)])

    qf = Recording()
    low, high = -torch.ones(2), torch.ones(2)
    action = o3f_lapo.select_action(latent_policy, cvae, normalizer, qf, torch.zeros(1, 3), 100, 0.5, 0.0, low, high)
    best = (-((qf.scored - 0.3) ** 2).sum(-1)).argmax()
    assert torch.allclose(normalizer.action(action), qf.scored[best])  # scored in LAPO's normalised units
    assert (action >= low).all() and (action <= high).all()


def test_one_candidate_is_the_lapo_plus_noise_baseline():
    latent_policy, cvae, normalizer = make_agent()
    obs, low, high = torch.zeros(1, 3), -5 * torch.ones(2), 5 * torch.ones(2)
    a = o3f_lapo.policy_action(latent_policy, cvae, normalizer, obs)
    torch.manual_seed(3)
    expected = (a + 0.2 * torch.randn(1, 2))[0]
    qf = lambda o, c, members=None: torch.zeros(5, len(c))  # noqa: E731, any critic: with one candidate it cannot matter
    torch.manual_seed(3)
    action = o3f_lapo.select_action(latent_policy, cvae, normalizer, qf, obs, 1, 0.2, 0.0, low, high)
    assert torch.equal(action, expected)  # exactly one N(a, sigma^2) draw
    torch.manual_seed(4)
    draws = torch.stack([o3f_lapo.select_action(latent_policy, cvae, normalizer, qf, obs, 1, 0.2, 0.0, low, high) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), a[0], atol=0.02) and torch.allclose(draws.std(0), torch.full((2,), 0.2), atol=0.01)


TINY = ["--offline-steps", 30, "--online-steps", 10, "--utd", 3, "--eval-freq", 20, "--eval-episodes", 1,
        "--batch-size", 64, "--log-freq", 10]


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


def test_a_lapo_run_writes_events_summary_and_checkpoints(lapo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = json.load(open(os.path.join(lapo_run, "summary.json")))
    assert [(e["step"], e["phase"]) for e in summary["evaluations"]] == [(20, "offline"), (30, "offline"), (40, "online")]
    assert summary["complete"] and summary["args"]["n_candidates"] == 100 and summary["args"]["doubleq_min"] == 1.0
    events = EventAccumulator(lapo_run)
    events.Reload()
    assert {"losses/qf_loss", "losses/vf_loss", "losses/cvae_loss", "losses/policy_loss", "eval/normalized_score"} <= set(events.Tags()["scalars"])
    state = torch.load(os.path.join(lapo_run, "offline.pt"), weights_only=True)
    assert state["algorithm"] == "lapo" and state["step"] == 30 and state["qf"]["layers.0.weight"].shape[0] == 5  # 5 critics


def test_the_offline_checkpoint_reloads_into_the_same_policy(run_script, small_dataset, lapo_run, tmp_path):
    result = run_script("o3f_lapo.py", "--dataset-path", small_dataset, "--output-dir", tmp_path, "--load-offline",
                        os.path.join(lapo_run, "offline.pt"), "--n-candidates", 1, *TINY)
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
