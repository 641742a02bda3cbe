"""GPU checks of --cudagraphs that a CPU cannot run (lab/gpu/gpu_session.sh runs them on a lent GPU):

    python lab/gpu/gpu_equality.py               # IQL: blocks replayed as CUDA graphs against eager steps
    python lab/gpu/gpu_equality.py --pace DIR    # the pace of the runs under DIR, from their TensorBoard logs

The first: the same IQL update (no random numbers in it) on the same fixed batches, 20 steps eager and 20 as
blocks of 5 replayed as one CUDA graph each (the first block the warm-up, which records the graph), both with
GraphAdam at eps 1 (smooth in the gradient, as the CPU tests compare); then a block of 100 updates timed as one
replay. One JSON line each.
"""

import copy
import glob
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import o3f_iql  # noqa: E402


def equality(device: str = "cuda") -> dict:
    """On "cpu" (the tests), the same harness with eager blocks and torch.optim's Adam: no CUDA graph, equal."""
    import gymnasium as gym

    device = torch.device(device)
    env = SimpleNamespace(observation_space=gym.spaces.Box(-1, 1, (17,)), action_space=gym.spaces.Box(-1, 1, (6,)))
    graphs = device.type == "cuda"
    args = o3f_iql.Args(cudagraphs=graphs, expectile=0.7, beta=3.0)  # GraphAdam in both on a GPU
    torch.manual_seed(0)
    eager = o3f_iql.Agent(env, args, device)
    for optimizer in (eager.q_optimizer, eager.v_optimizer, eager.actor_optimizer):
        for group in optimizer.param_groups:
            group["eps"] = 1.0
    graphed = copy.deepcopy(eager)
    n = args.batch_size
    batches = [
        tuple(t.to(device) for t in (torch.randn(n, 17), torch.rand(n, 6) * 2 - 1, torch.randn(n),
                                     torch.randn(n, 17), (torch.rand(n) < 0.1).float()))
        for _ in range(4)
    ]  # fmt: skip
    static = [t.clone() for t in batches[0]]  # the graph reads its batch here, refilled before each replay
    update = o3f_iql.maybe_compile(o3f_iql.iql_update, args)
    updates = o3f_iql.block_runner(lambda expectile: update(graphed, static, expectile, args), args)
    worst = {}
    for batch in batches:
        for dst, src in zip(static, batch):
            dst.copy_(src)
        got = updates(5, 0.7)
        for _ in range(5):
            expected = o3f_iql.iql_update(eager, batch, 0.7, args)
        for name in expected:
            rel = abs(got[name].item() - expected[name].item()) / max(abs(expected[name].item()), 1e-6)
            worst[f"{name}_rel"] = max(worst.get(f"{name}_rel", 0.0), rel)
    for name in ("actor", "qf", "qf_target", "vf"):
        diffs = [(p - q).abs().max().item() for p, q in zip(getattr(eager, name).parameters(),
                                                            getattr(graphed, name).parameters())]  # fmt: skip
        worst[f"{name}_max_abs_diff"] = max(diffs)
    if graphs:
        updates(100, 0.7)  # warm-up and recording of a block of 100
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            updates(100, 0.7)
        torch.cuda.synchronize()
        worst["iql_block100_cudagraph_updates_per_s"] = 500 / (time.perf_counter() - start)
        worst["gpu"] = torch.cuda.get_device_name()
    return {**worst, "torch": torch.__version__}


def pace(root: str) -> list:
    """Offline updates/s and online env steps/s of each run under `root`, between its log points (compiling and the
    first CUDA-graph recordings excluded: from the second log point of each phase)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for summary_path in sorted(glob.glob(os.path.join(root, "*", "summary.json"))):
        with open(summary_path) as f:
            summary = json.load(f)
        events = EventAccumulator(os.path.dirname(summary_path), size_guidance={"scalars": 0})
        events.Reload()
        tag = next(t for t in events.Tags()["scalars"] if t.startswith("losses/"))
        points = [(e.step, e.wall_time) for e in events.Scalars(tag)]
        offline_steps = summary["args"]["offline_steps"]
        row = {"run": summary["run_name"], "complete": summary["complete"], "wall_s": summary.get("wall_s")}
        for phase, part in (("offline", [p for p in points if p[0] <= offline_steps]),
                            ("online", [p for p in points if p[0] > offline_steps])):  # fmt: skip
            if len(part) >= 3:
                (s0, t0), (s1, t1) = part[1], part[-1]
                row[f"{phase}_steps_per_s"] = (s1 - s0) / (t1 - t0)
        rows.append(row)
    return rows


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pace":
        rows = pace(sys.argv[2])
        if not rows:
            fail(f"--pace {sys.argv[2]}: no run directory with a summary.json there")
        for row in rows:
            print(json.dumps(row))
    elif len(sys.argv) == 1:
        if not torch.cuda.is_available():
            fail("no CUDA device here: the CUDA-graph check runs on a GPU (lab/gpu/gpu_session.sh)")
        print(json.dumps(equality()))
    else:
        fail("usage: python lab/gpu/gpu_equality.py [--pace DIR]")
