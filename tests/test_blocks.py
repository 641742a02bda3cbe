"""--block: offline stretches of updates as one call (one CUDA graph replay under --cudagraphs), the same updates."""

import glob
import json
import os
from types import SimpleNamespace

import pytest
import torch

import o3f_iql

SCRIPTS = ["o3f_iql.py", "iql_noise.py", "o3f_lapo.py", "cql_to_sac.py", "awac.py"]


def final_state(output_dir):
    (run_dir,) = glob.glob(os.path.join(output_dir, "*"))
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    return torch.load(os.path.join(run_dir, "final.pt"), weights_only=True), summary


def tensors(tree, prefix=""):
    """Every tensor of a checkpoint (networks and optimisers), by its path."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_blocks_of_steps_run_the_updates_one_step_at_a_time_would(run_script, small_dataset, tmp_path, script):
    """30 offline steps in blocks of 7 (cut short where a log, an evaluation or the switch is due), then 8 online: the
    same networks, optimiser states and evaluations, bit for bit, as one step per call."""
    flags = ["--dataset-path", small_dataset, "--offline-steps", 30, "--online-steps", 8, "--eval-freq", 25]
    flags += ["--eval-episodes", 1, "--batch-size", 16, "--log-freq", 10, "--checkpoint-every", 0]
    flags += ["--utd", 2] if script == "o3f_lapo.py" else []
    for block in (1, 7):
        result = run_script(script, *flags, "--block", block, "--output-dir", tmp_path / str(block))
        assert result.returncode == 0, result.stderr[-2000:]
    (one, one_summary), (seven, seven_summary) = final_state(tmp_path / "1"), final_state(tmp_path / "7")
    one, seven = tensors(one), tensors(seven)
    assert len(one) > 10 and one.keys() == seven.keys()
    assert all(torch.equal(one[key], seven[key]) for key in one)
    assert one_summary["evaluations"] == seven_summary["evaluations"]
    assert [e["step"] for e in seven_summary["evaluations"]] == [25, 30, 38]


def schedule(**flags):
    """The steps at which the loop runs updates, and how many steps' each time, under these flags."""
    args = dict(offline_steps=30, online_steps=5, block=7, log_freq=10, eval_freq=25, checkpoint_every=0)
    args = SimpleNamespace(**{**args, "snapshot_every": 0, "snapshot_steps": (12,), **flags})
    run = SimpleNamespace(args=args, pending=0, interrupted=[], total_steps=args.offline_steps + args.online_steps)
    calls = []
    for step in range(1, run.total_steps + 1):
        if n := o3f_iql.Run.steps_to_update(run, step, now=step > args.offline_steps):
            calls.append((step, n))
    return calls


def test_offline_steps_wait_for_a_full_block_or_for_the_bookkeeping_that_needs_them():
    offline = [(7, 7), (10, 3), (12, 2), (19, 7), (20, 1), (25, 5), (30, 5)]  # block; log; snapshot; block; log; ...
    assert schedule() == offline + [(step, 1) for step in range(31, 36)]  # online: every step, at once
    assert schedule(block=1) == [(step, 1) for step in range(1, 36)]  # the default: every step
    assert sum(n for _, n in schedule(block=100, log_freq=1000)) == 35  # no step's updates lost, none twice
    assert schedule(block=100, log_freq=1000, eval_freq=1000, snapshot_steps=())[0] == (30, 30)  # the switch


def test_a_signal_ends_the_wait_so_that_the_checkpoint_holds_every_step_before_it():
    args = SimpleNamespace(offline_steps=100, block=50, log_freq=1000, eval_freq=1000, checkpoint_every=0)
    args.snapshot_every, args.snapshot_steps = 0, ()
    run = SimpleNamespace(args=args, pending=0, interrupted=[], total_steps=100)
    assert [o3f_iql.Run.steps_to_update(run, step, now=False) for step in (1, 2, 3)] == [0, 0, 0]
    run.interrupted.append(True)  # Ctrl-C or SIGTERM: Run.save_if_due writes the checkpoint after these updates
    assert o3f_iql.Run.steps_to_update(run, 4, now=False) == 4
