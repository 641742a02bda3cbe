"""d3rlpy's own AWAC, offline then online, on this project's data: the reference that `awac.py` is configured after.

    PYTHON lab/peers/d3rlpy_awac.py DATA.npz ENV REF_MIN REF_MAX OFFLINE ONLINE EVAL_FREQ EPISODES SEED
    # progress on stderr, one JSON line on stdout: the evaluations, as awac.py's summary.json has them
    PYTHON lab/peers/d3rlpy_awac.py --one-update DATA.npz OUT.pt SEED
    # d3rlpy's AWAC networks before and after one update of a batch of DATA, the batch and the losses, to OUT.pt
    PYTHON lab/peers/d3rlpy_awac.py --many-updates DATA.npz OUT.pt SEED N
    # d3rlpy's AWAC networks before N updates on fixed batches of DATA, the losses of each, the networks after some

Run by `lab/peers/awac_vs_d3rlpy.py`, with the interpreter of d3rlpy's environment. Imports only numpy, torch,
gymnasium and d3rlpy. d3rlpy's defaults throughout (AWACConfig(): batch 1024, lambda 1, twin critics, SAC's target at
temperature 1); online, d3rlpy's `fit_online` (one update per step, actions from `sample_action`) on a buffer that
holds the offline data, as awac.py's does. Evaluation as awac.py's: the deterministic policy (`predict`), the same
start states (reset seeds SEED + 10000 + i) at every evaluation, D4RL-normalised with REF_MIN and REF_MAX.
"""

import json
import sys
import time


def main(path, env_id, ref_min, ref_max, offline, online, eval_freq, episodes, seed):
    import d3rlpy
    import gymnasium as gym
    import numpy as np
    import torch

    torch.set_num_threads(1)
    d3rlpy.seed(seed)
    raw = np.load(path)
    dataset = d3rlpy.dataset.MDPDataset(
        raw["observations"], raw["actions"], raw["rewards"], raw["terminals"], timeouts=raw["timeouts"]
    )
    env, eval_env = gym.make(env_id), gym.make(env_id)
    d3rlpy.envs.seed_env(env, seed)
    awac = d3rlpy.algos.AWACConfig().create(device="cpu:0")
    evaluations, start = [], time.time()

    def evaluate(step: int, phase: str):
        returns = []
        for i in range(episodes):
            obs, _ = eval_env.reset(seed=seed + 10_000 + i)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = eval_env.step(awac.predict(obs[None].astype(np.float32))[0])
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
        score = 100.0 * (float(np.mean(returns)) - ref_min) / (ref_max - ref_min)
        evaluations.append({"step": step, "phase": phase, "return": float(np.mean(returns)), "normalized_score": score})
        print(f"{phase} step {step}: score {score:.1f} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

    def every(offset: int, phase: str):
        def callback(algo, epoch, step):
            if step % eval_freq == 0:
                evaluate(offset + step, phase)

        return callback

    noop = d3rlpy.logging.NoopAdapterFactory()
    awac.fit(
        dataset,
        n_steps=offline,
        n_steps_per_epoch=eval_freq,
        logger_adapter=noop,
        show_progress=False,
        callback=every(0, "offline"),
    )
    buffer = d3rlpy.dataset.ReplayBuffer(d3rlpy.dataset.InfiniteBuffer(), episodes=dataset.episodes)
    awac.fit_online(
        env,
        buffer,
        n_steps=online,
        n_steps_per_epoch=eval_freq,
        logger_adapter=noop,
        show_progress=False,
        callback=every(offline, "online"),
    )
    return {"d3rlpy_version": d3rlpy.__version__, "evaluations": evaluations, "wall_s": time.time() - start}


def one_update(path, out, seed):
    """One d3rlpy AWAC update from its initial networks, with torch's generator seeded with `seed` just before it:
    awac_vs_d3rlpy.py --same-update repeats it with awac.py's update from the same networks, batch and seed."""
    import d3rlpy
    import numpy as np
    import torch

    torch.set_num_threads(1)
    d3rlpy.seed(seed)
    raw = np.load(path)
    dataset = d3rlpy.dataset.MDPDataset(
        raw["observations"], raw["actions"], raw["rewards"], raw["terminals"], timeouts=raw["timeouts"]
    )
    awac = d3rlpy.algos.AWACConfig().create(device="cpu:0")
    awac.build_with_dataset(dataset)
    modules = awac.impl._modules
    parts = {"policy": modules.policy, "q_funcs": modules.q_funcs, "targ_q_funcs": modules.targ_q_funcs}
    before = {name: {k: v.clone() for k, v in part.state_dict().items()} for name, part in parts.items()}
    batch = dataset.sample_transition_batch(awac.config.batch_size)
    torch.manual_seed(seed)
    losses = awac.update(batch)
    torch.save(
        {
            "before": before,
            "after": {name: part.state_dict() for name, part in parts.items()},
            "batch": {
                name: torch.as_tensor(np.asarray(getattr(batch, name)))
                for name in ("observations", "actions", "rewards", "next_observations", "terminals")
            },
            "losses": {name: float(value) for name, value in losses.items()},
            "config": {"gamma": awac.config.gamma, "tau": awac.config.tau, "lam": awac.config.lam},
            "version": d3rlpy.__version__,
        },
        out,
    )


CHECKPOINTS = (1, 10, 100, 200, 300, 500, 1000, 2000, 3000)  # updates after which --many-updates records the networks


def many_updates(path, out, seed, n_updates):
    """d3rlpy's AWAC for `n_updates` updates from its initial networks on fixed batches: update i (from 0) on the rows
    numpy.random.default_rng(seed).integers(0, n, (n_updates, 1024))[i] of DATA, after torch.manual_seed(seed + i).
    Records the networks before, every update's losses, and the sum and absolute sum of every tensor after the
    updates of CHECKPOINTS: awac_vs_d3rlpy.py --many-updates replays it with awac.py's update."""
    import d3rlpy
    import numpy as np
    import torch

    torch.set_num_threads(1)
    d3rlpy.seed(seed)
    raw = np.load(path)
    dataset = d3rlpy.dataset.MDPDataset(
        raw["observations"], raw["actions"], raw["rewards"], raw["terminals"], timeouts=raw["timeouts"]
    )
    awac = d3rlpy.algos.AWACConfig().create(device="cpu:0")
    awac.build_with_dataset(dataset)
    modules = awac.impl._modules
    parts = {"policy": modules.policy, "q_funcs": modules.q_funcs, "targ_q_funcs": modules.targ_q_funcs}
    before = {name: {k: v.clone() for k, v in part.state_dict().items()} for name, part in parts.items()}
    rows = np.random.default_rng(seed).integers(0, len(raw["rewards"]), (n_updates, awac.config.batch_size))
    losses, sums = [], {}
    for i, idx in enumerate(rows):
        actions = raw["actions"][idx].astype(np.float32)
        batch = d3rlpy.dataset.TransitionMiniBatch(
            observations=raw["observations"][idx].astype(np.float32),
            actions=actions,
            rewards=raw["rewards"][idx, None].astype(np.float32),
            next_observations=raw["next_observations"][idx].astype(np.float32),
            next_actions=np.zeros_like(actions),
            terminals=raw["terminals"][idx, None].astype(np.float32),
            intervals=np.ones((len(idx), 1), np.float32),
            transitions=[],
        )
        torch.manual_seed(seed + i)
        losses.append({name: float(value) for name, value in awac.update(batch).items()})
        if i + 1 in CHECKPOINTS:
            sums[i + 1] = {
                name: {k: (v.sum().item(), v.abs().sum().item()) for k, v in part.state_dict().items()}
                for name, part in parts.items()
            }
    torch.save(
        {
            "before": before,
            "losses": losses,
            "sums": sums,
            "seed": seed,
            "config": {"gamma": awac.config.gamma, "tau": awac.config.tau, "lam": awac.config.lam},
            "version": d3rlpy.__version__,
        },
        out,
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--many-updates":
        many_updates(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--one-update":
        one_update(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) != 10:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    a = sys.argv[1:]
    result = main(a[0], a[1], float(a[2]), float(a[3]), int(a[4]), int(a[5]), int(a[6]), int(a[7]), int(a[8]))
    print(json.dumps(result))
