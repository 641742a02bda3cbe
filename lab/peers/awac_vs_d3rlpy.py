"""d3rlpy's own AWAC beside awac.py, on the same data, budget and evaluation: does d3rlpy's AWAC collapse online too?

    python lab/peers/awac_vs_d3rlpy.py --python /path/to/d3rlpy-env/bin/python --seeds 1 2 3
    python lab/peers/awac_vs_d3rlpy.py --report-only      # the table from what is under --output-dir
    python lab/peers/awac_vs_d3rlpy.py --python /path/to/d3rlpy-env/bin/python --same-update
    python lab/peers/awac_vs_d3rlpy.py --python /path/to/d3rlpy-env/bin/python --many-updates 300

--same-update: d3rlpy's AWAC makes one update from its initial networks on a batch of the data; awac.py's
`awac_update` makes one from the same networks, batch and random seed; the losses and the networks after it are
compared (OUTPUT_DIR/ENV/same_update.json; `--keep FILE` keeps what the comparison needs, as tests/data's fixture).
--many-updates N: the same over N updates on fixed batches (update i on rows numpy default_rng(seed)'s i-th draw,
after torch.manual_seed(seed + i)); the losses of every update and the networks at several points are compared
(OUTPUT_DIR/embedded-halfcheetah-medium/many_updates.json; `--keep FILE`: tests/data/d3rlpy_awac_updates.pt).

Each seed runs lab/peers/d3rlpy_awac.py with that interpreter (d3rlpy 2.8.1, its defaults: batch 1024, lambda 1,
SAC's critic target at temperature 1) for --offline-steps updates and --online-steps steps, and writes
OUTPUT_DIR/ENV/seedK.json (skipped when it exists). The table sets each seed's evaluations beside those of awac.py's
runs found under --awac-dir (lab/run.py's layout: AWAC_DIR/VARIANT/ENV/seedK/*/summary.json).
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import awac  # noqa: E402


@dataclass
class Args:
    python: str | None = None
    """the interpreter of an environment with d3rlpy 2.8.1 (and gymnasium, mujoco) installed"""
    env_id: str = "embedded-halfcheetah-medium"
    seeds: list[int] = field(default_factory=lambda: [1])
    offline_steps: int = 5000
    online_steps: int = 10000
    eval_freq: int = 1000
    eval_episodes: int = 5
    output_dir: str = "lab/studies/reduced_scale/awac_d3rlpy"
    awac_dir: str = "lab/studies/reduced_scale"
    """where awac.py's runs are (the variants awac and awac_temperature0 are read from it)"""
    report_only: bool = False
    same_update: bool = False
    """compare one update of d3rlpy's AWAC and of awac.py's from the same networks, batch and seed"""
    keep: str | None = None
    """with --same-update or --many-updates: write the record the comparison used here"""
    many_updates: int = 0
    """compare N updates of d3rlpy's AWAC and of awac.py's from the same networks, on the same fixed batches of
    MANY_UPDATES_DATA, with the same seeds (0: no)"""


# --many-updates' data: the first 20k transitions of the embedded medium dataset (made in seconds, deterministic)
MANY_UPDATES_DATA = ("embedded-halfcheetah-medium", 20_000)


def write_data(env_id: str, path: str):
    write_npz(awac.read_hdf5(awac.dataset_file(env_id)), path)


def write_npz(raw: dict, path: str):
    """D4RL-format arrays as d3rlpy's MDPDataset takes them (it splits episodes at terminals and timeouts)."""
    np.savez(
        path,
        observations=raw["observations"],
        actions=raw["actions"],
        rewards=raw["rewards"],
        terminals=raw["terminals"].astype(np.float32),
        timeouts=raw["timeouts"].astype(np.float32),
        **({"next_observations": raw["next_observations"]} if "next_observations" in raw else {}),
    )


def run_d3rlpy(args: Args, seed: int, out: str):
    task = awac.TASKS[args.env_id]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        write_data(args.env_id, data)
        command = [
            args.python,
            os.path.join(ROOT, "lab", "peers", "d3rlpy_awac.py"),
            data,
            task.env,
            str(task.ref_min),
            str(task.ref_max),
            str(args.offline_steps),
            str(args.online_steps),
            str(args.eval_freq),
            str(args.eval_episodes),
            str(seed),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)  # progress goes to stderr
        except OSError as e:
            sys.exit(f"error: --python {args.python}: cannot run it ({e.strerror})")
    if child.returncode != 0:
        sys.exit(f"error: --python {args.python}: d3rlpy's AWAC did not run (exit {child.returncode}, see above)")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["args"] = {k: v for k, v in vars(args).items() if k not in ("seeds", "report_only")} | {"seed": seed}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f)


def d3rlpy_names(agent) -> dict:
    """awac.py's agent as d3rlpy's AWAC modules' state dicts (the same tensors, renamed; critics' layers transposed)."""
    net, layers = agent.actor.net, ("_encoder._layers.0", "_encoder._layers.2", "_fc")
    policy = {"_logstd": agent.actor.std_logit[None]}
    for i, name in zip((0, 2, 4), ("_encoder._layers.0", "_encoder._layers.2", "_mu")):
        policy |= {f"{name}.weight": net[i].weight, f"{name}.bias": net[i].bias}
    critics = {}
    for part, ensemble in (("q_funcs", agent.qf), ("targ_q_funcs", agent.qf_target)):
        critics[part] = {}
        for layer, name in zip(ensemble.layers, layers):
            for j in range(ensemble.num_critics):
                critics[part] |= {f"{j}.{name}.weight": layer.weight[j].T, f"{j}.{name}.bias": layer.bias[j, 0]}
    return {"policy": policy, **critics}


def same_update(record: dict) -> dict:
    """awac.py's update from d3rlpy's networks `record["before"]`, on its batch, after torch.manual_seed(seed): the
    losses beside d3rlpy's, and the largest difference of the sums of the networks' tensors after it, relative and
    in learning rates: Adam's first step moves every weight by about +-lr whatever its gradient's size, so a weight
    whose gradient is ~0 can step the other way on another CPU (its sign is float32 rounding), 2 lr apart."""
    import torch

    agent, config = agent_from(record)
    b = record["batch"]
    batch = (b["observations"], b["actions"], b["rewards"][:, 0], b["next_observations"], b["terminals"][:, 0])
    torch.manual_seed(record["seed"])
    losses = awac.awac_update(agent, batch, record["config"]["lam"], config)
    worst, worst_lr = 0.0, 0.0
    for part, tensors in d3rlpy_names(agent).items():
        for name, tensor in tensors.items():
            theirs = record["after_sums"][part][name]
            worst = max(worst, abs(tensor.sum().item() - theirs) / max(abs(theirs), 1e-6))
            worst_lr = max(worst_lr, abs(tensor.sum().item() - theirs) / 3e-4)
    return {
        "d3rlpy_version": record["version"],
        "critic_loss": [losses["qf_loss"].item(), record["losses"]["critic_loss"]],
        "actor_loss": [losses["actor_loss"].item(), record["losses"]["actor_loss"]],
        "after_sums_max_relative_difference": worst,
        "after_sums_max_difference_in_lr": worst_lr,
    }


def many_updates(record: dict, raw: dict, n_updates: int | None = None) -> dict:
    """awac.py's update replayed on d3rlpy's --many-updates record: from its initial networks, on the same batches of
    the D4RL-format arrays `raw`, with the same seeds. Per update, each loss's relative difference from d3rlpy's; at
    each recorded point (up to `n_updates`), the largest difference of a tensor's sum or absolute sum from d3rlpy's,
    relative to the tensor's absolute sum."""
    import torch

    agent, config = agent_from(record)
    n_updates = n_updates or len(record["losses"])
    rows = np.random.default_rng(record["seed"]).integers(0, len(raw["rewards"]), (len(record["losses"]), 1024))
    arrays = [torch.as_tensor(raw[k], dtype=torch.float32) for k in ("observations", "actions", "rewards")]
    arrays += [torch.as_tensor(raw[k], dtype=torch.float32) for k in ("next_observations", "terminals")]
    loss_differences, tensor_differences = [], {}
    for i in range(n_updates):
        idx = torch.as_tensor(rows[i])
        torch.manual_seed(record["seed"] + i)
        losses = awac.awac_update(agent, [x[idx] for x in arrays], record["config"]["lam"], config)
        theirs = record["losses"][i]
        loss_differences.append(
            {
                name: abs(losses[ours].item() - theirs[name]) / max(abs(theirs[name]), 1e-6)
                for ours, name in (("qf_loss", "critic_loss"), ("actor_loss", "actor_loss"))
            }
        )
        if i + 1 in record["sums"]:
            worst = 0.0
            for part, tensors in d3rlpy_names(agent).items():
                for name, tensor in tensors.items():
                    their_sum, their_abs_sum = record["sums"][i + 1][part][name]
                    scale = max(their_abs_sum, 1e-6)  # the tensor's size: a sum near 0 is no scale
                    worst = max(
                        worst,
                        abs(tensor.sum().item() - their_sum) / scale,
                        abs(tensor.abs().sum().item() - their_abs_sum) / scale,
                    )
            tensor_differences[i + 1] = worst
    return {"loss_relative_differences": loss_differences, "tensor_relative_differences": tensor_differences}


def agent_from(record: dict):
    """An awac.py agent holding d3rlpy's networks `record["before"]`, and the update's configuration as d3rlpy's."""
    from types import SimpleNamespace

    import torch

    shapes = record["before"]["policy"]
    obs_dim, act_dim = shapes["_encoder._layers.0.weight"].shape[1], shapes["_mu.weight"].shape[0]
    env = SimpleNamespace(
        observation_space=awac.gym.spaces.Box(-1, 1, (obs_dim,)), action_space=awac.gym.spaces.Box(-1, 1, (act_dim,))
    )
    agent = awac.Agent(env, SimpleNamespace(learning_rate=3e-4, compile=False, cudagraphs=False), torch.device("cpu"))
    with torch.no_grad():
        for part, tensors in d3rlpy_names(agent).items():
            for name, tensor in tensors.items():
                tensor.copy_(record["before"][part][name])
    config = SimpleNamespace(gamma=record["config"]["gamma"], tau=record["config"]["tau"], temperature=1.0)
    return agent, config


def many_updates_data(folder: str) -> dict:
    """MANY_UPDATES_DATA, made in `folder`: the arrays both AWACs draw their fixed batches from."""
    import make_datasets

    name, transitions = MANY_UPDATES_DATA
    return awac.read_hdf5(make_datasets.generate(name, os.path.join(folder, "data.hdf5"), 0, transitions))


def run_many_updates(args: Args) -> dict:
    import torch

    seed = args.seeds[0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = many_updates_data(tmp)
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "updates.pt")
        write_npz(raw, data)
        command = [args.python, os.path.join(ROOT, "lab", "peers", "d3rlpy_awac.py"), "--many-updates", data, out]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            child = subprocess.run([*command, str(seed), str(args.many_updates)], env=env)
        except OSError as e:
            sys.exit(f"error: --python {args.python}: cannot run it ({e.strerror})")
        if child.returncode != 0:
            sys.exit(f"error: --python {args.python}: d3rlpy's AWAC updates did not run (exit {child.returncode})")
        record = torch.load(out, weights_only=True)
        result = many_updates(record, raw)
    if args.keep:
        torch.save(record, args.keep)
    path = os.path.join(args.output_dir, MANY_UPDATES_DATA[0], "many_updates.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result | {"seed": seed, "d3rlpy_version": record["version"]}, f)
    return result


def compact(record: dict, seed: int) -> dict:
    """The record as the comparison needs it: the networks after the update only as the sum of each tensor."""
    sums = {part: {k: v.sum().item() for k, v in sd.items()} for part, sd in record.pop("after").items()}
    return {**record, "after_sums": sums, "seed": seed}


def run_same_update(args: Args) -> dict:
    import torch

    seed = args.seeds[0]
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "update.pt")
        write_data(args.env_id, data)
        script = os.path.join(ROOT, "lab", "peers", "d3rlpy_awac.py")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            child = subprocess.run([args.python, script, "--one-update", data, out, str(seed)], env=env)
        except OSError as e:
            sys.exit(f"error: --python {args.python}: cannot run it ({e.strerror})")
        if child.returncode != 0:
            sys.exit(f"error: --python {args.python}: d3rlpy's AWAC update did not run (exit {child.returncode})")
        record = compact(torch.load(out, weights_only=True), seed)
    if args.keep:
        torch.save(record, args.keep)
    result = same_update(record) | {"seed": seed, "env_id": args.env_id}
    path = os.path.join(args.output_dir, args.env_id, "same_update.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)
    return result


def ours(args: Args, variant: str, seed: int) -> list[dict] | None:
    found = sorted(glob.glob(os.path.join(args.awac_dir, variant, args.env_id, f"seed{seed}", "*", "summary.json")))
    return json.load(open(found[-1]))["evaluations"] if found else None


def report(args: Args):
    print(
        f"| run | seed | {args.env_id}: D4RL-normalised score at the switch | mean of the online evaluations "
        "| lowest online | at the end |\n|---|---|---|---|---|---|"
    )
    for seed in args.seeds:
        path = os.path.join(args.output_dir, args.env_id, f"seed{seed}.json")
        rows = [("d3rlpy 2.8.1 AWAC", json.load(open(path))["evaluations"] if os.path.isfile(path) else None)]
        rows += [(f"awac.py ({variant})", ours(args, variant, seed)) for variant in ("awac", "awac_temperature0")]
        for name, evaluations in rows:
            if not evaluations:
                continue
            switch = [e for e in evaluations if e["step"] == args.offline_steps]
            online = [e["normalized_score"] for e in evaluations if e["step"] > args.offline_steps]
            if not online:
                continue
            at_switch = f"{switch[-1]['normalized_score']:.1f}" if switch else "-"
            print(f"| {name} | {seed} | {at_switch} | {np.mean(online):.1f} | {min(online):.1f} | {online[-1]:.1f} |")


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.same_update:
        if args.python is None:
            sys.exit("error: --python: give the interpreter of an environment with d3rlpy installed")
        result = run_same_update(args)
        print(
            f"one AWAC update from the same networks, batch and seed: critic loss {result['critic_loss'][0]:.6g} "
            f"(awac.py) vs {result['critic_loss'][1]:.6g} (d3rlpy {result['d3rlpy_version']}); actor loss "
            f"{result['actor_loss'][0]:.6g} vs {result['actor_loss'][1]:.6g}; networks after it: sums of every tensor "
            f"agree to {result['after_sums_max_relative_difference']:.1e} (relative), "
            f"{result['after_sums_max_difference_in_lr']:.2f} learning rates at most"
        )
        sys.exit(0)
    if args.many_updates:
        if args.python is None:
            sys.exit("error: --python: give the interpreter of an environment with d3rlpy installed")
        result = run_many_updates(args)
        losses, tensors = result["loss_relative_differences"], result["tensor_relative_differences"]
        print(f"{args.many_updates} AWAC updates from the same networks, batches and seeds (awac.py vs d3rlpy):")
        for end in sorted(tensors):
            worst = max(max(d.values()) for d in losses[:end])
            print(
                f"  after {end:>5} updates: losses agree to {worst:.1e} (relative, the worst update so far), "
                f"every tensor's sum and absolute sum to {tensors[end]:.1e}"
            )
        sys.exit(0)
    if not args.report_only:
        if args.python is None:
            sys.exit("error: --python: give the interpreter of an environment with d3rlpy installed")
        for seed in args.seeds:
            out = os.path.join(args.output_dir, args.env_id, f"seed{seed}.json")
            if os.path.isfile(out):
                print(f"seed {seed}: {out} exists, skipped", file=sys.stderr)
                continue
            run_d3rlpy(args, seed, out)
    report(args)
