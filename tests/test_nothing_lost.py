"""Nothing computed is lost, and no bad model is saved as good: flags checked before any work, non-finite networks
never written, unique run folders, write errors and Ctrl-C ending in one line."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, assert_one_line, write_d4rl


@pytest.mark.parametrize(
    "script, flags, words",
    [
        ("o3f_iql.py", ["--learning-rate", "nan"], ["--learning-rate must be a finite number"]),
        ("o3f_iql.py", ["--learning-rate", "-1"], ["--learning-rate must be > 0"]),
        ("o3f_lapo.py", ["--learning-rate", "inf"], ["--learning-rate must be a finite number"]),
        ("o3f_iql.py", ["--gamma", "nan"], ["--gamma must be a finite number"]),
        ("awac.py", ["--gamma", "1.5"], ["--gamma must be <= 1"]),
        ("o3f_iql.py", ["--tau", "2"], ["--tau must be <= 1"]),
        ("o3f_lapo.py", ["--tau", "0"], ["--tau must be > 0"]),
        ("o3f_iql.py", ["--omega", "nan"], ["--omega must be a finite number"]),
        ("iql_noise.py", ["--sigma", "inf"], ["--sigma must be a finite number"]),
        ("cql_to_sac.py", ["--q-lr", "nan"], ["--q-lr must be a finite number"]),
        ("cql_to_sac.py", ["--policy-lr", "0"], ["--policy-lr must be > 0"]),
        ("o3f_iql.py", ["--seed", "-1"], ["--seed must be >= 0"]),
        ("o3f_lapo.py", ["--seed", "4294967296"], ["--seed must be <= 4294967295"]),
    ],
)
def test_float_flags_and_seeds_are_checked_before_any_work(run_script, small_dataset, script, flags, words):
    assert_one_line(run_script(script, "--dataset-path", small_dataset, *flags), 2, *words)


def test_save_offline_is_checked_before_the_pretraining_it_would_keep(run_script, small_dataset, tmp_path):
    folder = run_script("o3f_iql.py", "--dataset-path", small_dataset, "--save-offline", tmp_path)
    assert_one_line(folder, 2, "--save-offline must name a file, not a folder")
    (tmp_path / "a-file").write_text("")
    under_a_file = run_script("o3f_iql.py", "--dataset-path", small_dataset, "--save-offline", tmp_path / "a-file/m.pt")
    assert_one_line(under_a_file, 2, "--save-offline", "its folder cannot be made")
    assert not glob.glob(str(tmp_path / "**" / "summary.json"), recursive=True)  # refused before any run began


def test_a_diverging_pretraining_saves_no_model_and_is_never_complete(run_script, small_dataset, tmp_path):
    flags = ["--dataset-path", small_dataset, "--learning-rate", "1e6", "--offline-steps", 150, "--online-steps", 0]
    flags += ["--eval-freq", 1000, "--log-freq", 1000, "--checkpoint-every", 0, "--batch-size", 32]
    result = run_script("o3f_iql.py", *flags, "--output-dir", tmp_path)
    assert result.returncode == 3 and "Traceback" not in result.stderr  # (MuJoCo warns of the NaN actions before it)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "training diverged: non-finite network weights by step 150; no checkpoint was written before it" in line
    assert not glob.glob(str(tmp_path / "*" / "*.pt"))  # neither offline.pt nor final.pt
    (summary,) = glob.glob(str(tmp_path / "*" / "summary.json"))
    assert json.load(open(summary))["complete"] is False


def test_a_model_diverging_at_the_switch_names_the_runs_checkpoint_not_the_save_offline_folder(tmp_path, capsys):
    """--save-offline writes elsewhere; the line names the run's own checkpoint.pt, the last good one."""
    import o3f_iql

    agent = SimpleNamespace(qf=torch.nn.Linear(2, 2))
    args = o3f_iql.Args(env_id="embedded-halfcheetah-medium", save_offline=str(tmp_path / "models" / "m.pt"))
    run = SimpleNamespace(args=args, agent=agent, dir=str(tmp_path / "run"))
    os.makedirs(run.dir)
    o3f_iql.save_checkpoint(os.path.join(run.dir, "checkpoint.pt"), 5, run)
    with torch.no_grad():
        agent.qf.bias[0] = float("inf")
    with pytest.raises(SystemExit) as stop:
        o3f_iql.save_checkpoint(args.save_offline, 10, run)
    assert stop.value.code == 3 and not os.path.exists(args.save_offline)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert f"by step 10; the last good checkpoint is {os.path.join(run.dir, 'checkpoint.pt')}" in line


def test_two_runs_started_in_the_same_second_get_folders_of_their_own(small_dataset, data_dir, tmp_path):
    """A clock fixed to one second for both processes: their folders differ all the same, and both runs finish."""
    clock = "import itertools, time; ticks = itertools.count(); time.time = lambda: 1.8e9 + next(ticks) * 1e-9"
    run = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    flags = ["--dataset-path", small_dataset, "--offline-steps", "30", "--online-steps", "0", "--eval-freq", "1000"]
    flags += ["--eval-episodes", "1", "--batch-size", "32", "--checkpoint-every", "0", "--output-dir", str(tmp_path)]
    command = [sys.executable, "-c", f"{clock}; {run}", os.path.join(ROOT, "o3f_iql.py"), "--no-cuda", *flags]
    env = {**os.environ, "O3F_DATA_DIR": data_dir}
    runs = [subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in runs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    folders = sorted(glob.glob(str(tmp_path / "*" / "summary.json")))
    assert len(folders) == 2 and all(json.load(open(f))["complete"] for f in folders)
    assert len({os.path.basename(os.path.dirname(f)).split("__")[3] for f in folders}) == 1  # the same second


def test_a_failed_write_keeps_the_last_good_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, capsys):
    import o3f_iql

    agent, args = SimpleNamespace(qf=torch.nn.Linear(2, 2)), o3f_iql.Args(env_id="embedded-halfcheetah-medium")
    run, path = SimpleNamespace(args=args, agent=agent, dir=str(tmp_path)), str(tmp_path / "checkpoint.pt")
    o3f_iql.save_checkpoint(path, 1, run)
    good = open(path, "rb").read()

    def full_disk(obj, f, *rest, **kw):
        open(f, "wb").write(b"half")  # part of the file written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(o3f_iql.torch, "save", full_disk)
    with pytest.raises(SystemExit) as stop:
        o3f_iql.save_checkpoint(path, 2, run)
    assert stop.value.code == 2 and os.listdir(tmp_path) == ["checkpoint.pt"] and open(path, "rb").read() == good
    (line,) = capsys.readouterr().err.splitlines()
    assert "No space left on device" in line and f"the last good one is still {path}" in line


def test_a_dataset_of_strings_or_with_nan_in_a_dropped_row_is_refused(run_script, tmp_path):
    n = 300
    path = write_d4rl(tmp_path / "strings.hdf5", np.zeros((n, 17)), np.zeros((n, 6)))
    with h5py.File(path, "a") as f:
        del f["rewards"]
        f["rewards"] = np.array([b"x"] * n)
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", path), 2, "not all numbers")
    # no next_observations: the row before a time limit is dropped, yet its reward counts in the episode returns
    timeouts = np.zeros(n, bool)
    timeouts[99] = True
    rewards = np.ones(n, np.float32)
    rewards[99] = np.nan
    path = write_d4rl(tmp_path / "nan.hdf5", np.zeros((n, 17)), np.zeros((n, 6)), rewards, timeouts=timeouts)
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", path), 2, "rewards holds NaN")


def test_checkpoint_messages_name_the_cause(run_script, small_dataset, tmp_path):
    flags = ["--dataset-path", small_dataset, "--offline-steps", 20, "--online-steps", 0, "--eval-freq", 1000]
    flags += ["--eval-episodes", 1, "--batch-size", 32, "--checkpoint-every", 10]
    first = run_script("o3f_iql.py", *flags, "--output-dir", tmp_path / "runs")
    assert first.returncode == 0, first.stderr[-2000:]
    (checkpoint,) = glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))
    other = run_script("iql_noise.py", "--resume", checkpoint)
    assert_one_line(other, 2, "another script's run (o3f_iql)")
    again = run_script("o3f_iql.py", "--resume", checkpoint, "--online-steps", 5000, "--output-dir", tmp_path / "x")
    assert again.returncode == 0, again.stderr[-2000:]  # the run resumed as it was, and said what it left aside
    assert "--resume keeps its flags; ignored: --online-steps --output-dir" in again.stderr
    assert not (tmp_path / "x").exists()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(checkpoint, "rb").read()[:1000])
    assert_one_line(run_script("o3f_iql.py", "--resume", cut), 2, "cannot be read, truncated or not a checkpoint")
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", junk), 2, "delete it and run again")


def test_ctrl_c_while_the_dataset_is_made_ends_in_one_line_and_leaves_no_temporary_file(tmp_path):
    """The embedded dataset is made on first use (about half a minute) by make_datasets.py, run as a program of its
    own: Ctrl-C (SIGINT to the terminal's process group) ends both; one line, exit 130, no file left."""
    env = {**os.environ, "O3F_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, os.path.join(ROOT, "o3f_iql.py"), "--no-cuda", "--output-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = proc.stderr.readline()  # the script says when it begins making the dataset
    assert first.startswith("making the embedded dataset"), first
    time.sleep(4.0)  # the tool started and making
    os.killpg(proc.pid, signal.SIGINT)
    err = first + proc.stderr.read()  # read to its end: the script waits for the tool before it ends
    assert proc.wait(timeout=60) == 130 and "Traceback" not in err, err[-2000:]
    assert [line for line in err.splitlines() if line.strip()][1:] == ["interrupted before training"], err
    assert glob.glob(str(tmp_path / "embedded" / "*")) == []  # no half-made file, no temporary one


def test_resuming_into_a_folder_that_cannot_be_written_ends_in_one_line(run_script, small_dataset, tmp_path):
    """The run's folder made immutable (chattr +i: even root cannot write there): one line and exit 2, no traceback."""
    flags = ["--dataset-path", small_dataset, "--offline-steps", 20, "--online-steps", 0, "--eval-freq", 1000]
    flags += ["--eval-episodes", 1, "--batch-size", 32, "--checkpoint-every", 10, "--output-dir", tmp_path]
    assert run_script("o3f_iql.py", *flags).returncode == 0
    (checkpoint,) = glob.glob(str(tmp_path / "*" / "checkpoint.pt"))
    folder = os.path.dirname(checkpoint)
    if subprocess.run(["chattr", "+i", folder], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        assert_one_line(run_script("o3f_iql.py", "--resume", checkpoint), 2, "cannot write the run to", folder)
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)
