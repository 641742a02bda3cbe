"""The evaluation steps its episodes together (one batched policy forward per step) and scores what scoring them one at
a time scores: the same start states, each episode counted to its own end and not a step further."""

import importlib

import numpy as np
import pytest
import torch

ENV_ID = "hopper-medium-v2"  # Hopper falls: its episodes end at different steps, so the batch shrinks as they do


def row_action(obs: torch.Tensor, act_dim: int) -> torch.Tensor:
    """A deterministic action for each state that does not depend on the batch it comes in (elementwise, so it rounds
    alike at any batch size, where a network's batched matrix product rounds otherwise, about 1e-7)."""
    return torch.tanh(0.7 * obs[:, :act_dim] - 0.3 * obs[:, -act_dim:])


def row_by_row_policy(act_dim: int, batch_sizes: list):
    """`row_action` as a script's `policy_action`, noting the size of each batch it is given."""

    def policy_action(agent, obs):
        batch_sizes.append(len(obs))
        return row_action(obs, act_dim)

    return policy_action


def one_at_a_time(policy, envs, seed: int) -> list:
    """The evaluation as a plain loop: each episode to its end, one after another, one state per forward."""
    returns, lengths = [], []
    for i, env in enumerate(envs):
        obs, _ = env.reset(seed=seed + i)
        done, episode_return, length = False, 0.0, 0
        while not done:
            action = policy(None, torch.as_tensor(obs, dtype=torch.float32)[None])[0]
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            episode_return, done, length = episode_return + float(reward), terminated or truncated, length + 1
        returns.append(episode_return), lengths.append(length)
    return returns, lengths


@pytest.mark.parametrize("name", ["o3f_iql", "iql_noise", "o3f_lapo", "awac"])
def test_the_episodes_stepped_together_score_what_one_at_a_time_scores(name, monkeypatch):
    script = importlib.import_module(name)
    envs = [script.make_env(ENV_ID) for _ in range(4)]
    act_dim, seed = envs[0].action_space.shape[0], 10_001
    reference, lengths = one_at_a_time(row_by_row_policy(act_dim, []), envs, seed)
    assert len(set(lengths)) > 1  # the episodes end apart: the batch shrinks during the evaluation
    batch_sizes = []
    monkeypatch.setattr(script, "policy_action", row_by_row_policy(act_dim, batch_sizes))
    agent = type("Agent", (), {"device": torch.device("cpu")})()
    result = script.evaluate(agent, envs, ENV_ID, seed)
    assert result["return"] == float(np.mean(reference))  # exactly: the same episodes, summed in the same order
    assert result["normalized_score"] == script.normalized_score(ENV_ID, result["return"])
    assert batch_sizes[0] == 4 and batch_sizes == sorted(batch_sizes, reverse=True)  # the running episodes only
    assert sum(batch_sizes) == sum(lengths) and len(batch_sizes) == max(lengths)  # no step after an episode's end


def test_cql_evaluation_steps_together_and_keeps_each_episodes_q_bias(monkeypatch):
    """cql_to_sac's evaluation also steps its episodes together; its Q bias is each episode's own (Figure 2)."""
    import cql_to_sac

    envs = [cql_to_sac.make_env(ENV_ID) for _ in range(3)]
    act_dim, seed, gamma = envs[0].action_space.shape[0], 10_001, 0.9
    reference, lengths = one_at_a_time(row_by_row_policy(act_dim, []), envs, seed)
    monkeypatch.setattr(cql_to_sac, "policy_action", row_by_row_policy(act_dim, []))
    q_of = lambda obs, act: torch.stack([obs[:, 0] + act.sum(-1), obs[:, 1] - act[:, 0]])  # noqa: E731
    agent = type("Agent", (), {"device": torch.device("cpu"), "qf": staticmethod(q_of)})()
    result = cql_to_sac.evaluate_q_bias(agent, envs, ENV_ID, seed, lambda r: 2 * r, gamma)
    assert result["return"] == float(np.mean(reference))
    # the bias by hand: each episode one at a time, Q the ensemble's minimum, G the discounted scaled rewards
    biases = []
    for i, env in enumerate(envs):
        obs, _ = env.reset(seed=seed + i)
        q_values, rewards, done, terminated = [], [], False, False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32)[None]
            action = row_action(obs_t, act_dim)
            q_values.append(float(q_of(obs_t, action).min(0).values[0]))
            obs, reward, terminated, truncated, _ = env.step(action[0].numpy())
            rewards.append(2 * float(reward))
            done = terminated or truncated
        biases.append(cql_to_sac.q_bias(q_values, rewards, terminated, gamma)[0])
    assert result["q_bias"] == pytest.approx(float(np.concatenate(biases).mean()), rel=1e-6)
