"""O3F's action selection (Algorithm 1 lines 2-4, Eq. 2) and the noise baseline."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal

import iql_noise
import o3f_iql

ACT_DIM = 3
LOW, HIGH = -torch.ones(ACT_DIM), torch.ones(ACT_DIM)


class FixedPolicy(nn.Module):
    """pi(s) that proposes `mean` (with a negligible spread)."""

    def __init__(self, mean, std=1e-6):
        super().__init__()
        self.mean, self.std = torch.as_tensor(mean, dtype=torch.float32), std

    def forward(self, obs):
        return Normal(self.mean.expand(obs.shape[0], -1), self.std)


class HandBuiltEnsemble(nn.Module):
    """m critics with hand-set Q_j(s, c) = value(c) + offsets[j] * spread(c); records what it scored."""

    def __init__(self, value, spread, offsets):
        super().__init__()
        self.value, self.spread, self.offsets = value, spread, torch.as_tensor(offsets, dtype=torch.float32)
        self.scored = None

    def forward(self, obs, actions):
        self.scored = actions.clone()
        return self.value(actions)[None] + self.offsets[:, None] * self.spread(actions)[None]


def agent(policy, qf=None, low=LOW, high=HIGH):
    """What the selection reads of an agent: the policy, the critics and the action bounds."""
    return SimpleNamespace(actor=policy, qf=qf, low=low, high=high)


def select(qf, n=100, sigma=0.5, omega=0.0, policy_mean=(0.1, -0.2, 0.3), low=LOW, high=HIGH):
    args = SimpleNamespace(n_candidates=n, sigma=sigma, omega=omega)
    return o3f_iql.select_action(agent(FixedPolicy(policy_mean), qf, low, high), torch.zeros(1, 4), args)


def test_selects_the_candidate_with_the_best_mean_q():
    target = torch.tensor([0.4, 0.0, -0.3])
    qf = HandBuiltEnsemble(
        value=lambda c: -((c - target) ** 2).sum(-1), spread=lambda c: c[:, 0], offsets=[1, -1, 2, -2, 0]
    )
    torch.manual_seed(0)
    action = select(qf)
    best = qf.scored[(-((qf.scored - target) ** 2).sum(-1)).argmax()]
    assert qf.scored.shape == (100, ACT_DIM)
    assert torch.equal(action, best)


def test_omega_prefers_the_higher_spread_candidate_when_means_tie():
    # Every candidate has mean Q = 0; the ensemble disagrees in proportion to |c_0|.
    qf = HandBuiltEnsemble(value=lambda c: torch.zeros(len(c)), spread=lambda c: c[:, 0], offsets=[1, -1, 2, -2, 0])
    torch.manual_seed(1)
    action = select(qf, omega=1.0)
    assert torch.equal(action, qf.scored[qf.scored[:, 0].abs().argmax()])
    assert action[0].abs() == qf.scored[:, 0].abs().max()


def test_omega_zero_ignores_the_spread():
    # Mean Q favours the candidate nearest 0 in the first coordinate; a large spread must not win.
    qf = HandBuiltEnsemble(value=lambda c: -c[:, 0].abs(), spread=lambda c: 10 * c[:, 0], offsets=[1, -1, 2, -2, 0])
    torch.manual_seed(2)
    action = select(qf, omega=0.0)
    assert action[0].abs() == qf.scored[:, 0].abs().min()


@pytest.mark.parametrize("omega, expect_positive", [(0.4, True), (0.6, False)])  # 1.0 vs 0.5 + omega * 1.0
def test_score_uses_the_ensemble_standard_deviation(omega, expect_positive):
    # Kind A (first coordinate > 0): mean 1.0, no spread; kind B: mean 0.5, population std 1.0 (values 1.5 and -0.5).
    qf = HandBuiltEnsemble(
        value=lambda c: torch.where(c[:, 0] > 0, 1.0, 0.5),
        spread=lambda c: torch.where(c[:, 0] > 0, 0.0, 1.0),
        offsets=[1.0, -1.0],
    )
    torch.manual_seed(3)
    for _ in range(20):
        action = select(qf, n=50, sigma=1.0, omega=omega, policy_mean=(0.0, 0.0, 0.0))
        # 50 draws around 0 hold both kinds (a miss has probability 2 * 0.5^50): the test always compares them
        assert (qf.scored[:, 0] > 0).any() and (qf.scored[:, 0] <= 0).any()
        assert (action[0] > 0) == expect_positive


def test_every_candidate_is_inside_the_action_bounds():
    low, high = torch.tensor([-0.5, -1.0, 0.0]), torch.tensor([0.3, 1.0, 0.2])
    qf = HandBuiltEnsemble(value=lambda c: c.sum(-1), spread=lambda c: c[:, 0], offsets=[1, -1])
    torch.manual_seed(4)
    action = select(qf, n=1000, sigma=3.0, low=low, high=high)
    assert (qf.scored >= low).all() and (qf.scored <= high).all()
    assert (action >= low).all() and (action <= high).all()
    assert (qf.scored == low).any() and (qf.scored == high).any()  # clipped, not resampled


def test_one_candidate_without_optimism_is_the_noise_baseline():
    """O3F with N = 1, omega = 0 draws exactly what iql_noise.py draws, from the same random stream."""
    qf = HandBuiltEnsemble(value=lambda c: c.sum(-1), spread=lambda c: c[:, 0], offsets=[1, -1])
    policy = FixedPolicy((0.1, -0.2, 0.3), std=0.1)
    obs = torch.zeros(1, 4)
    torch.manual_seed(5)
    one = SimpleNamespace(n_candidates=1, sigma=0.2, omega=0.0)
    o3f = torch.stack([o3f_iql.select_action(agent(policy, qf), obs, one) for _ in range(2000)])
    torch.manual_seed(5)
    noise = torch.stack([iql_noise.select_action(agent(policy), obs, SimpleNamespace(sigma=0.2)) for _ in range(2000)])
    assert torch.equal(o3f, noise)
    # And that distribution is N(a, 0.1^2 + 0.2^2) around the policy's mean (no clipping this far inside).
    assert torch.allclose(noise.mean(0), policy.mean, atol=0.02)
    assert torch.allclose(noise.std(0), torch.full((ACT_DIM,), (0.1**2 + 0.2**2) ** 0.5), atol=0.015)


@pytest.mark.parametrize("n", [1, 7, 100])
def test_many_candidates_are_drawn_around_the_policy_action(n):
    qf = HandBuiltEnsemble(value=lambda c: c.sum(-1), spread=lambda c: c[:, 0], offsets=[1, -1])
    torch.manual_seed(6)
    select(qf, n=n, sigma=0.05, policy_mean=(0.0, 0.0, 0.0))
    assert qf.scored.shape == (n, ACT_DIM)
    assert qf.scored.abs().max() < 0.05 * 6
