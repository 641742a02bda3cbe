"""Make the embedded datasets: D4RL-format HDF5 files generated here, with no network.

The scripts call `generate()` when an `embedded-*` env-id is asked for and not yet cached, so a
new user needs no download. By hand:

    python make_datasets.py make --name embedded-pointmaze-medium
    python make_datasets.py train-behaviour    # how datasets/halfcheetah-medium-behaviour.pt was made

It also prepares the D4RL tasks' data ahead of time, for machines with no network (a cluster's
compute nodes): it downloads, reads back whole and checks against the environment, then says where
the data are, so that they can be copied:

    python make_datasets.py fetch kitchen-mixed-v0 hopper-medium-v2
    python make_datasets.py fetch --paper      # the paper's twelve tasks

Names start with `embedded-` so they cannot be mistaken for D4RL's own datasets.
"""

import contextlib
import difflib
import glob
import io
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.environ.get("O3F_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "o3f"))
# name -> (Gymnasium environment, behaviour policy, default number of transitions)
EMBEDDED = {
    # D4RL's "random" recipe (uniform actions, 1000-step episodes), at a tenth of D4RL's size.
    "embedded-halfcheetah-random": ("HalfCheetah-v5", "uniform", 100_000),
    # The same at D4RL's size (1M transitions; its first 100k rows are the dataset above).
    "embedded-halfcheetah-random-1m": ("HalfCheetah-v5", "uniform", 1_000_000),
    # D4RL's "medium" recipe: a SAC policy stopped at about a third of expert return, sampled
    # stochastically. Its weights ship in datasets/; `train-behaviour` below is how they were made.
    "embedded-halfcheetah-medium": (
        "HalfCheetah-v5",
        os.path.join(HERE, "datasets", "halfcheetah-medium-behaviour.pt"),
        100_000,
    ),
    # The same policy and seed at D4RL's size (1M transitions; its first 100k rows are the dataset above), so
    # that data size is not a confound when comparing with the paper. About 10 minutes on one core, once.
    "embedded-halfcheetah-medium-1m": (
        "HalfCheetah-v5",
        os.path.join(HERE, "datasets", "halfcheetah-medium-behaviour.pt"),
        1_000_000,
    ),
    # D4RL's maze2d recipe, the cheap stand-in for antmaze: a point mass steered through the
    # medium maze to random goal cells by BFS waypoints and a PD controller, plus action noise.
    "embedded-pointmaze-medium": ("PointMaze_Medium-v3", "maze-waypoints", 100_000),
    # The same recipe and size in D4RL's large maze (antmaze-large's layout): IQL's offline policy solves
    # the medium maze from 30k updates, which leaves fine-tuning nothing to explore for.
    "embedded-pointmaze-large": ("PointMaze_Large-v3", "maze-waypoints", 100_000),
    # Its first 20k transitions: the evidence study's maze, since IQL's offline policy solves the large
    # maze too from 100k transitions (10 of 10 from 30k updates, one seed); from 20k one seed's policy
    # fails and another's succeeds (docs/reproduction.md).
    "embedded-pointmaze-large-20k": ("PointMaze_Large-v3", "maze-waypoints", 20_000),
    # Its first 10k (12 episodes): the maze's last attempt here, from any start cell, written down before the 20k
    # maze's any-start gate was decided (lab/studies/evidence_maze_any/gate.md): sparser data, for a policy that fails.
    "embedded-pointmaze-large-10k": ("PointMaze_Large-v3", "maze-waypoints", 10_000),
}
# The paper's twelve tasks (section 6): the locomotion random and medium datasets, the three diverse
# antmazes and the three kitchens.
PAPER_TASKS = (
    "halfcheetah-random-v2",
    "halfcheetah-medium-v2",
    "hopper-random-v2",
    "hopper-medium-v2",
    "walker2d-random-v2",
    "walker2d-medium-v2",
    "antmaze-umaze-diverse-v2",
    "antmaze-medium-diverse-v2",
    "antmaze-large-diverse-v2",
    "kitchen-complete-v0",
    "kitchen-mixed-v0",
    "kitchen-partial-v0",
)
# The reward of the pointmaze data is relabelled to the evaluation task's goal, the cell marked g in
# D4RL's evaluation maze (EVAL_MAZES in the scripts), within 0.45 as in PointMaze; an episode of the
# data lasts as long as the environment's own (600 steps in the medium maze, 800 in the large one).
MAZE_GOAL_CELL = {"PointMaze_Medium-v3": (6, 6), "PointMaze_Large-v3": (7, 9)}
MAZE_GOAL_RADIUS = 0.45


# ---------------------------------------------------------------------------------------------
# The behaviour policy of the medium datasets: SAC (Haarnoja et al., 2018), trained until its
# deterministic return first reaches the target, then frozen.
# ---------------------------------------------------------------------------------------------
def mlp(in_dim: int, out_dim: int, hidden_dim: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


class SquashedGaussianActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim)

    def forward(self, obs, deterministic: bool = False):
        mean, log_std = self.net(obs).chunk(2, -1)
        if deterministic:
            return torch.tanh(mean), None
        std = log_std.clamp(-5.0, 2.0).exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob -= (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)  # tanh change of variables
        return torch.tanh(u), log_prob


def policy_return(env, actor, episodes: int, seed: int) -> float:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)[None], deterministic=True)[0][0]
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train_behaviour(
    env_id: str,
    out: str,
    target_return: float,
    seed: int = 0,
    max_steps: int = 300_000,
    eval_every: int = 5000,
    batch_size: int = 256,
    gamma: float = 0.99,
    tau: float = 0.005,
) -> dict:
    """SAC with automatic entropy tuning; saves the actor the first time its return reaches `target_return`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    env, eval_env = gym.make(env_id), gym.make(env_id)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor = SquashedGaussianActor(obs_dim, act_dim)
    qfs = nn.ModuleList(mlp(obs_dim + act_dim, 1) for _ in range(2))
    qfs_target = nn.ModuleList(mlp(obs_dim + act_dim, 1) for _ in range(2))
    qfs_target.load_state_dict(qfs.state_dict())
    log_alpha = torch.zeros(1, requires_grad=True)
    q_opt, actor_opt = torch.optim.Adam(qfs.parameters(), lr=1e-3), torch.optim.Adam(actor.parameters(), lr=3e-4)
    alpha_opt = torch.optim.Adam([log_alpha], lr=1e-3)
    buf = {
        k: torch.zeros((max_steps, d))
        for k, d in (("obs", obs_dim), ("act", act_dim), ("rew", 1), ("next", obs_dim), ("done", 1))
    }
    q = lambda nets, o, a: torch.stack([net(torch.cat([o, a], -1)).squeeze(-1) for net in nets])
    obs, _ = env.reset(seed=seed)
    for step in range(max_steps):
        if step < 5000:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(buf, (obs, action, reward, next_obs, terminated)):
            buf[key][step] = torch.as_tensor(np.asarray(value, dtype=np.float32))
        obs = env.reset()[0] if terminated or truncated else next_obs
        if step < 5000:
            continue
        idx = torch.randint(0, step + 1, (batch_size,))
        o, a, r, o2, d = (buf[k][idx] for k in buf)
        alpha = log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = actor(o2)
            target = r[:, 0] + gamma * (1 - d[:, 0]) * (q(qfs_target, o2, a2).min(0).values - alpha * logp2)
        q_loss = ((q(qfs, o, a) - target) ** 2).mean(1).sum()
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        a_new, logp = actor(o)
        actor_loss = (alpha * logp - q(qfs, o, a_new).min(0).values).mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()
        alpha_loss = -(log_alpha * (logp.detach() - act_dim)).mean()  # target entropy -|A|
        alpha_opt.zero_grad()
        alpha_loss.backward()
        alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(qfs.parameters(), qfs_target.parameters()):
                tp.lerp_(p, tau)
        if (step + 1) % eval_every == 0:
            ret = policy_return(eval_env, actor, 5, seed + 1000)
            print(f"step {step + 1}: deterministic return {ret:.0f} (target {target_return:.0f})", flush=True)
            if ret >= target_return:
                info = {
                    "env_id": env_id,
                    "steps": step + 1,
                    "return": ret,
                    "seed": seed,
                    "target_return": target_return,
                }
                torch.save({"actor": actor.state_dict(), "obs_dim": obs_dim, "act_dim": act_dim, **info}, out)
                return info
    raise RuntimeError(f"SAC did not reach {target_return} in {max_steps} steps")


def rollout_policy(env_id: str, policy: str, size: int, seed: int) -> dict:
    """Uniform random actions, or actions sampled from a saved SAC actor, in a Gymnasium environment.

    The actor draws from `seed` alone and the caller's torch stream is left as it was: a script that makes its
    data on first use starts from the same random numbers as one that finds them made."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    data = empty_dataset(size, env.observation_space.shape[0], env.action_space.shape[0])
    with torch.random.fork_rng(devices=[]):
        actor = None
        if policy != "uniform":
            saved = torch.load(policy, weights_only=True)
            actor = SquashedGaussianActor(saved["obs_dim"], saved["act_dim"])
            actor.load_state_dict(saved["actor"])
            torch.manual_seed(seed)
        obs, _ = env.reset(seed=seed)
        for i in range(size):
            if actor is None:
                action = env.action_space.sample()
            else:  # sampled, not the mean: the data carry the policy's own spread, as D4RL's do
                with torch.no_grad():
                    action = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(data, (obs, action, reward, next_obs, terminated, truncated)):
                data[key][i] = value
            obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return data


def rollout_maze(env_id: str, size: int, seed: int, noise: float = 0.5) -> dict:
    """Steer a point mass to random goal cells: next cell on a BFS path, PD control, Gaussian noise."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its import prints an Adroit notice
        warnings.simplefilter("ignore")
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    episode_steps = gym.spec(env_id).max_episode_steps
    env = gym.make(env_id, continuing_task=True, reset_target=False, max_episode_steps=None)
    os.remove(env.unwrapped.tmp_xml_file_path)  # the maze's model file, loaded: gymnasium-robotics leaves it behind
    maze, rng = env.unwrapped.maze, np.random.default_rng(seed)
    free = [(r, c) for r, row in enumerate(maze.maze_map) for c, cell in enumerate(row) if cell != 1]
    goal_xy = maze.cell_rowcol_to_xy(np.array(MAZE_GOAL_CELL[env_id]))

    def distances_to(goal):  # BFS over the free cells
        dist, frontier = {goal: 0}, [goal]
        for cell in frontier:
            for nxt in ((cell[0] + 1, cell[1]), (cell[0] - 1, cell[1]), (cell[0], cell[1] + 1), (cell[0], cell[1] - 1)):
                if nxt in free and nxt not in dist:
                    dist[nxt] = dist[cell] + 1
                    frontier.append(nxt)
        return dist

    data = empty_dataset(size, 4, 2)
    obs, _ = env.reset(seed=seed)
    target, steps = free[rng.integers(len(free))], 0
    for i in range(size):
        xy, velocity = obs["observation"][:2], obs["observation"][2:]
        cell = tuple(int(v) for v in maze.cell_xy_to_rowcol(xy))
        dist = distances_to(target)
        if cell == target or cell not in dist:
            waypoint = maze.cell_rowcol_to_xy(np.array(target))
        else:
            waypoint = maze.cell_rowcol_to_xy(
                np.array(min((n for n in dist if abs(n[0] - cell[0]) + abs(n[1] - cell[1]) == 1), key=dist.get))
            )
        action = np.clip(10.0 * (waypoint - xy) - 1.0 * velocity + noise * rng.standard_normal(2), -1.0, 1.0).astype(
            np.float32
        )
        next_obs, _, _, _, _ = env.step(action)
        steps += 1
        reward = float(np.linalg.norm(next_obs["observation"][:2] - goal_xy) <= MAZE_GOAL_RADIUS)
        timeout = steps == episode_steps
        for key, value in zip(data, (obs["observation"], action, reward, next_obs["observation"], False, timeout)):
            data[key][i] = value
        if np.linalg.norm(next_obs["observation"][:2] - maze.cell_rowcol_to_xy(np.array(target))) < 0.5:
            target = free[rng.integers(len(free))]  # reached: a new random goal cell
        obs = next_obs
        if timeout:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            steps = 0
    env.close()
    return data


def empty_dataset(size: int, obs_dim: int, act_dim: int) -> dict:
    return {
        "observations": np.zeros((size, obs_dim), np.float32),
        "actions": np.zeros((size, act_dim), np.float32),
        "rewards": np.zeros(size, np.float32),
        "next_observations": np.zeros((size, obs_dim), np.float32),
        "terminals": np.zeros(size, bool),
        "timeouts": np.zeros(size, bool),
    }


def generate(name: str, path: str, seed: int = 0, transitions: int | None = None) -> str:
    """Make the embedded dataset `name` and write it as a D4RL-format HDF5 file to `path`."""
    env_id, policy, default_size = EMBEDDED[name]
    size = transitions or default_size
    if policy == "maze-waypoints":
        data = rollout_maze(env_id, size, seed)
    else:
        data = rollout_policy(env_id, policy, size, seed)
    data["timeouts"][-1] |= not data["terminals"][-1]  # the last episode is cut by the dataset's end
    # Write to a temporary name and rename, so an interrupted run never leaves a file that loads.
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for stale in glob.glob(f"{glob.escape(path)}.tmp*"):  # left by a make that was killed: its process is gone
        if not process_alive(stale.rsplit(".tmp", 1)[1]):
            os.remove(stale)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                f.create_dataset(key, data=value, compression="gzip")
            f.attrs["env_id"], f.attrs["behaviour_policy"], f.attrs["seed"] = env_id, os.path.basename(policy), seed
        os.replace(tmp, path)
    finally:  # interrupted or failed: no temporary file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def process_alive(pid: str) -> bool:
    """Whether a process with this id runs on this machine (a temporary file's owner)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass
class Make:
    """Make one embedded dataset (the scripts do this themselves on first use)."""

    name: Literal[
        "embedded-halfcheetah-medium",
        "embedded-halfcheetah-medium-1m",
        "embedded-halfcheetah-random",
        "embedded-halfcheetah-random-1m",
        "embedded-pointmaze-medium",
        "embedded-pointmaze-large",
        "embedded-pointmaze-large-20k",
        "embedded-pointmaze-large-10k",
    ]
    """which embedded dataset to make"""
    out: str | None = None
    """where to write the HDF5 file (default: the cache the scripts read, $O3F_DATA_DIR/embedded/NAME.hdf5)"""
    seed: int = 0
    """seed of the environment and the behaviour policy (the same seed gives the same dataset)"""
    transitions: int | None = None
    """number of transitions (default: the dataset's own size)"""


@dataclass
class Fetch:
    """Download and verify the data of tasks ahead of time, for machines with no network."""

    tasks: tyro.conf.Positional[tuple[str, ...]] = ()
    """the tasks, as the scripts' --env-id (e.g. kitchen-mixed-v0 hopper-medium-v2)"""
    paper: bool = False
    """if toggled, the paper's twelve tasks as well"""


class FetchFailed(Exception):
    pass


def folder_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(path) for name in names)


def minari_root() -> str:
    """Where Minari keeps its datasets: $MINARI_DATASETS_PATH, or ~/.minari/datasets (Minari's own rule)."""
    import minari.storage

    return str(minari.storage.get_dataset_path())


def fetch(env_id: str) -> tuple:
    """Get the task's data as the scripts would, read them back whole and check their sizes against the
    environment; returns (where, bytes, transitions). Raises FetchFailed, or the scripts' BadInput (a SystemExit
    whose one line the scripts have printed) where their data loading refuses the task."""
    import o3f_iql as script  # the scripts share this code line for line: any of them would do

    if env_id not in script.TASKS:
        close = ", ".join(difflib.get_close_matches(env_id, list(script.TASKS), n=3, cutoff=0.5))
        raise FetchFailed(f"unknown task {env_id}" + (f"; did you mean {close}?" if close else ""))
    task = script.TASKS[env_id]
    path = os.path.join(minari_root(), task.dataset) if task.source == "minari" else None
    path = path or script.dataset_file(env_id)
    data = script.load_dataset(env_id)  # downloads a Minari dataset that is not there yet
    env = script.make_env(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        raise FetchFailed(
            f"{path}: {data['observations'].shape[1]}-d observations and {data['actions'].shape[1]}-d actions; "
            f"{env_id} needs {obs_dim} and {act_dim}"
        )
    return path, folder_size(path), len(data["rewards"])


def fetch_all(env_ids) -> int:
    """Fetch every task, one line each (an error line for a failed one); exit code 2 if any failed."""
    import o3f_iql as script

    failed = []
    for env_id in dict.fromkeys(env_ids):  # each once, in order
        try:
            path, size, transitions = fetch(env_id)
            print(f"{env_id}: {transitions:,} transitions, {size / 1e6:.1f} MB in {path}", flush=True)
        except FetchFailed as e:
            print(f"error: {env_id}: {e}", file=sys.stderr, flush=True)
            failed.append(env_id)
        except script.BadInput:  # the scripts' bad-input exit: it printed its one line, and ends this task only
            failed.append(env_id)
    if failed:
        print(f"not fetched: {', '.join(failed)}", file=sys.stderr)
    if len(failed) < len(dict.fromkeys(env_ids)):
        print(
            f"to use them on a machine with no network, copy {script.DATA_DIR} and {minari_root()} "
            "to the same paths there "
            f"(or anywhere, and point O3F_DATA_DIR and MINARI_DATASETS_PATH at them)"
        )
    return 2 if failed else 0


@dataclass
class TrainBehaviour:
    """Train the SAC behaviour policy of a medium dataset (how datasets/halfcheetah-medium-behaviour.pt was made)."""

    env_id: str = "HalfCheetah-v5"
    """the Gymnasium environment"""
    out: str = os.path.join("datasets", "halfcheetah-medium-behaviour.pt")
    """where to save the actor"""
    target_return: float = 4000.0
    """stop at the first evaluation (5 deterministic episodes) at or above this return (D4RL's expert: 12135)"""
    seed: int = 0
    """seed of SAC and the environment"""


def main():
    command = tyro.extras.subcommand_cli_from_dict({"make": Make, "fetch": Fetch, "train-behaviour": TrainBehaviour})
    if isinstance(command, Fetch):
        if not command.tasks and not command.paper:
            print(
                "error: name the tasks to fetch (e.g. kitchen-mixed-v0), or pass --paper for the paper's twelve",
                file=sys.stderr,
            )
            sys.exit(2)
        sys.exit(fetch_all([*command.tasks, *(PAPER_TASKS if command.paper else ())]))
    elif isinstance(command, Make):
        path = command.out or os.path.join(DATA_DIR, "embedded", f"{command.name}.hdf5")
        print(generate(command.name, path, command.seed, command.transitions))
    else:
        torch.set_num_threads(1)  # one thread: the run that made the shipped weights, reproducibly
        print(train_behaviour(command.env_id, command.out, command.target_return, command.seed))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line; a dataset half made was never renamed into place, nor kept
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
