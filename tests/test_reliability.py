"""Long runs: kill -9 and resume, Ctrl-C, the divergence guard, and bad paths."""

import glob
import importlib.metadata
import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, write_d4rl

# 300 offline updates, then 2100 online steps of 1000-step HalfCheetah episodes: online checkpoints
# fall at the ends of episodes (steps 1300 and 2300).
RUN = [
    "--offline-steps",
    300,
    "--online-steps",
    2100,
    "--eval-freq",
    300,
    "--eval-episodes",
    1,
    "--batch-size",
    32,
    "--log-freq",
    100,
    "--checkpoint-every",
    100,
    "--n-candidates",
    10,
]


def start(script, data_dir, *flags):
    env = {**os.environ, "O3F_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), "--no-cuda", *map(str, flags)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def evaluations(output_dir):
    (path,) = glob.glob(os.path.join(str(output_dir), "*", "summary.json"))
    return json.load(open(path))


def checkpoint_step(output_dir):
    paths = glob.glob(os.path.join(str(output_dir), "*", "checkpoint.pt"))
    return torch.load(paths[0], weights_only=True)["step"] if paths else -1


@pytest.fixture(scope="module")
def uninterrupted(small_dataset, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    proc = start("o3f_iql.py", data_dir, "--dataset-path", small_dataset, "--output-dir", out, *RUN)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return evaluations(out)


def test_a_run_killed_at_a_random_step_resumes_to_the_same_history(small_dataset, data_dir, uninterrupted, tmp_path):
    proc = start("o3f_iql.py", data_dir, "--dataset-path", small_dataset, "--output-dir", tmp_path, *RUN)
    deadline = time.time() + 300
    while checkpoint_step(tmp_path) < 1300 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # wait for the first online checkpoint (end of the first online episode)
    time.sleep(random.uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = evaluations(tmp_path)
    assert not partial["complete"]

    (run_dir,) = glob.glob(str(tmp_path / "*"))
    resumed = start("o3f_iql.py", data_dir, "--resume", run_dir)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    after = evaluations(tmp_path)
    assert after["complete"]
    assert after["evaluations"] == uninterrupted["evaluations"]  # every score, to the last digit
    assert len(after["platforms"]) == 1 and "resumed with another" not in err  # the same machine throughout


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(small_dataset, data_dir, tmp_path):
    proc = start(
        "o3f_iql.py",
        data_dir,
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path,
        *RUN[:-2],
        "--checkpoint-every",
        0,
    )
    deadline = time.time() + 300
    while not glob.glob(str(tmp_path / "*" / "summary.json")) and time.time() < deadline:
        time.sleep(0.2)  # the first evaluation has been written: the run is in its loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "*"))
    assert f"--resume {os.path.join(run_dir, 'checkpoint.pt')}" in err and "Traceback" not in err
    resumed = start("o3f_iql.py", data_dir, "--resume", run_dir)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    history = evaluations(tmp_path)
    assert history["complete"] and [e["step"] for e in history["evaluations"]] == list(range(300, 2401, 300))


@pytest.mark.parametrize("script", ["o3f_iql.py", "cql_to_sac.py"])
def test_a_diverging_run_stops_and_writes_no_bad_checkpoint(run_script, tmp_path, script):
    path = tmp_path / "huge.hdf5"  # finite, but so large that the squared errors overflow float32
    write_d4rl(path, np.full((500, 17), 1e30), np.random.uniform(-1, 1, (500, 6)), np.random.randn(500))
    result = run_script(
        script,
        "--dataset-path",
        path,
        "--output-dir",
        tmp_path / "runs",
        "--offline-steps",
        50,
        "--online-steps",
        0,
        "--log-freq",
        10,
        "--checkpoint-every",
        10,
        "--batch-size",
        32,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "training diverged" in result.stderr and "Traceback" not in result.stderr
    assert not glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))  # nothing non-finite is ever saved


def test_a_non_finite_network_is_never_saved(tmp_path, capsys):
    """Whatever writes a model (the switch's, a snapshot, a checkpoint, the final one) goes through save_checkpoint,
    which stops the run (exit 3, one line) rather than write a network with a NaN in it."""
    import o3f_lapo

    agent, args = SimpleNamespace(qf=torch.nn.Linear(2, 2)), o3f_lapo.Args(env_id="embedded-halfcheetah-medium")
    run = SimpleNamespace(args=args, agent=agent, dir=str(tmp_path))
    o3f_lapo.save_checkpoint(str(tmp_path / "good.pt"), 1, run)
    with torch.no_grad():
        agent.qf.weight[0, 0] = float("nan")
    with pytest.raises(SystemExit) as stop:
        o3f_lapo.save_checkpoint(str(tmp_path / "bad.pt"), 2, run)
    assert stop.value.code == 3 and os.listdir(tmp_path) == ["good.pt"]
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: training diverged: non-finite network weights by step 2")


@pytest.mark.parametrize("script", ["o3f_iql.py", "o3f_lapo.py", "cql_to_sac.py"])
def test_an_output_directory_that_cannot_be_made(run_script, small_dataset, tmp_path, script):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_script(script, "--dataset-path", small_dataset, "--output-dir", blocker / "runs")
    assert result.returncode == 2 and "--output-dir" in result.stderr and "Traceback" not in result.stderr


def test_resume_needs_a_whole_run_checkpoint(run_script, small_dataset, tmp_path):
    torch.save({"algorithm": "iql", "env_id": "embedded-halfcheetah-medium", "step": 3}, tmp_path / "model.pt")
    result = run_script("o3f_iql.py", "--resume", tmp_path / "model.pt")
    assert result.returncode == 2 and "--load-offline" in result.stderr
    result = run_script("o3f_lapo.py", "--resume", tmp_path / "model.pt")
    assert result.returncode == 2 and "needs o3f_lapo.py" in result.stderr
    result = run_script("cql_to_sac.py", "--resume", tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr


@pytest.mark.parametrize("script", ["o3f_lapo.py", "cql_to_sac.py", "awac.py"])
def test_resuming_from_a_mid_run_checkpoint_replays_the_same_history(run_script, small_dataset, tmp_path, script):
    import shutil

    flags = [
        "--offline-steps",
        60,
        "--online-steps",
        0,
        "--eval-freq",
        20,
        "--eval-episodes",
        1,
        "--batch-size",
        32,
        "--checkpoint-every",
        40,
        "--log-freq",
        20,
        "--block",  # offline updates in blocks: the checkpoint at 40 holds every step's before it
        7,
    ]
    result = run_script(script, "--dataset-path", small_dataset, "--output-dir", tmp_path / "a", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "a" / "*"))
    assert torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["step"] == 40
    copy = shutil.copytree(run_dir, tmp_path / "b" / os.path.basename(run_dir))
    state = torch.load(os.path.join(copy, "checkpoint.pt"), weights_only=True)
    assert state["summary"]["wall_s_since_step"] == 0 and 0 < state["summary"]["wall_s"]
    state["summary"]["wall_s"] = 1e6  # as if the first 40 steps had taken 1e6 s: the resumed run adds its own time
    (here,) = state["summary"]["platforms"]  # where the run ran: this machine, from step 0
    assert here["from_step"] == 0 and here["torch"] == importlib.metadata.version("torch") and here["gpu"] is None
    state["summary"]["platforms"] = [{**here, "cpu": "another CPU"}]  # as if the first 40 steps ran elsewhere
    torch.save(state, os.path.join(copy, "checkpoint.pt"))
    started = time.time()
    result = run_script(script, "--resume", copy)  # steps 41 to 60 again, from the checkpoint at 40
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = evaluations(tmp_path / "b")
    assert resumed["evaluations"] == evaluations(tmp_path / "a")["evaluations"]
    assert 1e6 < resumed["wall_s"] < 1e6 + time.time() - started and resumed["wall_s_since_step"] == 0
    assert "resumed with another CPU, GPU or library build" in result.stderr  # said once, and recorded
    assert resumed["platforms"] == [{**here, "cpu": "another CPU"}, {**here, "from_step": 40}]
