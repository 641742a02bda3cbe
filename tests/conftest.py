import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def random_batch(obs_dim: int, act_dim: int = 2, n: int = 32):
    """A replay batch (obs, actions in [-1, 1], rewards, next_obs, dones with ~30% ones) from torch's global RNG."""
    return (
        torch.randn(n, obs_dim),
        torch.rand(n, act_dim) * 2 - 1,
        torch.randn(n),
        torch.randn(n, obs_dim),
        (torch.rand(n) < 0.3).float(),
    )


def write_d4rl(path, observations, actions, rewards=None, terminals=None, **more):
    """A small dataset in D4RL's HDF5 layout: the arrays given; zero rewards and no terminals unless given."""
    n = len(observations)
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = np.asarray(observations, np.float32), np.asarray(actions, np.float32)
        f["rewards"] = np.zeros(n, np.float32) if rewards is None else np.asarray(rewards, np.float32)
        f["terminals"] = np.zeros(n, bool) if terminals is None else np.asarray(terminals, bool)
        for key, value in more.items():
            f[key] = value
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A private dataset cache, so tests never touch (or depend on) the user's ~/.cache/o3f."""
    return str(tmp_path_factory.mktemp("o3f_data"))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 3000-transition uniform-random HalfCheetah-v5 dataset in D4RL's HDF5 format."""
    import make_datasets

    path = str(tmp_path_factory.mktemp("datasets") / "halfcheetah-random-small.hdf5")
    return make_datasets.generate("embedded-halfcheetah-random", path, seed=0, transitions=3000)


@pytest.fixture(scope="session")
def run_script(data_dir):
    """Run a top-level script as a user would; returns the CompletedProcess."""

    def run(script, *flags, timeout=300):
        env = {**os.environ, "O3F_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1"}
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, script), "--no-cuda", *map(str, flags)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=ROOT,
        )

    return run
