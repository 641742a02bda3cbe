"""Make the embedded datasets: D4RL-format HDF5 files generated here, with no network.

The scripts call `generate()` when an `embedded-*` env-id is asked for and not yet cached, so a
new user needs no download. By hand:

    python make_datasets.py --name embedded-halfcheetah-random --out /tmp/random.hdf5

Names start with `embedded-` so they cannot be mistaken for D4RL's own datasets.
"""
import os
import sys
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import h5py
import numpy as np

# name -> (Gymnasium environment, behaviour policy, default number of transitions)
EMBEDDED = {
    # D4RL's "random" recipe (uniform actions, 1000-step episodes), at a tenth of D4RL's size.
    "embedded-halfcheetah-random": ("HalfCheetah-v5", "uniform", 100_000),
}


def generate(name: str, path: str, seed: int = 0, transitions: Optional[int] = None) -> str:
    """Roll out the behaviour policy of `name` and write a D4RL-format HDF5 file to `path`."""
    env_id, policy, default_size = EMBEDDED[name]
    size = transitions or default_size
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    data = {
        "observations": np.zeros((size, obs_dim), np.float32),
        "actions": np.zeros((size, act_dim), np.float32),
        "rewards": np.zeros(size, np.float32),
        "next_observations": np.zeros((size, obs_dim), np.float32),
        "terminals": np.zeros(size, bool),
        "timeouts": np.zeros(size, bool),
    }
    obs, _ = env.reset(seed=seed)
    for i in range(size):
        action = env.action_space.sample()  # `policy` is "uniform" for every dataset so far
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(data, (obs, action, reward, next_obs, terminated, truncated)):
            data[key][i] = value
        obs = env.reset()[0] if terminated or truncated else next_obs
    data["timeouts"][-1] |= not data["terminals"][-1]  # the last episode is cut by the dataset's end
    env.close()

    # Write to a temporary name and rename, so an interrupted run never leaves a file that loads.
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, compression="gzip")
        f.attrs["env_id"], f.attrs["behaviour_policy"], f.attrs["seed"] = env_id, policy, seed
    os.replace(tmp, path)
    return path


@dataclass
class Args:
    name: str = "embedded-halfcheetah-random"
    """which embedded dataset to make"""
    out: str = "embedded-halfcheetah-random.hdf5"
    """where to write the HDF5 file"""
    seed: int = 0
    """seed of the environment and the behaviour policy (the same seed gives the same dataset)"""
    transitions: Optional[int] = None
    """number of transitions (default: the dataset's own size)"""


if __name__ == "__main__":
    import tyro

    args = tyro.cli(Args)
    if args.name not in EMBEDDED:
        print(f"error: unknown embedded dataset {args.name!r}; known: {', '.join(EMBEDDED)}", file=sys.stderr)
        sys.exit(2)
    print(generate(args.name, args.out, args.seed, args.transitions))
