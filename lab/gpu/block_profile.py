"""The pace and the profile of IQL's updates through the script's own block_runner, on what the device offers (a GPU
run of lab/gpu/gpu_session.sh makes them second, after graph_checks.py; on a CPU the same stages run the eager loop,
the dry mode that tests this file):

    python lab/gpu/block_profile.py [--updates 2000] [--block 100]   # one JSON line per stage, as each ends

1. pace: IQL updates per second (o3f_iql's update, 5 critics, batch 256, HalfCheetah's sizes, batches drawn inside
   the update from a buffer of 100k random rows), eager one update per call, then with --cudagraphs one graph of one
   update (n = 1, every online step's case) and one graph of --block updates (n = block), each timed over --updates
   updates after its warm-up and recording, the device synchronised before each clock reading;
2. profile: one call of --block updates under torch.profiler: the kernels it launches and their device time, per
   update (on a GPU, the graph's replay; on a CPU, the operators of the eager loop, as a stand-in).
A stage that raises writes its error in its own line and the next stage still runs.
"""

import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # the scripts, at the repository's top
    sys.path.insert(0, ROOT)

from graph_checks import buffer, spaces  # noqa: E402

import o3f_iql  # noqa: E402


@dataclass
class Args:
    updates: int = 2000
    """updates timed per mode (after the warm-up)"""
    block: int = 100
    """the block of updates one call runs (as --block)"""
    rows: int = 100_000
    """the replay buffer's rows"""


def iql_updates(device, graphed: bool, block: int, rows: int):
    """o3f_iql's update as the loop runs it: `updates(n)` runs n of them in one call (graphed: a recorded graph)."""
    args = o3f_iql.Args(num_critics=5, expectile=0.7, beta=3.0, sigma=0.2, cudagraphs=graphed, block=block)
    agent = o3f_iql.Agent(spaces(), args, device)
    rb, _ = buffer(o3f_iql, device, n=rows)
    return o3f_iql.block_runner(lambda: o3f_iql.iql_update(agent, rb.sample(256), 0.7, args), args)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def pace(device, name: str, graphed: bool, n: int, args: Args) -> dict:
    updates = iql_updates(device, graphed, args.block, args.rows)
    for _ in range(3):  # warm-up; a graphed call records at its third
        updates(n)
    synchronize(device)
    calls = max(args.updates // n, 1)
    start = time.perf_counter()
    for _ in range(calls):
        updates(n)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"stage": "pace", "mode": name, "n": n, "updates": calls * n, "updates_per_s": calls * n / seconds}


def profile(device, args: Args) -> dict:
    graphed = device.type == "cuda"
    updates = iql_updates(device, graphed, args.block, args.rows)
    for _ in range(3):
        updates(args.block)
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * graphed
    with torch.profiler.profile(activities=activities) as prof:
        updates(args.block)
        synchronize(device)
    events = prof.events()
    if graphed:  # what ran on the GPU: its kernels and copies
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        device_us = sum(e.device_time_total for e in kernels)
    else:  # the stand-in: the operators the eager loop ran on the CPU (top level, each counted once)
        kernels = [e for e in events if e.name.startswith("aten::") and e.cpu_parent is None]
        device_us = sum(e.cpu_time_total for e in kernels)
    return {
        "stage": "profile",
        "mode": "graph replay" if graphed else "eager loop (CPU stand-in)",
        "n": args.block,
        "kernels_per_update": len(kernels) / args.block,
        "device_us_per_update": device_us / args.block,
    }


def main(args: Args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    modes = [("eager", False, 1)] + ([("graphed", True, 1), ("graphed", True, args.block)] * (device.type == "cuda"))
    stages = [lambda m=m: pace(device, *m, args) for m in modes] + [lambda: profile(device, args)]
    failed = 0
    for stage in stages:
        try:
            row = stage()
        except Exception as e:  # one stage's failure is its own line; the next stage runs
            row, failed = {"stage": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}, failed + 1
        print(json.dumps({"device": device.type, "torch": torch.__version__, **row}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    sys.exit(main(tyro.cli(Args)))
