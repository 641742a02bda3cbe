"""d3rlpy's IQL update time, for `lab/speed/speed.py --vs-d3rlpy PYTHON`, which runs this file with that interpreter.

    PYTHON lab/peers/d3rlpy_iql.py DATA.npz THREADS CRITICS REPEATS DEVICE    # prints one JSON line

Imports only numpy, torch and d3rlpy: it runs in d3rlpy's own environment, never this project's.
"""

import json
import statistics
import sys
import time


def median_ms(fn, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(path: str, threads: int, critics: int, repeats: int, device: str) -> dict:
    """Median ms of d3rlpy's IQL update, batch 256, `critics` critics (its encoders: 2 x 256, as this project's)."""
    import d3rlpy
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    d = np.load(path)
    dataset = d3rlpy.dataset.MDPDataset(
        d["observations"], d["actions"], d["rewards"], d["terminals"], timeouts=d["timeouts"]
    )
    iql = d3rlpy.algos.IQLConfig(batch_size=256, n_critics=critics).create(device=device)
    iql.build_with_dataset(dataset)
    batches = [dataset.sample_transition_batch(256) for _ in range(64)]
    step = iter(range(10**9))
    return {
        "version": d3rlpy.__version__,
        "update_ms": median_ms(lambda: iql.update(batches[next(step) % 64]), repeats),
        "sample_and_update_ms": median_ms(lambda: iql.update(dataset.sample_transition_batch(256)), repeats),
    }


if __name__ == "__main__":
    path, threads, critics, repeats, device = sys.argv[1:6]
    print(json.dumps(measure(path, int(threads), int(critics), int(repeats), device)))
