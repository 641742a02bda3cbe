import contextlib
import os
import subprocess
import sys
from types import SimpleNamespace

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


def smooth_graph_adam(script):
    """The scripts' compiled-path Adam (GraphAdam) with eps 1, for compiled-vs-eager comparisons: plain Adam's first
    steps are +-lr wherever a gradient is ~0, so float rounding would flip them; with eps 1 every step is smooth in
    its gradient (momentum SGD, bias-corrected), and each of Adam's operations still runs."""

    def make(params, lr):
        optimizer = script.GraphAdam(params, lr)
        for group in optimizer.param_groups:
            group["eps"] = 1.0
        return optimizer

    return make


COMPILE = SimpleNamespace(compile=True, cudagraphs=False)  # the flags under which a script's maybe_compile() compiles


def assert_one_line(result, code: int, *words):
    """A run that ended with exit `code`, no traceback and one line on stderr (progress bars aside) holding `words`;
    for bad input (exit 2), an "error: " line."""
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, result.stderr
    assert code != 2 or lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def stand_in_cuda_graphs(monkeypatch, graph, capture, pool=None):
    """torch.cuda's stream and graph API as a CPU test sees it: streams that do nothing, `graph` as CUDAGraph, `capture`
    as the recording context (`torch.cuda.graph(graph, pool=...)`), `pool` as the memory pool's handle."""
    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: pool)


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


def make_minari_dataset(root, dataset_id, env_id, env_kwargs, episodes=2, steps=10, reward=None, ref_max_score=1.0):
    """A tiny Minari dataset from random actions in a real environment, written under `root` by Minari itself.

    Episode `ep` earns `reward(ep)` at every step (0 without `reward`) and ends truncated; returns the episodes."""
    import warnings

    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gymnasium_robotics
        import minari
        from minari.data_collector import EpisodeBuffer
    gym.register_envs(gymnasium_robotics)

    def stack(xs):
        return {k: stack([x[k] for x in xs]) for k in xs[0]} if isinstance(xs[0], dict) else np.stack(xs)

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        env = gym.make(env_id, **env_kwargs)
        env.action_space.seed(0)
        buffers = []
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            observations, actions = [obs], []
            for _ in range(steps):
                actions.append(env.action_space.sample())
                observations.append(env.step(actions[-1])[0])
            buffers.append(
                EpisodeBuffer(
                    id=ep,
                    observations=stack(observations),
                    actions=np.stack(actions),
                    rewards=[0.0 if reward is None else float(reward(ep))] * steps,
                    terminations=[False] * steps,
                    truncations=[False] * (steps - 1) + [True],
                    infos={},
                )
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, ref_min_score=0.0, ref_max_score=ref_max_score
            )
    finally:
        os.environ.pop("MINARI_DATASETS_PATH") if old is None else os.environ.__setitem__("MINARI_DATASETS_PATH", old)
    return buffers


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


@contextlib.contextmanager
def eager_random_numbers():
    """torch.compile'd code draws the random numbers eager code would, in eager code's order, inside the block:
    inductor's fallback_random draws them with eager's kernels, and without reorder_for_locality its scheduler keeps
    independent draws in program order (torch 2.11 moves one draw ahead of another: the same numbers, other uses).

    The config's own patch, not monkeypatch: the config serves its keys through __getattr__, so monkeypatch takes the
    key for absent and its undo deletes it, breaking torch.compile for every later test in the process."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True, reorder_for_locality=False):
        yield


@pytest.fixture
def traced_whole(capsys):
    """The test's compiled functions each traced as one graph: none fell back to eager code (maybe_compile says so)."""
    yield
    assert "cannot trace" not in capsys.readouterr().err


@pytest.fixture
def compiled_draws_eagers_random_numbers(traced_whole):
    with eager_random_numbers():
        yield
