"""Memory of the replay buffer at the largest D4RL scale: a 2M-transition dataset plus 1M online transitions.

    python lab/speed/memory.py            # prints a table, then one JSON line

Writes a D4RL-format HDF5 file of random transitions (HalfCheetah/Walker2d sizes: 17-d observations,
6-d actions; the size of the medium-expert datasets) to a temporary folder, then, in a fresh process
(`measure_buffer`), loads it with the scripts' own `load_dataset` and `ReplayBuffer` and fills the online rows.
Reports the
process's resident memory (VmRSS) over the raw bytes of those transitions as D4RL stores them
(float32 observations, next observations, actions and rewards; one byte per terminal flag), at the
peak while loading (VmHWM) and with the buffer full.
"""

import json
import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass

import h5py
import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Args:
    offline: int = 2_000_000
    """transitions in the dataset"""
    online: int = 1_000_000
    """online transitions the buffer reserves (and this benchmark writes)"""
    obs_dim: int = 17
    act_dim: int = 6
    script: str = "o3f_iql"
    """whose load_dataset and ReplayBuffer to measure (the four scripts share them verbatim)"""


def write_dataset(path: str, n: int, obs_dim: int, act_dim: int, chunk: int = 250_000):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for key, shape, dtype in (
            ("observations", (obs_dim,), np.float32),
            ("next_observations", (obs_dim,), np.float32),
            ("actions", (act_dim,), np.float32),
            ("rewards", (), np.float32),
            ("terminals", (), bool),
            ("timeouts", (), bool),
        ):
            ds = f.create_dataset(key, (n, *shape), dtype=dtype)
            for start in range(0, n, chunk):
                size = min(chunk, n - start)
                ds[start : start + size] = (
                    rng.random((size, *shape)) < 0.001
                    if dtype is bool
                    else rng.standard_normal((size, *shape), np.float32)
                )


def status_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def measure_buffer(script: str, path: str, n: int, m: int) -> dict:
    """In a fresh process: load `path` with `script`'s load_dataset and ReplayBuffer, fill the online rows."""
    import torch

    sys.path.insert(0, ROOT)
    module = __import__(script)
    base = status_mb("VmRSS")
    data = module.load_dataset("halfcheetah-medium-expert-v2", path)
    rb = module.ReplayBuffer(data, n + m, torch.device("cpu"))
    del data
    loaded = status_mb("VmRSS")
    for key in ("obs", "actions", "rewards", "next_obs", "dones"):  # write every online row, as 1M env steps would
        getattr(rb, key)[n:].normal_()
    rb.size = n + m
    return {
        "base_mb": base,
        "loaded_mb": loaded,
        "full_mb": status_mb("VmRSS"),
        "peak_mb": status_mb("VmHWM"),
        "buffer_mb": sum(getattr(rb, k).nbytes for k in ("obs", "actions", "rewards", "next_obs", "dones")) / 2**20,
    }


if __name__ == "__main__":
    args = tyro.cli(Args)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "large.hdf5")
        write_dataset(path, args.offline, args.obs_dim, args.act_dim)
        with multiprocessing.get_context("spawn").Pool(
            1
        ) as pool:  # a fresh process: its peak memory is the buffer's alone
            try:
                m = pool.apply(measure_buffer, (args.script, path, args.offline, args.online))
            except Exception as e:
                sys.exit(f"error: the measuring process failed: {type(e).__name__}: {e}")
    n = args.offline + args.online
    raw_mb = n * ((2 * args.obs_dim + args.act_dim + 1) * 4 + 1) / 2**20
    results = {
        "offline": args.offline,
        "online": args.online,
        "raw_mb": raw_mb,
        **m,
        "full_over_raw": (m["full_mb"] - m["base_mb"]) / raw_mb,
        "peak_over_raw": (m["peak_mb"] - m["base_mb"]) / raw_mb,
    }
    print(
        f"{args.offline:,} offline + {args.online:,} online transitions "
        f"({args.obs_dim}-d obs, {args.act_dim}-d actions)"
    )
    print(f"raw bytes (D4RL's dtypes)          {raw_mb:8.0f} MB")
    print(f"buffer tensors                     {m['buffer_mb']:8.0f} MB")
    print(
        f"resident, buffer full              {m['full_mb'] - m['base_mb']:8.0f} MB  "
        f"= {results['full_over_raw']:.2f}x raw"
    )
    print(
        f"resident, peak (loading included)  {m['peak_mb'] - m['base_mb']:8.0f} MB  "
        f"= {results['peak_over_raw']:.2f}x raw"
    )
    print(json.dumps(results))
