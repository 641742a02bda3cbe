"""The GPU kit (lab/gpu/), as far as a CPU runs it: gpu_session.sh's stages in its dry mode, block_profile.py's stage
isolation, the time limits of one device call, and gpu_equality.py's comparison and pace read from real runs."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from conftest import ROOT


def test_the_gpu_kit_runs_end_to_end_on_a_cpu_in_its_dry_mode(small_dataset, tmp_path):
    """`gpu_session.sh run --dry` on a CPU: every stage runs under its limit and writes its own output; graph_checks.py
    (block_runner's eager loop on a CPU) passes every check; block_profile.py writes its pace and its profile (the CPU
    profiler as the stand-in); the graphed runs stop at once (no CUDA device: exit 2) and cost only their own lines;
    the eager runs finish and are paced from their logs."""
    data, out, runs = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    (data / "embedded").mkdir(parents=True)
    out.mkdir()
    shutil.copy(small_dataset, data / "embedded" / "embedded-halfcheetah-medium.hdf5")  # stands in for the task's data
    env = {**os.environ, "OUT": str(out), "GPU_RUNS": str(runs), "O3F_DATA_DIR": str(data), "CUDA_VISIBLE_DEVICES": ""}
    start = time.time()
    command = ["bash", os.path.join(ROOT, "lab", "gpu", "gpu_session.sh"), "run", "--dry"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=500, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.time() - start < 500  # within the device call, with room
    exits = (out / "exits.txt").read_text().splitlines()
    assert exits == [
        "graph_checks exit 0",
        "block_profile exit 0",
        "o3f_lapo eager exit 0",
        "o3f_lapo graphs exit 2",
        "o3f_lapo compiled_graphs exit 2",
        "o3f_iql eager exit 0",
        "o3f_iql graphs exit 2",
        "o3f_iql compiled_graphs exit 2",
    ]
    assert (out / "gpu.txt").read_text().startswith("no GPU\ntorch ")
    checks = [json.loads(line) for line in (out / "graph_checks.jsonl").read_text().splitlines()]
    names = ["draws", "iql_update", "lapo_critic_update", "lapo_actor_update", "cql_update", "awac_update"]
    assert [row["check"] for row in checks[:-1]] == names and all(row["ok"] for row in checks[:-1])
    assert checks[0]["replays_differ"] and checks[0]["row_added_after_recording_drawn"]
    assert checks[-1] == {"device": "cpu", "failed": []}
    profile = [json.loads(line) for line in (out / "block_profile.jsonl").read_text().splitlines()]
    assert [(row["stage"], row["mode"], row["n"]) for row in profile] == [
        ("pace", "eager", 1),
        ("profile", "eager loop (CPU stand-in)", 5),
    ]
    assert profile[0]["updates"] == 20 and profile[0]["updates_per_s"] > 0
    assert profile[1]["kernels_per_update"] > 10 and profile[1]["device_us_per_update"] > 0
    paced = [json.loads(line) for line in (out / "pace.jsonl").read_text().splitlines()]
    assert [("o3f_lapo" in row["run"], row["complete"]) for row in paced] == [(True, True), (False, True)]
    assert all(row["offline_steps_per_s"] > 0 for row in paced)  # read from the runs' logs
    assert "--cudagraphs needs a CUDA device" in (out / "o3f_iql-graphs.log").read_text()


def test_a_block_profile_stage_that_raises_costs_only_its_own_line(monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, "lab", "gpu"))
    try:
        import block_profile
    finally:
        sys.path.remove(os.path.join(ROOT, "lab", "gpu"))

    def broken(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(block_profile, "pace", broken)
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():  # the global random streams as they were
        assert block_profile.main(block_profile.Args(updates=5, block=5, rows=1000)) == 1
    np.random.set_state(numpy_state)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["stage"] == "error" and "stream is capturing" in rows[0]["error"]
    assert rows[1]["stage"] == "profile" and rows[1]["kernels_per_update"] > 0  # the next stage still ran


def test_the_gpu_kits_time_limits_fit_one_device_call():
    """Every stage of the GPU kit's run has a time limit, and together they leave room within the device tool's 540 s
    call (installing the carried wheels and reading the runs back take the rest)."""
    text = open(os.path.join(ROOT, "lab", "gpu", "gpu_session.sh")).read()
    stages = [int(n) for n in re.findall(r"^\s*timeout (\d+) \$PY", text, re.M)]
    per_run = [int(n) for n in re.findall(r"\[\w+\]=(\d+)", re.search(r"declare -A limit=\((.*)\)", text).group(1))]
    scripts = re.search(r"for script in ([\w ]+); do", text).group(1).split()
    assert len(stages) == 2 and len(per_run) == 3 and scripts == ["o3f_lapo", "o3f_iql"]
    assert sum(stages) + len(scripts) * sum(per_run) <= 510


def test_the_gpu_checks_compare_a_run_with_the_eager_one_and_read_each_runs_pace(
    run_script, small_dataset, tmp_path, monkeypatch
):
    """lab/gpu/gpu_equality.py, as far as a CPU runs it: two runs of the same script, seed and flags are equal in
    their final weights and every logged loss; another seed's run is not, from its first logged step; the pace of a
    run comes from its TensorBoard log, per phase, from the second log point of each."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "lab"))
    import gpu_equality

    flags = ["--dataset-path", small_dataset, "--offline-steps", 60, "--online-steps", 40, "--block", 7]
    flags += ["--log-freq", 10, "--eval-freq", 1000, "--eval-episodes", 1, "--checkpoint-every", 0, "--batch-size", 32]
    for name, seed in (("eager", 1), ("again", 1), ("other", 2)):
        run = run_script("o3f_iql.py", *flags, "--seed", seed, "--output-dir", tmp_path / name)
        assert run.returncode == 0, run.stderr[-2000:]
    same = gpu_equality.compare(str(tmp_path / "eager"), str(tmp_path / "again"))
    assert same["complete"] and same["cudagraphs"] is False and same["compile"] is False
    assert same["weights_max_abs_diff"] == 0.0 and same["losses_max_rel_diff"] == 0.0
    assert same["losses_first_step_past_1e3"] is None
    other = gpu_equality.compare(str(tmp_path / "eager"), str(tmp_path / "other"))
    assert other["weights_max_rel_diff"] > 1e-3 and other["losses_first_step_past_1e3"] == 10
    (row,) = gpu_equality.pace(str(tmp_path / "eager"))
    assert row["complete"] and row["offline_steps_per_s"] > 0 and row["online_steps_per_s"] > 0
    assert row["wall_s"] > 40 / row["offline_steps_per_s"]  # the run took at least its measured stretch, steps 20-60
