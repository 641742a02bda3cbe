"""Tasks, data sources and embedded datasets (no network: downloads come from a loopback server)."""

import http.server
import os
import threading
import time
from dataclasses import replace

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

import make_datasets
import o3f_iql
from conftest import make_minari_dataset, write_d4rl

PAPER_TASKS = {  # the paper's twelve: (observation size, action size, D4RL reference returns)
    "halfcheetah-random-v2": (17, 6, -280.178953, 12135.0),
    "halfcheetah-medium-v2": (17, 6, -280.178953, 12135.0),
    "hopper-random-v2": (11, 3, -20.272305, 3234.3),
    "hopper-medium-v2": (11, 3, -20.272305, 3234.3),
    "walker2d-random-v2": (17, 6, 1.629008, 4592.3),
    "walker2d-medium-v2": (17, 6, 1.629008, 4592.3),
    "antmaze-umaze-diverse-v2": (29, 8, 0.0, 1.0),
    "antmaze-medium-diverse-v2": (29, 8, 0.0, 1.0),
    "antmaze-large-diverse-v2": (29, 8, 0.0, 1.0),
    "kitchen-complete-v0": (59, 9, 0.0, 4.0),
    "kitchen-mixed-v0": (59, 9, 0.0, 4.0),
    "kitchen-partial-v0": (59, 9, 0.0, 4.0),
}


@pytest.mark.parametrize("env_id", PAPER_TASKS)
def test_each_paper_task_has_an_environment_a_data_source_and_reference_scores(env_id):
    obs_dim, act_dim, ref_min, ref_max = PAPER_TASKS[env_id]
    task = o3f_iql.TASKS[env_id]
    assert (task.ref_min, task.ref_max) == (ref_min, ref_max)
    assert task.source == ("d4rl" if task.domain == "locomotion" else "minari")
    env = o3f_iql.make_env(env_id)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    next_obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert next_obs.shape == (obs_dim,) and np.isfinite(reward)
    env.close()


def test_antmaze_observation_is_d4rls_position_then_body():
    env = o3f_iql.make_env("antmaze-large-diverse-v2")
    obs, _ = env.reset(seed=0)
    qpos = env.unwrapped.ant_env.data.qpos
    assert np.allclose(obs[:2], qpos[:2]) and np.allclose(
        obs[2:15], qpos[2:]
    )  # x, y, then the body, as D4RL's 29-d vector
    assert np.allclose(obs[:2], [-18, 12], atol=1.0)  # D4RL's fixed start cell (1, 1) of the large maze
    assert env.spec.max_episode_steps == 1000


def test_antmaze_evaluation_uses_d4rls_fixed_start_and_goal():
    for env_id, (start, goal) in {
        "antmaze-umaze-diverse-v2": ((1, 3), (3, 3)),
        "antmaze-large-diverse-v2": ((1, 1), (7, 9)),
    }.items():
        maze = o3f_iql.TASKS[env_id].env_kwargs["maze_map"]
        assert maze[start[0]][start[1]] == "r" and maze[goal[0]][goal[1]] == "g"
        assert sum(row.count("g") for row in maze) == 1 and sum(row.count("r") for row in maze) == 1
        assert o3f_iql.TASKS[env_id].env_kwargs["continuing_task"] is False  # success ends the episode: return 0 or 1


def test_kitchen_scores_completed_subtasks_out_of_four():
    env = o3f_iql.make_env("kitchen-mixed-v0")
    assert set(env.unwrapped.tasks_to_complete) == {"microwave", "kettle", "bottom burner", "light switch"}
    assert o3f_iql.normalized_score("kitchen-mixed-v0", 3.0) == 75.0
    assert o3f_iql.normalized_score("antmaze-large-diverse-v2", 1.0) == 100.0


def test_every_listed_task_resolves():
    locomotion = [
        f"{r}-{d}-v2"
        for r in ("halfcheetah", "hopper", "walker2d")
        for d in ("random", "medium", "medium-replay", "medium-expert", "expert")
    ]
    antmaze = [
        f"antmaze-{d}-v2"
        for d in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
    ]
    assert set(locomotion + antmaze) <= set(o3f_iql.TASKS)
    assert o3f_iql.TASKS["halfcheetah-medium-replay-v2"].dataset == "halfcheetah_medium_replay-v2"  # D4RL's file name
    assert o3f_iql.TASKS["antmaze-medium-play-v2"].dataset == "D4RL/antmaze/medium-play-v1"


# --- Minari ------------------------------------------------------------------------------------
def make_minari_antmaze(root, monkeypatch, episodes=3, steps=40):
    """A tiny dataset under Minari's id for antmaze-umaze, made with Minari's own API from real rollouts."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))  # where the loader will look
    kwargs = {"continuing_task": True, "reset_target": False}
    return make_minari_dataset(
        root, "D4RL/antmaze/umaze-v1", "AntMaze_UMaze-v4", kwargs, episodes, steps, reward=lambda ep: ep == 1
    )


def test_minari_loader_flattens_observations_like_d4rl(tmp_path, monkeypatch):
    buffers = make_minari_antmaze(tmp_path, monkeypatch)
    data = o3f_iql.load_dataset("antmaze-umaze-v2")
    first = buffers[0].observations
    assert data["observations"].shape == (120, 29) and data["actions"].shape == (120, 8)
    assert np.allclose(
        data["observations"][:40], np.concatenate([first["achieved_goal"], first["observation"]], -1)[:-1]
    )
    assert np.allclose(
        data["next_observations"][:40], np.concatenate([first["achieved_goal"], first["observation"]], -1)[1:]
    )
    assert data["terminals"].sum() == 0  # truncations are not terminal
    assert sorted(data["episode_returns"].tolist()) == [0.0, 0.0, 40.0]


def test_a_run_on_a_minari_antmaze_dataset(run_script, tmp_path, monkeypatch):
    make_minari_antmaze(tmp_path / "minari", monkeypatch)
    result = run_script(
        "o3f_iql.py",
        "--env-id",
        "antmaze-umaze-v2",
        "--output-dir",
        tmp_path / "runs",
        "--offline-steps",
        20,
        "--online-steps",
        20,
        "--eval-freq",
        20,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import glob
    import json

    (summary,) = glob.glob(str(tmp_path / "runs" / "*" / "summary.json"))
    summary = json.load(open(summary))
    assert summary["args"]["sigma"] == 0.05 and summary["args"]["expectile"] == 0.9 and summary["args"]["beta"] == 10.0
    assert all(e["normalized_score"] in (0.0, 100.0) for e in summary["evaluations"])  # success is 0 or 1


# --- D4RL downloads, from a server on loopback ---------------------------------------------------
@pytest.fixture
def d4rl_server(tmp_path, monkeypatch):
    """Serves `files[name] = (bytes, cut)`: with cut, announces the full length but sends half and hangs up."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = os.path.basename(self.path)
            if name not in files:
                self.send_error(404)
                return
            body, cut = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(o3f_iql, "D4RL_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(o3f_iql, "DATA_DIR", str(tmp_path / "cache"))
    yield files
    server.shutdown()


def hdf5_bytes(tmp_path, n=50):
    path = tmp_path / "src.hdf5"
    write_d4rl(path, np.random.randn(n, 11), np.random.uniform(-1, 1, (n, 3)), np.ones(n), timeouts=np.zeros(n, bool))
    return path.read_bytes()


def test_download_is_cached_and_loads(d4rl_server, tmp_path):
    d4rl_server["hopper_medium-v2.hdf5"] = (hdf5_bytes(tmp_path), False)
    path = o3f_iql.dataset_file("hopper-medium-v2")
    assert path == str(tmp_path / "cache" / "d4rl" / "hopper_medium-v2.hdf5")
    assert o3f_iql.load_dataset("hopper-medium-v2")["observations"].shape == (49, 11)
    del d4rl_server["hopper_medium-v2.hdf5"]  # a second use reads the cache, not the network
    assert o3f_iql.dataset_file("hopper-medium-v2") == path


@pytest.mark.parametrize("body, cut", [("hdf5", True), ("html", False)])
def test_a_cut_off_or_corrupt_download_leaves_nothing_cached(d4rl_server, tmp_path, capsys, body, cut):
    d4rl_server["hopper_random-v2.hdf5"] = (hdf5_bytes(tmp_path) if body == "hdf5" else b"<html>error</html>", cut)
    with pytest.raises(SystemExit) as stop:
        o3f_iql.dataset_file("hopper-random-v2")
    assert stop.value.code == 2
    assert os.listdir(tmp_path / "cache" / "d4rl") == []  # no file, no partial file
    assert "could not download hopper-random-v2" in capsys.readouterr().err


def test_a_killed_downloads_temporary_file_is_removed_by_the_next_download(d4rl_server, tmp_path):
    """torch.hub downloads to NAME.<hex>.partial; kill -9 leaves it. One untouched for 10 minutes is a dead
    download's and goes; a fresh one may be another process's live download and stays."""
    folder = tmp_path / "cache" / "d4rl"
    folder.mkdir(parents=True)
    stale, live = folder / "hopper_medium-v2.hdf5.0a1b.partial", folder / "walker2d_medium-v2.hdf5.2c3d.partial"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y" * 100)
    os.utime(stale, (time.time() - 601, time.time() - 601))
    d4rl_server["hopper_medium-v2.hdf5"] = (hdf5_bytes(tmp_path), False)
    o3f_iql.dataset_file("hopper-medium-v2")
    assert sorted(os.listdir(folder)) == ["hopper_medium-v2.hdf5", live.name]


def test_no_network_says_what_was_tried_and_how_to_get_the_data(run_script, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"O3F_D4RL_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = run_script("o3f_iql.py", "--env-id", "walker2d-medium-v2")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip() and "downloading" not in line]
    assert (
        "walker2d-medium-v2" in line
        and f"127.0.0.1:{port}/walker2d_medium-v2.hdf5" in line
        and "--dataset-path" in line
    )


# --- Embedded datasets ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(make_datasets.EMBEDDED))
def test_embedded_dataset_is_deterministic_and_loads_for_its_task(name, tmp_path):
    a = make_datasets.generate(name, str(tmp_path / "a.hdf5"), seed=3, transitions=1500)
    b = make_datasets.generate(name, str(tmp_path / "b.hdf5"), seed=3, transitions=1500)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in fa:
            assert np.array_equal(fa[key][:], fb[key][:]), key
    data = o3f_iql.load_dataset(name, a)
    env = o3f_iql.make_env(name)
    assert data["observations"].shape == (1500, env.observation_space.shape[0])
    assert data["actions"].shape == (1500, env.action_space.shape[0])
    assert name in o3f_iql.TASKS and o3f_iql.TASKS[name].source == "embedded"


@pytest.mark.parametrize(
    "name", ["embedded-pointmaze-medium", "embedded-pointmaze-large", "embedded-pointmaze-large-20k"]
)
def test_pointmaze_rewards_mark_the_evaluation_goal(name, tmp_path):
    path = make_datasets.generate(name, str(tmp_path / "p.hdf5"), seed=0, transitions=20_000)
    env = o3f_iql.make_env(name)
    goal_cell = make_datasets.MAZE_GOAL_CELL[o3f_iql.TASKS[name].env]
    assert o3f_iql.TASKS[name].env_kwargs["maze_map"][goal_cell[0]][goal_cell[1]] == "g"
    goal = env.unwrapped.maze.cell_rowcol_to_xy(np.array(goal_cell))
    episode_steps = env.spec.max_episode_steps  # the data's episodes last as long as the evaluation's
    with h5py.File(path) as f:
        at_goal = np.linalg.norm(f["next_observations"][:, :2] - goal, axis=1) <= 0.45
        assert np.array_equal(f["rewards"][:] == 1.0, at_goal) and at_goal.any()
        assert f["terminals"][:].sum() == 0
        ends = np.flatnonzero(f["timeouts"][:-1]) + 1  # the last row's timeout is the dataset's end
        assert np.array_equal(ends, np.arange(episode_steps, 20_000, episode_steps))


@pytest.mark.parametrize("env_id", ["embedded-pointmaze-medium", "antmaze-umaze-v2"])
def test_a_maze_environment_leaves_no_model_file_behind(env_id):
    """gymnasium-robotics 1.4.2 writes each maze's MuJoCo model to the temporary folder and never removes it (a
    long study made thousands); the scripts remove it once loaded, and the environment still runs."""
    env = o3f_iql.make_env(env_id)
    assert not os.path.exists(env.unwrapped.tmp_xml_file_path)
    obs, _ = env.reset(seed=0)
    assert np.isfinite(env.step(env.action_space.sample())[0]).all() and obs.shape == env.observation_space.shape
    env.close()


def test_making_maze_data_leaves_no_model_file_behind(tmp_path, monkeypatch):
    made, make = [], gym.make
    monkeypatch.setattr(gym, "make", lambda *a, **k: made.append(make(*a, **k)) or made[-1])
    make_datasets.generate("embedded-pointmaze-medium", str(tmp_path / "m.hdf5"), seed=0, transitions=300)
    assert made and not any(os.path.exists(env.unwrapped.tmp_xml_file_path) for env in made)


def test_the_dataset_tool_and_the_scripts_agree_on_the_embedded_names():
    import typing

    assert set(typing.get_args(make_datasets.Make.__annotations__["name"])) == set(make_datasets.EMBEDDED)
    embedded = {name: task for name, task in o3f_iql.TASKS.items() if task.source == "embedded"}
    assert {task.dataset for task in embedded.values()} == set(make_datasets.EMBEDDED)
    assert set(make_datasets.EMBEDDED) <= set(embedded)  # each dataset is a task of its own name
    assert all(name.startswith("embedded-") for name in embedded)  # never mistaken for D4RL's


@pytest.mark.parametrize("name", ["embedded-halfcheetah-medium", "embedded-halfcheetah-random"])
def test_each_d4rl_sized_dataset_is_its_small_ones_recipe_at_1m(name):
    small, large = make_datasets.EMBEDDED[name], make_datasets.EMBEDDED[f"{name}-1m"]
    assert large == (*small[:2], 1_000_000) and small[2] == 100_000
    assert o3f_iql.TASKS[f"{name}-1m"].ref_max == o3f_iql.TASKS[name].ref_max


def test_the_sparse_mazes_are_the_large_mazes_first_20k_and_10k_transitions():
    large, sparse, sparser = (make_datasets.EMBEDDED[f"embedded-pointmaze-large{n}"] for n in ("", "-20k", "-10k"))
    assert sparse == (*large[:2], 20_000) and sparser == (*large[:2], 10_000) and large[2] == 100_000
    assert o3f_iql.TASKS["embedded-pointmaze-large-20k"] == replace(
        o3f_iql.TASKS["embedded-pointmaze-large"], dataset="embedded-pointmaze-large-20k"
    )
    for n in ("", "-any-start"):  # the 10k maze: the 20k one, fixed or any start, on its first 10k transitions
        assert o3f_iql.TASKS[f"embedded-pointmaze-large-10k{n}"] == replace(
            o3f_iql.TASKS[f"embedded-pointmaze-large-20k{n}"], dataset="embedded-pointmaze-large-10k"
        )


def test_the_any_start_maze_is_the_20k_maze_with_every_free_cell_a_start():
    """D4RL's maze2d protocol on the 20k maze's data: the data, goal and success rule stay; a start is any free cell."""
    name = "embedded-pointmaze-large-20k"
    fixed, anywhere = o3f_iql.TASKS[name], o3f_iql.TASKS[f"{name}-any-start"]
    assert replace(anywhere, env_kwargs=fixed.env_kwargs) == fixed

    def start_cells(env_id: str, episodes: int) -> set:
        env = o3f_iql.make_env(env_id)
        maze = env.unwrapped.maze
        return {tuple(int(v) for v in maze.cell_xy_to_rowcol(env.reset(seed=i)[0][:2])) for i in range(episodes)}

    cells, maze_map = start_cells(f"{name}-any-start", 60), fixed.env_kwargs["maze_map"]
    assert all(maze_map[r][c] in (0, "r") for r, c in cells)  # free cells, never the goal's
    assert len(cells) > 20 and start_cells(name, 5) == {(1, 1)}  # the fixed-start maze always starts in one cell
    assert o3f_iql.make_env(f"{name}-any-start").unwrapped.continuing_task is False  # success ends the episode


def test_a_model_of_the_20k_maze_fine_tunes_on_its_any_start_task_and_on_no_other_data(capsys):
    """A pretrained model fits any task with the same data and conventions: the any-start maze loads the 20k maze's
    models (pretraining never sees the start cells), a task with other data refuses them with one line."""
    args = o3f_iql.domain_defaults(o3f_iql.Args(env_id="embedded-pointmaze-large-20k-any-start", num_critics=2))
    agent = o3f_iql.Agent(o3f_iql.make_env(args.env_id), args, torch.device("cpu"))
    parts = {name: part.state_dict() for name, part in o3f_iql.agent_state(agent).items()}
    model = {"algorithm": "iql", "env_id": "embedded-pointmaze-large-20k", "step": 7, "path": "m.pt", **parts}
    assert o3f_iql.load_model(model, args, agent) == 7
    # the same maze or spaces, other data
    for other in ("embedded-pointmaze-large", "embedded-pointmaze-large-10k-any-start", "embedded-pointmaze-medium"):
        with pytest.raises(o3f_iql.BadInput) as refused:
            o3f_iql.load_model(model, replace(args, env_id=other), agent)
        assert refused.value.code == 2 and "trained on embedded-pointmaze-large-20k" in capsys.readouterr().err


def test_the_d4rl_sized_dataset_extends_the_small_one(tmp_path):
    """embedded-halfcheetah-medium-1m: the same policy and seed, so the 100k dataset is its beginning (only the size
    changes)."""
    small = make_datasets.generate("embedded-halfcheetah-medium", str(tmp_path / "s.hdf5"), seed=0, transitions=1200)
    large = make_datasets.generate("embedded-halfcheetah-medium-1m", str(tmp_path / "l.hdf5"), seed=0, transitions=2500)
    with h5py.File(small) as fs, h5py.File(large) as fl:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
            assert np.array_equal(fs[key][:], fl[key][:1200]), key
        assert fs["timeouts"][999] and fl["timeouts"][999] and fl["timeouts"][1999]  # 1000-step episodes
    assert make_datasets.EMBEDDED["embedded-halfcheetah-medium-1m"][2] == 1_000_000
    assert (
        o3f_iql.TASKS["embedded-halfcheetah-medium-1m"].ref_max == o3f_iql.TASKS["embedded-halfcheetah-medium"].ref_max
    )


def test_making_a_dataset_leaves_the_callers_random_streams_alone(tmp_path):
    """The behaviour policy draws from its own seed: a script that makes its data on first use starts the same as
    one that finds them cached."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        before = torch.get_rng_state()
        make_datasets.generate("embedded-halfcheetah-medium", str(tmp_path / "m.hdf5"), seed=0, transitions=50)
        assert torch.equal(torch.get_rng_state(), before)


def test_a_seed_starts_the_same_whether_the_data_were_made_or_found(small_dataset):
    """setup seeds after loading: a first run (the data made on the spot, which draws random numbers) and every later
    one (the data cached) start from the same networks."""
    import random

    args = o3f_iql.Args(dataset_path=small_dataset, cuda=False, seed=7)
    real_load, starts = o3f_iql.load_dataset, []
    python_state, numpy_state, deterministic = (
        random.getstate(),
        np.random.get_state(),
        torch.backends.cudnn.deterministic,
    )

    def load_while_making(*a):  # what making the data on an empty cache does to the global streams
        torch.rand(1000), np.random.rand(1000), random.random()
        return real_load(*a)

    try:
        with torch.random.fork_rng(devices=[]):
            for load in (real_load, load_while_making):
                o3f_iql.load_dataset = load
                o3f_iql.setup(args, {})
                starts.append((torch.rand(3), np.random.rand(3), random.random()))
    finally:
        o3f_iql.load_dataset = real_load
        random.setstate(python_state), np.random.set_state(numpy_state)
        torch.backends.cudnn.deterministic = deterministic
    (t1, n1, p1), (t2, n2, p2) = starts
    assert torch.equal(t1, t2) and np.array_equal(n1, n2) and p1 == p2
