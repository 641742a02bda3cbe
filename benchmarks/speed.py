"""Time the scripts' hot paths in one process: updates, O3F selection, and whole online env steps.

    python benchmarks/speed.py                      # this machine's CPU: a table, then one JSON line
    python benchmarks/speed.py --compile            # also torch.compile'd updates, and their speed-up over eager
    python benchmarks/speed.py --device cuda --compile --cudagraphs
    python benchmarks/speed.py --vs-d3rlpy /path/to/d3rlpy-env/bin/python

Uses the scripts' own functions on the embedded HalfCheetah medium dataset (made if missing), the
paper's batch sizes and critic counts. Medians over repeated calls, after a warm-up. Each update is
set against its arithmetic floor, its matmul FLOPs (forward and backward, counted by torch's
FlopCounterMode) over this machine's matmul throughput at 2048^2, and against its matmul part: the
same matmul calls, recorded from one update and replayed alone. What the update takes beyond its
matmul part is everything else (elementwise ops, the optimiser, autograd and Python).

--vs-d3rlpy runs d3rlpy's IQL (installed in a separate environment, never one of this project's
requirements) with the same batch size, network sizes and number of critics on the same data, and
reports this project's IQL updates/s over d3rlpy's.
"""
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal, Optional

import numpy as np
import torch
import tyro
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cql_to_sac  # noqa: E402
import iql_noise  # noqa: E402
import o3f_iql  # noqa: E402
import o3f_lapo  # noqa: E402

ENV_ID = "embedded-halfcheetah-medium"


@dataclass
class Args:
    repeats: int = 200
    """timed calls per update measurement (online env steps: a tenth of it)"""
    threads: int = 0
    """torch threads (0: PyTorch's default)"""
    device: Literal["cpu", "cuda"] = "cpu"
    compile: bool = False
    """also time the torch.compile'd updates and selection (as the scripts' --compile does)"""
    cudagraphs: bool = False
    """also time them as CUDA graphs (torch.compile's reduce-overhead mode, as the scripts' --cudagraphs does)"""
    num_critics: int = 5
    """critics of the IQL ensemble (the paper's 5; the original IQL has 2)"""
    dataset_path: Optional[str] = None
    """a D4RL-format HDF5 file with HalfCheetah's sizes to use instead of the embedded medium dataset"""
    vs_d3rlpy: Optional[str] = None
    """the Python interpreter of an environment with d3rlpy installed: time its IQL on the same data and sizes"""


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """This machine's dense matmul throughput, from the fastest of `repeats` calls: the peak the arithmetic floor divides by."""
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    median_ms(lambda: a @ b, 1, warmup=5)
    return 2 * n**3 / min(median_ms(lambda: a @ b, 1, warmup=0) for _ in range(repeats)) / 1e6


class MatmulRecorder(TorchDispatchMode):
    """Records every matmul one call makes (forward and backward) with copies of its inputs, to replay them alone."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            self.calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], kwargs))
        return func(*args, **kwargs)


def floor(name: str, fn, ms: float) -> dict:
    """The call's matmul FLOPs, its time over the arithmetic floor, and over its own matmuls replayed alone."""
    with FlopCounterMode(display=False) as counter:
        fn()
    with MatmulRecorder() as recorder:
        fn()
    matmul_ms = median_ms(lambda: [func(*a, **kw) for func, a, kw in recorder.calls], 50, warmup=5)
    flops = counter.get_total_flops()
    return {f"{name}_gflop": flops / 1e9, f"{name}_floor_ratio": ms / (flops / GFLOPS / 1e6),
            f"{name}_matmul_ms": matmul_ms, f"{name}_matmul_ratio": ms / matmul_ms}


def online_step(select, update, env, rb, scale_reward, state):
    """One online step as the scripts take it: select, step the env, store, update."""
    obs = state["obs"]
    action = select(torch.as_tensor(obs, dtype=torch.float32, device=DEVICE)[None])
    next_obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
    rb.add(obs, action, scale_reward(reward), next_obs, terminated)
    state["obs"] = env.reset()[0] if terminated or truncated else next_obs
    update()


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def suffixes() -> list:
    """The eager path, then the compiled ones asked for."""
    return [""] + ["_compiled"] * ARGS.compile + ["_cudagraphs"] * ARGS.cudagraphs


def wrap(fn, suffix: str):
    """`fn` as the scripts run it with no flag, with --compile, or with --cudagraphs."""
    return fn if not suffix else torch.compile(fn, mode="reduce-overhead" if suffix == "_cudagraphs" else None)


def adam(params, lr, suffix):
    """The scripts' optimiser set-up: fused Adam eager; the compiler's own step compiled (capturable for graphs)."""
    return torch.optim.Adam(params, lr=lr, fused=suffix == "", capturable=suffix == "_cudagraphs")


def bench_iql(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale_reward = o3f_iql.reward_transform(ENV_ID, data["episode_returns"])
    data = {**data, "rewards": scale_reward(data["rewards"])}
    rb = o3f_iql.ReplayBuffer(data, len(data["rewards"]) + 2 * repeats + 100, DEVICE)
    low, high = torch.as_tensor(env.action_space.low, device=DEVICE), torch.as_tensor(env.action_space.high, device=DEVICE)
    args = SimpleNamespace(expectile=0.7, beta=3.0, gamma=0.99, tau=0.005)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in suffixes():
        iql_update, select_action = wrap(o3f_iql.iql_update, suffix), wrap(o3f_iql.select_action, suffix)
        actor, vf = o3f_iql.Actor(obs_dim, act_dim).to(DEVICE), o3f_iql.ValueNetwork(obs_dim).to(DEVICE)
        qf = o3f_iql.QEnsemble(obs_dim, act_dim, ARGS.num_critics).to(DEVICE)
        qf_target = copy.deepcopy(qf).requires_grad_(False)
        optimizers = [adam(net.parameters(), 3e-4, suffix) for net in (actor, qf, vf)]
        update = lambda: iql_update(rb.sample(256), actor, qf, qf_target, vf, *optimizers, args)  # noqa: E731
        select = lambda obs: select_action(actor, qf, obs, 100, 0.2, 0.0, low, high)  # noqa: E731
        ms = median_ms(update, repeats, warmup=10 if not suffix else 30)
        results |= {f"iql_update{suffix}_ms": ms, **(floor("iql_update", update, ms) if not suffix else {}),
                    f"iql_selection{suffix}_ms": median_ms(lambda: select(torch.as_tensor(state["obs"], dtype=torch.float32, device=DEVICE)[None]), 5 * repeats),
                    f"iql_online_step{suffix}_ms": median_ms(lambda: online_step(select, update, env, rb, scale_reward, state), repeats // 2)}
        if not suffix:
            noise = lambda obs: iql_noise.select_action(actor, obs, 0.2, low, high)  # noqa: E731
            results["iql_noise_online_step_ms"] = median_ms(lambda: online_step(noise, update, env, rb, scale_reward, state), repeats // 2)
            results["iql_eval_episode_s"] = seconds(lambda: o3f_iql.evaluate(actor, EVAL_ENV, ENV_ID, 1, 0, DEVICE))
    return results


def bench_lapo(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale_reward, v_min, v_max = o3f_lapo.reward_transform(ENV_ID, data["rewards"], 0.99)
    data = {**data, "rewards": scale_reward(data["rewards"])}
    normalizer = o3f_lapo.Normalizer(data["observations"], data["actions"]).to(DEVICE)
    rb = o3f_lapo.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, DEVICE)
    low, high = torch.as_tensor(env.action_space.low, device=DEVICE), torch.as_tensor(env.action_space.high, device=DEVICE)
    args = SimpleNamespace(gamma=0.99, tau=0.005, num_min_q=2, doubleq_min=1.0, expectile=0.9, kl_beta=1.0)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in suffixes():
        critic_update, actor_update = wrap(o3f_lapo.critic_update, suffix), wrap(o3f_lapo.actor_update, suffix)
        select_action = wrap(o3f_lapo.select_action, suffix)
        cvae, policy = o3f_lapo.CVAE(obs_dim, act_dim, 2 * act_dim).to(DEVICE), o3f_lapo.LatentPolicy(obs_dim, 2 * act_dim, 2.0).to(DEVICE)
        qf, vf = o3f_lapo.QEnsemble(obs_dim, act_dim, 5).to(DEVICE), o3f_lapo.ValueNetwork(obs_dim).to(DEVICE)
        cvae_t, policy_t, qf_t = (copy.deepcopy(net).requires_grad_(False) for net in (cvae, policy, qf))
        cvae_opt, policy_opt = adam(cvae.parameters(), 2e-4, suffix), adam(policy.parameters(), 2e-4, suffix)
        critic_opt = adam([*qf.parameters(), *vf.parameters()], 2e-4, suffix)
        critic = lambda: critic_update(rb.sample(512), normalizer, policy_t, cvae_t, qf, qf_t, vf, critic_opt, v_min, v_max, args)  # noqa: E731
        actor = lambda: actor_update(rb.sample(512), normalizer, cvae, cvae_t, policy, policy_t, qf, qf_t, vf, cvae_opt, policy_opt, args)  # noqa: E731
        select = lambda obs: select_action(policy, cvae_t, normalizer, qf, obs, 100, 0.2, 0.0, low, high)  # noqa: E731

        def utd20():
            for _ in range(20):
                critic()
            actor()

        warmup = 10 if not suffix else 30
        critic_ms, actor_ms = median_ms(critic, repeats, warmup), median_ms(actor, repeats, warmup)
        results |= {f"lapo_critic_update{suffix}_ms": critic_ms, **(floor("lapo_critic_update", critic, critic_ms) if not suffix else {}),
                    f"lapo_actor_update{suffix}_ms": actor_ms, **(floor("lapo_actor_update", actor, actor_ms) if not suffix else {}),
                    f"lapo_selection{suffix}_ms": median_ms(lambda: select(torch.as_tensor(state["obs"], dtype=torch.float32, device=DEVICE)[None]), 5 * repeats),
                    f"lapo_online_step_utd20{suffix}_ms": median_ms(lambda: online_step(select, utd20, env, rb, scale_reward, state),
                                                                    max(repeats // 10, 5), warmup=3)}
        if not suffix:
            results["lapo_eval_episode_s"] = seconds(lambda: o3f_lapo.evaluate(policy, cvae_t, normalizer, EVAL_ENV, ENV_ID, 1, 0, DEVICE))
    return results


def bench_cql(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale_reward = cql_to_sac.reward_transform(ENV_ID)
    data = {**data, "rewards": scale_reward(data["rewards"])}
    rb = cql_to_sac.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, DEVICE)
    args = SimpleNamespace(gamma=0.99, tau=0.005, cql_weight=5.0, cql_n_actions=10)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in suffixes():
        cql_update = wrap(cql_to_sac.cql_update, suffix)
        actor, qf = cql_to_sac.Actor(obs_dim, act_dim).to(DEVICE), cql_to_sac.QEnsemble(obs_dim, act_dim, 2).to(DEVICE)
        qf_target = copy.deepcopy(qf).requires_grad_(False)
        alpha, alpha_prime = cql_to_sac.LogMultiplier().to(DEVICE), cql_to_sac.LogMultiplier().to(DEVICE)
        optimizers = [adam(net.parameters(), 3e-4, suffix) for net in (actor, qf, alpha, alpha_prime)]
        update = lambda conservative: cql_update(rb.sample(256), actor, qf, qf_target, alpha, alpha_prime, *optimizers,  # noqa: E731
                                                 conservative, 5.0, -float(act_dim), args)
        warmup = 10 if not suffix else 30
        cql_ms, sac_ms = median_ms(lambda: update(True), repeats // 2, warmup), median_ms(lambda: update(False), repeats, warmup)
        results |= {f"cql_update{suffix}_ms": cql_ms, **(floor("cql_update", lambda: update(True), cql_ms) if not suffix else {}),
                    f"sac_update{suffix}_ms": sac_ms, **(floor("sac_update", lambda: update(False), sac_ms) if not suffix else {})}
        if not suffix:

            @torch.no_grad()
            def act(obs):  # SAC's own stochastic action, and the critic's value of it (cql_to_sac records it for the Q bias)
                action = actor(obs)[0]
                qf(obs, action).min(0)
                return action[0]

            results["sac_online_step_ms"] = median_ms(lambda: online_step(act, lambda: update(False), env, rb, scale_reward, state), repeats // 2)
            results["cql_eval_episode_s"] = seconds(lambda: cql_to_sac.evaluate(actor, qf, EVAL_ENV, ENV_ID, 1, 0, DEVICE, scale_reward, 0.99))
    return results


def projected_hours(results: dict, offline: int = 1_000_000, online: int = 500_000, eval_freq: int = 5000, episodes: int = 10) -> dict:
    """Wall-clock of a paper-scale run of each script (the scripts' defaults), from the times measured above."""
    evals = (offline + online) // eval_freq * episodes
    plan = {"o3f_iql": ("iql_update", "iql_online_step", "iql_eval_episode_s"),
            "iql_noise": ("iql_update", "iql_noise_online_step", "iql_eval_episode_s"),
            "o3f_lapo": (("lapo_critic_update", "lapo_actor_update"), "lapo_online_step_utd20", "lapo_eval_episode_s"),
            "cql_to_sac": ("cql_update", "sac_online_step", "cql_eval_episode_s")}
    hours = {}
    for script, (update, step, evaluation) in plan.items():
        update_ms = sum(results[f"{name}_ms"] for name in ((update,) if isinstance(update, str) else update))
        hours[f"{script}_paper_scale_hours"] = (offline * update_ms + online * results[f"{step}_ms"]) / 3.6e6 + evals * results[evaluation] / 3600
    return hours


D3RLPY = """
import json, statistics, sys, time
import numpy as np, torch, d3rlpy
torch.set_num_threads({threads})
d = np.load({path!r})
dataset = d3rlpy.dataset.MDPDataset(d["observations"], d["actions"], d["rewards"], d["terminals"], timeouts=d["timeouts"])
iql = d3rlpy.algos.IQLConfig(batch_size=256, n_critics={critics}).create(device={device!r})  # encoders: 2 x 256, as ours
iql.build_with_dataset(dataset)
batches = [dataset.sample_transition_batch(256) for _ in range(64)]
def median_ms(fn, repeats):
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
step = iter(range(10**9))
print(json.dumps({{"version": d3rlpy.__version__, "update_ms": median_ms(lambda: iql.update(batches[next(step) % 64]), {repeats}),
                  "sample_and_update_ms": median_ms(lambda: iql.update(dataset.sample_transition_batch(256)), {repeats})}}))
"""


def bench_d3rlpy(python: str, threads: int, repeats: int) -> dict:
    """d3rlpy's IQL update on the same transitions, in its own environment (a subprocess)."""
    raw = o3f_iql.read_hdf5(ARGS.dataset_path or o3f_iql.dataset_file(ENV_ID))  # D4RL's format: d3rlpy splits episodes at terminals and timeouts
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, observations=raw["observations"], actions=raw["actions"], rewards=raw["rewards"],
                 terminals=raw["terminals"].astype(np.float32), timeouts=raw["timeouts"].astype(np.float32))
        code = D3RLPY.format(threads=threads, path=path, critics=ARGS.num_critics, repeats=repeats,
                             device="cuda:0" if DEVICE.type == "cuda" else "cpu:0")
        try:
            child = subprocess.run([python, "-c", code], capture_output=True, text=True)
        except OSError as e:
            sys.exit(f"error: --vs-d3rlpy {python}: cannot run it ({e.strerror})")
    if child.returncode != 0:
        sys.exit(f"error: --vs-d3rlpy {python}: d3rlpy's IQL did not run: {(child.stderr.strip().splitlines() or ['?'])[-1]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return {"d3rlpy_version": result["version"], "d3rlpy_iql_update_ms": result["update_ms"],
            "d3rlpy_iql_sample_and_update_ms": result["sample_and_update_ms"]}


if __name__ == "__main__":
    ARGS = tyro.cli(Args)
    if ARGS.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device here")
    if ARGS.cudagraphs and ARGS.device != "cuda":
        sys.exit("error: --cudagraphs needs --device cuda")
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    DEVICE = torch.device(ARGS.device)
    torch.manual_seed(0)
    data = o3f_iql.load_dataset(ENV_ID, ARGS.dataset_path)
    env, EVAL_ENV = o3f_iql.make_env(ENV_ID), o3f_iql.make_env(ENV_ID)
    GFLOPS = matmul_gflops()
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device_name, "matmul_gflops": GFLOPS,
               "iql_num_critics": ARGS.num_critics}
    d3rlpy = bench_d3rlpy(ARGS.vs_d3rlpy, torch.get_num_threads(), ARGS.repeats) if ARGS.vs_d3rlpy else {}
    results |= bench_iql(data, env, ARGS.repeats)
    results |= bench_lapo(data, env, ARGS.repeats)
    results |= bench_cql(data, env, ARGS.repeats)
    results |= d3rlpy
    results |= projected_hours(results)
    print(f"{device_name}: matmul {GFLOPS:.0f} GFLOP/s at 2048^2; torch {torch.__version__}")
    print(f"{'measurement':34s} {'median ms':>10s} {'GFLOP':>7s} {'x floor':>8s} {'matmuls ms':>11s} {'x matmuls':>10s}")
    for key, value in results.items():
        if key.endswith("_ms") and not key.endswith("_matmul_ms"):
            name = key[:-3]
            extra = ""
            if f"{name}_gflop" in results:
                extra = (f"{results[f'{name}_gflop']:7.3f} {results[f'{name}_floor_ratio']:8.2f} "
                         f"{results[f'{name}_matmul_ms']:11.2f} {results[f'{name}_matmul_ratio']:10.2f}")
            print(f"{name:34s} {value:10.2f} {extra}")
    for suffix in ("_compiled", "_cudagraphs"):
        for name in ("iql_update", "iql_online_step", "lapo_critic_update", "lapo_actor_update", "lapo_online_step_utd20", "cql_update", "sac_update"):
            if f"{name}{suffix}_ms" in results:
                results[f"{name}{suffix}_speedup"] = results[f"{name}_ms"] / results[f"{name}{suffix}_ms"]
                print(f"{name}{suffix}: {results[f'{name}{suffix}_speedup']:.2f}x the eager speed")
    for suffix in ("", "_compiled", "_cudagraphs"):
        if f"lapo_online_step_utd20{suffix}_ms" in results:
            print(f"lapo online env steps/s at UTD 20{suffix.replace('_', ', ')}: {1000 / results[f'lapo_online_step_utd20{suffix}_ms']:.1f}")
        if f"iql_update{suffix}_ms" in results:
            print(f"iql offline updates/s{suffix.replace('_', ', ')}: {1000 / results[f'iql_update{suffix}_ms']:.0f}")
    print("projected wall-clock of a paper-scale run (1M offline updates, 500k online steps, 10 evaluation episodes every 5000 steps), eager:")
    print("  " + ", ".join(f"{key.replace('_paper_scale_hours', '')} {value:.1f} h" for key, value in results.items() if key.endswith("_paper_scale_hours")))
    if d3rlpy:
        results["iql_vs_d3rlpy"] = results["d3rlpy_iql_update_ms"] / results["iql_update_ms"]
        print(f"IQL update vs d3rlpy {results['d3rlpy_version']} ({ARGS.num_critics} critics, batch 256, 2x256 networks): "
              f"{results['iql_vs_d3rlpy']:.2f}x its updates/s (d3rlpy {results['d3rlpy_iql_update_ms']:.2f} ms, "
              f"{results['d3rlpy_iql_sample_and_update_ms']:.2f} ms with its own sampling)")
    print(json.dumps(results))
