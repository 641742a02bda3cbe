"""The replay buffer: the offline data D, then the online transitions, sampled on the device."""

import numpy as np
import pytest
import torch

import cql_to_sac
import o3f_iql
import o3f_lapo


def numbered_dataset(n):
    """Row i holds i everywhere (next observation i + 100): a sampled row shows whether its fields belong together."""
    rows = np.arange(n, dtype=np.float32)
    return {
        "observations": rows[:, None].repeat(3, 1),
        "actions": rows[:, None].repeat(2, 1),
        "rewards": rows.copy(),
        "next_observations": rows[:, None].repeat(3, 1) + 100,
        "terminals": (rows % 2).astype(np.float32),
        "episode_returns": np.array([1.0]),
    }


@pytest.mark.parametrize("module", [o3f_iql, o3f_lapo, cql_to_sac])
def test_samples_whole_transitions_from_the_filled_rows_only(module):
    data = numbered_dataset(10)
    rb = module.ReplayBuffer(data, capacity=15, device=torch.device("cpu"))
    assert set(data) == {"episode_returns"}  # the buffer took the arrays: the dataset is not held twice
    rb.add(np.full(3, 50.0), torch.full((2,), 50.0), 50.0, np.full(3, 150.0), True)
    torch.manual_seed(0)
    obs, actions, rewards, next_obs, dones = rb.sample(2000)
    i = rewards
    assert torch.equal(obs[:, 0], i) and torch.equal(actions[:, 1], i) and torch.equal(next_obs[:, 2], i + 100)
    assert torch.equal(dones, torch.where(i == 50, 1.0, i % 2))
    assert set(i.tolist()) == set(range(10)) | {50}  # every filled row, and nothing past them
    assert rb.obs.dtype == rb.dones.dtype == torch.float32 and rb.obs.shape == (15, 3)


def test_the_online_part_restores_into_a_fresh_buffer():
    rb = o3f_iql.ReplayBuffer(numbered_dataset(10), capacity=15, device=torch.device("cpu"))
    for k in range(3):
        rb.add(np.full(3, 20.0 + k), torch.full((2,), 20.0 + k), 20.0 + k, np.full(3, 120.0 + k), k == 2)
    part = rb.online_part(10)
    fresh = o3f_iql.ReplayBuffer(numbered_dataset(10), capacity=15, device=torch.device("cpu"))
    fresh.restore_online_part(part)
    assert fresh.size == rb.size == 13
    for key in ("obs", "actions", "rewards", "next_obs", "dones"):
        assert torch.equal(getattr(fresh, key)[:13], getattr(rb, key)[:13])


@pytest.mark.parametrize("module", [o3f_iql, o3f_lapo, cql_to_sac])
def test_a_checkpoint_holds_the_online_rows_only(module, tmp_path):
    """A slice shares the whole buffer's storage; saved as it is, every checkpoint would carry the offline dataset."""
    rb = module.ReplayBuffer(numbered_dataset(10_000), capacity=10_005, device=torch.device("cpu"))
    rb.add(np.full(3, 5.0), torch.full((2,), 5.0), 5.0, np.full(3, 105.0), False)
    torch.save(rb.online_part(10_000), tmp_path / "part.pt")
    assert (tmp_path / "part.pt").stat().st_size < 10_000  # one transition, not the 10k-row buffer (~360 kB)
    torch.save(rb.online_part(10_001), tmp_path / "empty.pt")  # offline: nothing online yet
    assert (tmp_path / "empty.pt").stat().st_size < 10_000


def buffer_with_online_rows(module, n_offline=10, n_online=4):
    """Offline rows 0..n_offline-1, then online rows holding 1000 + k: a sampled reward tells which part it is from."""
    rb = module.ReplayBuffer(numbered_dataset(n_offline), capacity=n_offline + n_online, device=torch.device("cpu"))
    for k in range(n_online):
        rb.add(np.full(3, 1000.0 + k), torch.full((2,), 1000.0 + k), 1000.0 + k, np.full(3, 1100.0 + k), False)
    return rb


@pytest.mark.parametrize("module", [o3f_iql, o3f_lapo, cql_to_sac])
def test_by_default_a_batch_is_uniform_over_the_whole_buffer(module):
    """The paper's sampling, unchanged by --online-fraction's default: one 62-bit draw per row, modulo the filled rows
    (the size the buffer keeps on the device, so that no draw waits for the host and a CUDA graph replays it)."""
    rb = buffer_with_online_rows(module)
    torch.manual_seed(3)
    rewards = rb.sample(500)[2]
    torch.manual_seed(3)
    expected = torch.randint(0, 2**62, (500,)) % 14
    assert torch.equal(rewards, torch.where(expected < 10, expected.float(), 1000.0 + expected - 10))
    torch.manual_seed(3)
    assert torch.equal(rb.sample(500, None)[2], rewards)
    counts = torch.bincount(rb.sample(140_000)[2].long() % 1000, minlength=10)  # offline rows 0-9, online 0-3 again
    assert counts[:4].min() > 2 * 9_000 and counts[4:].min() > 9_000 and counts[4:].max() < 11_000  # 10k, 20k each


def test_the_size_on_the_device_follows_the_rows():
    rb = buffer_with_online_rows(o3f_iql)
    assert int(rb.count) == rb.size == 14
    fresh = o3f_iql.ReplayBuffer(numbered_dataset(10), capacity=14, device=torch.device("cpu"))
    fresh.restore_online_part(rb.online_part(10))
    assert int(fresh.count) == fresh.size == 14


@pytest.mark.parametrize("fraction, n_online", [(0.5, 128), (0.25, 64), (0.0, 0), (1.0, 256), (0.3, 77)])
def test_online_fraction_draws_that_share_of_the_batch_from_the_online_rows(fraction, n_online):
    rb = buffer_with_online_rows(o3f_iql)
    obs, actions, rewards, next_obs, dones = rb.sample(256, fraction)
    online = rewards >= 1000
    assert int(online.sum()) == n_online  # round(F * batch), exactly, whatever the buffer's sizes
    assert set(rewards[online].tolist()) <= {1000.0, 1001.0, 1002.0, 1003.0}
    assert set(rewards[~online].tolist()) <= set(map(float, range(10)))
    if 0 < n_online < 256:  # both parts draw from all their rows
        assert len(set(rewards[online].tolist())) == 4 and len(set(rewards[~online].tolist())) == 10
    assert torch.equal(obs[:, 0], rewards) and torch.equal(next_obs[:, 0], rewards + 100)  # whole transitions


def test_online_fraction_before_the_first_online_step_is_uniform_over_the_data():
    """Pretraining is the same with or without --online-fraction: there are no online rows to draw yet."""
    rb = o3f_iql.ReplayBuffer(numbered_dataset(10), capacity=20, device=torch.device("cpu"))
    torch.manual_seed(5)
    default = rb.sample(64)[2]
    torch.manual_seed(5)
    assert torch.equal(rb.sample(64, 0.5)[2], default)
