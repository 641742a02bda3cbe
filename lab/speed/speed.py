"""Time the scripts' hot paths in one process: updates, O3F selection, and whole online env steps.

    python lab/speed/speed.py                      # this machine's CPU: a table, then one JSON line
    python lab/speed/speed.py --compile            # also torch.compile'd updates, and their speed-up over eager
    python lab/speed/speed.py --device cuda --compile --cudagraphs
    python lab/speed/speed.py --vs-d3rlpy /path/to/d3rlpy-env/bin/python

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

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import torch
import tyro
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import awac  # noqa: E402
import cql_to_sac  # noqa: E402
import iql_noise  # noqa: E402
import o3f_iql  # noqa: E402
import o3f_lapo  # noqa: E402

ENV_ID = "embedded-halfcheetah-medium"


@dataclass
class Args:
    repeats: int = 200
    """timed calls per update measurement (online env steps: a tenth of it)"""
    block: int = 20
    """compiled paths: also time blocks of this many updates in one call (the scripts' --block)"""
    threads: int = 0
    """torch threads (0: PyTorch's default)"""
    device: Literal["cpu", "cuda"] = "cpu"
    compile: bool = False
    """also time the torch.compile'd updates and selection (as the scripts' --compile does)"""
    cudagraphs: bool = False
    """also time them as CUDA graphs: each call of a block of updates one replay, as the scripts' --cudagraphs does"""
    num_critics: int = 5
    """critics of the IQL ensemble (the paper's 5; the original IQL has 2)"""
    dataset_path: str | None = None
    """a D4RL-format HDF5 file with HalfCheetah's sizes to use instead of the embedded medium dataset"""
    vs_d3rlpy: str | None = None
    """the Python interpreter of an environment with d3rlpy installed: time its IQL on the same data and sizes"""


@dataclass
class Bench:
    """What every measurement needs: the flags, the device, the evaluation environment and the matmul peak."""

    args: Args
    device: torch.device
    eval_envs: list = None
    gflops: float = 0.0

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def median_ms(self, fn, repeats: int, warmup: int = 10) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    def suffixes(self) -> list:
        """The eager path, then the compiled ones asked for."""
        return [""] + ["_compiled"] * self.args.compile + ["_cudagraphs"] * self.args.cudagraphs


def matmul_gflops(bench: Bench, n: int = 2048, repeats: int = 20) -> float:
    """This machine's dense matmul throughput, from the fastest of `repeats` calls: the floor's peak."""
    a, b = torch.randn(n, n, device=bench.device), torch.randn(n, n, device=bench.device)
    bench.median_ms(lambda: a @ b, 1, warmup=5)
    return 2 * n**3 / min(bench.median_ms(lambda: a @ b, 1, warmup=0) for _ in range(repeats)) / 1e6


class MatmulRecorder(TorchDispatchMode):
    """Records every matmul one call makes (forward and backward) with copies of its inputs, to replay them alone."""

    OPS = (
        torch.ops.aten.mm.default,
        torch.ops.aten.addmm.default,
        torch.ops.aten.bmm.default,
        torch.ops.aten.baddbmm.default,
    )

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            self.calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], kwargs))
        return func(*args, **kwargs)


def floor(bench: Bench, name: str, fn, ms: float) -> dict:
    """The call's matmul FLOPs, its time over the arithmetic floor, and over its own matmuls replayed alone."""
    with FlopCounterMode(display=False) as counter:
        fn()
    with MatmulRecorder() as recorder:
        fn()
    matmuls = lambda: [func(*a, **kw) for func, a, kw in recorder.calls]  # noqa: E731
    if bench.device.type == "cuda":  # as one graph: the matmuls' kernels, not a Python launch each (what the update
        matmuls()  # pays in launches shows in its own time, not in its matmul part); warmed up, then recorded
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            matmuls()
        matmuls = graph.replay
    matmul_ms = bench.median_ms(matmuls, 50, warmup=5)
    flops = counter.get_total_flops()
    return {
        f"{name}_gflop": flops / 1e9,
        f"{name}_floor_ratio": ms / (flops / bench.gflops / 1e6),
        f"{name}_matmul_ms": matmul_ms,
        f"{name}_matmul_ratio": ms / matmul_ms,
    }


def online_step(select, update, env, rb, scale_reward, state):
    """One online step as the scripts take it: select, step the env, store, update."""
    obs = state["obs"]
    action = select(torch.as_tensor(obs, dtype=torch.float32, device=rb.obs.device)[None])
    next_obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
    rb.add(obs, action, scale_reward(reward), next_obs, terminated)
    state["obs"] = env.reset()[0] if terminated or truncated else next_obs
    update()


def block_ms(bench: Bench, steps) -> float:
    """Milliseconds per update when `steps` (a script's `block_runner`) runs --block of them in one call."""
    n = bench.args.block
    return bench.median_ms(lambda: steps(n), max(bench.args.repeats // n, 5), warmup=2) / n


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def graph_breaks(fn, *args) -> int:
    """Graph breaks torch.compile meets in one call of `fn(*args)`, traced as the scripts' `maybe_compile()` traces it
    (backward() traced, the outputs detached): each break ends a graph, so with --cudagraphs one update would replay
    that many more CUDA graphs, with Python between them; under the scripts' fullgraph=True any makes the update run
    eagerly (one line says so). Runs `fn` once."""
    detached = lambda *a: torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, fn(*a))  # noqa: E731
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        return torch._dynamo.explain(detached)(*args).graph_break_count


def script_args(script, suffix: str, block: int, **values):
    """The script's own flags (its defaults, the paper's), with its compile flags as `suffix` names them and --block
    (under --cudagraphs, the one block size recorded besides one step)."""
    return script.Args(compile=suffix == "_compiled", cudagraphs=suffix == "_cudagraphs", block=block, **values)


def bench_iql(bench: Bench, data, env, repeats):
    scale_reward = o3f_iql.reward_transform(ENV_ID, data["episode_returns"])
    data = {**data, "rewards": scale_reward(data["rewards"])}
    rb = o3f_iql.ReplayBuffer(data, len(data["rewards"]) + 2 * repeats + 100, bench.device)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in bench.suffixes():
        args = script_args(
            o3f_iql, suffix, bench.args.block, num_critics=bench.args.num_critics, expectile=0.7, beta=3.0, sigma=0.2
        )
        iql_update, select_action = (
            o3f_iql.maybe_compile(o3f_iql.iql_update, args),
            o3f_iql.maybe_compile(o3f_iql.select_action, args),
        )
        agent = o3f_iql.Agent(env, args, bench.device)
        steps = o3f_iql.block_runner(lambda: iql_update(agent, rb.sample(args.batch_size), args.expectile, args), args)
        update = lambda: steps(1)  # noqa: E731
        select = lambda obs: select_action(agent, obs, args)  # noqa: E731
        ms = bench.median_ms(update, repeats, warmup=10 if not suffix else 30)
        first_obs = lambda: torch.as_tensor(state["obs"], dtype=torch.float32, device=bench.device)[None]  # noqa: E731
        results |= {
            f"iql_update{suffix}_ms": ms,
            **({f"iql_update_block{suffix}_ms": block_ms(bench, steps)} if suffix else {}),
            **(floor(bench, "iql_update", update, ms) if not suffix else {}),
            f"iql_selection{suffix}_ms": bench.median_ms(lambda: select(first_obs()), 5 * repeats),
            f"iql_online_step{suffix}_ms": bench.median_ms(
                lambda: online_step(select, update, env, rb, scale_reward, state), repeats // 2
            ),
        }
        if not suffix:
            noise = lambda obs: iql_noise.select_action(agent, obs, args)  # noqa: E731
            results["iql_noise_online_step_ms"] = bench.median_ms(
                lambda: online_step(noise, update, env, rb, scale_reward, state), repeats // 2
            )
            results["iql_eval_episode_s"] = seconds(lambda: o3f_iql.evaluate(agent, bench.eval_envs[:1], ENV_ID, 0))
        if suffix and suffix == bench.suffixes()[-1]:  # the agent as the last compiled path builds it
            results["iql_update_graph_breaks"] = graph_breaks(
                o3f_iql.iql_update, agent, rb.sample(args.batch_size), args.expectile, args
            )
    return results


def bench_lapo(bench: Bench, data, env, repeats):
    scale_reward, v_min, v_max = o3f_lapo.reward_transform_and_value_range(ENV_ID, data["rewards"], 0.99)
    data = {**data, "rewards": scale_reward(data["rewards"])}
    stats = {
        "observations": data["observations"],
        "actions": data["actions"],
    }  # the normaliser's, before the buffer takes the arrays
    rb = o3f_lapo.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, bench.device)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in bench.suffixes():
        args = script_args(o3f_lapo, suffix, bench.args.block, doubleq_min=1.0, sigma=0.2)
        critic_update, actor_update = (
            o3f_lapo.maybe_compile(fn, args) for fn in (o3f_lapo.critic_update, o3f_lapo.actor_update)
        )
        select_action = o3f_lapo.maybe_compile(o3f_lapo.select_action, args)
        agent = o3f_lapo.Agent(env, stats, v_min, v_max, args, bench.device)
        critics = o3f_lapo.block_runner(lambda: critic_update(agent, rb.sample(args.batch_size), args), args)
        actors = o3f_lapo.block_runner(lambda: actor_update(agent, rb.sample(args.batch_size), args), args)
        critic, actor = (lambda: critics(1)), (lambda: actors(1))
        select = lambda obs: select_action(agent, obs, args)  # noqa: E731

        def one_step(utd):  # as o3f_lapo.train's: --utd critic updates, then the actor's
            for _ in range(utd):
                losses = critic_update(agent, rb.sample(args.batch_size), args)
            return losses | actor_update(agent, rb.sample(args.batch_size), args)

        online_steps = o3f_lapo.block_runner(one_step, args)
        utd20 = lambda: online_steps(1, 20)  # noqa: E731

        warmup = 10 if not suffix else 30
        critic_ms, actor_ms = bench.median_ms(critic, repeats, warmup), bench.median_ms(actor, repeats, warmup)
        first_obs = lambda: torch.as_tensor(state["obs"], dtype=torch.float32, device=bench.device)[None]  # noqa: E731
        results |= {
            f"lapo_critic_update{suffix}_ms": critic_ms,
            **({f"lapo_critic_update_block{suffix}_ms": block_ms(bench, critics)} if suffix else {}),
            **(floor(bench, "lapo_critic_update", critic, critic_ms) if not suffix else {}),
            f"lapo_actor_update{suffix}_ms": actor_ms,
            **(floor(bench, "lapo_actor_update", actor, actor_ms) if not suffix else {}),
            f"lapo_selection{suffix}_ms": bench.median_ms(lambda: select(first_obs()), 5 * repeats),
            f"lapo_online_step_utd20{suffix}_ms": bench.median_ms(
                lambda: online_step(select, utd20, env, rb, scale_reward, state), max(repeats // 10, 5), warmup=3
            ),
        }
        if not suffix:
            results["lapo_eval_episode_s"] = seconds(lambda: o3f_lapo.evaluate(agent, bench.eval_envs[:1], ENV_ID, 0))
        if suffix and suffix == bench.suffixes()[-1]:  # the agent as the last compiled path builds it
            results["lapo_critic_update_graph_breaks"] = graph_breaks(
                o3f_lapo.critic_update, agent, rb.sample(args.batch_size), args
            )
            results["lapo_actor_update_graph_breaks"] = graph_breaks(
                o3f_lapo.actor_update, agent, rb.sample(args.batch_size), args
            )
    return results


def bench_cql(bench: Bench, data, env, repeats):
    scale_reward = cql_to_sac.reward_transform(ENV_ID)
    data = {**data, "rewards": scale_reward(data["rewards"])}
    rb = cql_to_sac.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, bench.device)
    state, results = {"obs": env.reset(seed=0)[0]}, {}
    for suffix in bench.suffixes():
        args = script_args(cql_to_sac, suffix, bench.args.block)
        cql_update = cql_to_sac.maybe_compile(cql_to_sac.cql_update, args)
        agent = cql_to_sac.Agent(env, args, bench.device)
        steps = cql_to_sac.block_runner(
            lambda conservative: cql_update(agent, rb.sample(args.batch_size), conservative, args.cql_target_gap, args),
            args,
        )
        update = lambda conservative: steps(1, conservative)  # noqa: E731
        warmup = 10 if not suffix else 30
        cql_ms, sac_ms = (
            bench.median_ms(lambda: update(True), repeats // 2, warmup),
            bench.median_ms(lambda: update(False), repeats, warmup),
        )
        results |= {
            f"cql_update{suffix}_ms": cql_ms,
            **(floor(bench, "cql_update", lambda: update(True), cql_ms) if not suffix else {}),
            f"sac_update{suffix}_ms": sac_ms,
            **(floor(bench, "sac_update", lambda: update(False), sac_ms) if not suffix else {}),
        }
        if not suffix:

            @torch.no_grad()
            def act(
                obs,
            ):  # SAC's own stochastic action, and the critic's value of it (cql_to_sac records it for the Q bias)
                action = agent.actor(obs)[0]
                agent.qf(obs, action).min(0)
                return action[0]

            evaluate = lambda: cql_to_sac.evaluate_q_bias(agent, bench.eval_envs[:1], ENV_ID, 0, scale_reward, 0.99)  # noqa: E731
            results["sac_online_step_ms"] = bench.median_ms(
                lambda: online_step(act, lambda: update(False), env, rb, scale_reward, state), repeats // 2
            )
            results["cql_eval_episode_s"] = seconds(evaluate)
        if suffix and suffix == bench.suffixes()[-1]:  # the agent as the last compiled path builds it
            for name, conservative in (("cql_update", True), ("sac_update", False)):
                results[f"{name}_graph_breaks"] = graph_breaks(
                    cql_to_sac.cql_update, agent, rb.sample(args.batch_size), conservative, args.cql_target_gap, args
                )
    return results


def bench_awac(bench: Bench, data, env, repeats):
    """AWAC's update (d3rlpy's settings: rewards as they are), eager and compiled, and its graph breaks."""
    rb = awac.ReplayBuffer(dict(data), len(data["rewards"]) + 100, bench.device)
    results = {}
    for suffix in bench.suffixes():
        args = script_args(awac, suffix, bench.args.block)
        awac_update, agent = awac.maybe_compile(awac.awac_update, args), awac.Agent(env, args, bench.device)
        steps = awac.block_runner(lambda: awac_update(agent, rb.sample(args.batch_size), args.lam, args), args)
        update = lambda: steps(1)  # noqa: E731
        ms = bench.median_ms(update, repeats, warmup=10 if not suffix else 30)
        results |= {f"awac_update{suffix}_ms": ms, **(floor(bench, "awac_update", update, ms) if not suffix else {})}
        if suffix and suffix == bench.suffixes()[-1]:  # the agent as the last compiled path builds it
            results["awac_update_graph_breaks"] = graph_breaks(
                awac.awac_update, agent, rb.sample(args.batch_size), args.lam, args
            )
    return results


def projected_hours(
    results: dict, offline: int = 1_000_000, online: int = 500_000, eval_freq: int = 5000, episodes: int = 10
) -> dict:
    """Wall-clock of a paper-scale run of each script (the scripts' defaults), from the times measured above."""
    evals = (offline + online) // eval_freq * episodes
    plan = {
        "o3f_iql": ("iql_update", "iql_online_step", "iql_eval_episode_s"),
        "iql_noise": ("iql_update", "iql_noise_online_step", "iql_eval_episode_s"),
        "o3f_lapo": (("lapo_critic_update", "lapo_actor_update"), "lapo_online_step_utd20", "lapo_eval_episode_s"),
        "cql_to_sac": ("cql_update", "sac_online_step", "cql_eval_episode_s"),
    }
    hours = {}
    for script, (update, step, evaluation) in plan.items():
        update_ms = sum(results[f"{name}_ms"] for name in ((update,) if isinstance(update, str) else update))
        hours[f"{script}_paper_scale_hours"] = (
            offline * update_ms + online * results[f"{step}_ms"]
        ) / 3.6e6 + evals * results[evaluation] / 3600
    return hours


def bench_d3rlpy(bench: Bench, python: str, threads: int, repeats: int) -> dict:
    """d3rlpy's IQL update on the same transitions, in its own environment (lab/peers/d3rlpy_iql.py, run by it)."""
    raw = o3f_iql.read_hdf5(
        bench.args.dataset_path or o3f_iql.dataset_file(ENV_ID)
    )  # D4RL's format: d3rlpy splits episodes at terminals and timeouts
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers"))
    from awac_vs_d3rlpy import write_npz  # lab/peers/

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        write_npz(raw, path)
        program = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers", "d3rlpy_iql.py")
        command = [
            python,
            program,
            path,
            str(threads),
            str(bench.args.num_critics),
            str(repeats),
            "cuda:0" if bench.device.type == "cuda" else "cpu:0",
        ]
        try:
            child = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:
            sys.exit(f"error: --vs-d3rlpy {python}: cannot run it ({e.strerror})")
    if child.returncode != 0:
        sys.exit(
            f"error: --vs-d3rlpy {python}: d3rlpy's IQL did not run: {(child.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "d3rlpy_version": result["version"],
        "d3rlpy_iql_update_ms": result["update_ms"],
        "d3rlpy_iql_sample_and_update_ms": result["sample_and_update_ms"],
    }


def main(args: Args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device here")
    if args.cudagraphs and args.device != "cuda":
        sys.exit("error: --cudagraphs needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args, torch.device(args.device))
    torch.manual_seed(0)
    data = o3f_iql.load_dataset(ENV_ID, args.dataset_path)
    env, bench.eval_envs = o3f_iql.make_env(ENV_ID), [o3f_iql.make_env(ENV_ID)]
    bench.gflops = matmul_gflops(bench)
    device_name = (
        torch.cuda.get_device_name() if bench.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device_name,
        "matmul_gflops": bench.gflops,
        "iql_num_critics": args.num_critics,
    }
    d3rlpy = bench_d3rlpy(bench, args.vs_d3rlpy, torch.get_num_threads(), args.repeats) if args.vs_d3rlpy else {}
    for measure in (bench_iql, bench_lapo, bench_cql, bench_awac):  # each script's numbers as soon as they are measured
        part = measure(bench, data, env, args.repeats)
        print(f"{measure.__name__[len('bench_') :]}: {json.dumps(part)}", file=sys.stderr, flush=True)
        results |= part
    results |= d3rlpy
    results |= projected_hours(results)
    report(results, args, device_name)
    return results


def report(results: dict, args: Args, device_name: str):
    """The table, the speed-ups, the projection and one JSON line (adds the ratios to `results`)."""
    print(f"{device_name}: matmul {results['matmul_gflops']:.0f} GFLOP/s at 2048^2; torch {torch.__version__}")
    print(
        f"{'measurement':34s} {'median ms':>10s} {'GFLOP':>7s} {'x floor':>8s} {'matmuls ms':>11s} {'x matmuls':>10s}"
    )
    for key, value in results.items():
        if key.endswith("_ms") and not key.endswith("_matmul_ms"):
            name = key[:-3]
            extra = ""
            if f"{name}_gflop" in results:
                extra = (
                    f"{results[f'{name}_gflop']:7.3f} {results[f'{name}_floor_ratio']:8.2f} "
                    f"{results[f'{name}_matmul_ms']:11.2f} {results[f'{name}_matmul_ratio']:10.2f}"
                )
            print(f"{name:34s} {value:10.2f} {extra}")
    for suffix in ("_compiled", "_cudagraphs"):
        for name in (
            "iql_update",
            "iql_online_step",
            "lapo_critic_update",
            "lapo_actor_update",
            "lapo_online_step_utd20",
            "cql_update",
            "sac_update",
            "awac_update",
            "iql_update_block",
            "lapo_critic_update_block",
        ):
            eager = name.removesuffix("_block")  # a block's updates, set against one eager update
            if f"{name}{suffix}_ms" in results:
                results[f"{name}{suffix}_speedup"] = results[f"{eager}_ms"] / results[f"{name}{suffix}_ms"]
                matmuls = ""
                if f"{eager}_matmul_ms" in results:  # the same matmuls as eager's, replayed alone
                    ratio = results[f"{name}{suffix}_ms"] / results[f"{eager}_matmul_ms"]
                    results[f"{name}{suffix}_matmul_ratio"] = ratio
                    matmuls = f", {ratio:.2f}x its matmul part"
                print(f"{name}{suffix}: {results[f'{name}{suffix}_speedup']:.2f}x the eager speed{matmuls}")
    for key, value in results.items():
        if key.endswith("_graph_breaks"):
            print(
                f"{key[: -len('_graph_breaks')]}: {value} graph breaks under torch.compile ({value + 1} graphs a call)"
            )
    for suffix in ("", "_compiled", "_cudagraphs"):
        if f"lapo_online_step_utd20{suffix}_ms" in results:
            steps_per_s = 1000 / results[f"lapo_online_step_utd20{suffix}_ms"]
            print(f"lapo online env steps/s at UTD 20{suffix.replace('_', ', ')}: {steps_per_s:.1f}")
        if f"iql_update{suffix}_ms" in results:
            print(f"iql offline updates/s{suffix.replace('_', ', ')}: {1000 / results[f'iql_update{suffix}_ms']:.0f}")
    print(
        "projected wall-clock of a paper-scale run (1M offline updates, 500k online steps, "
        "10 evaluation episodes every 5000 steps), eager:"
    )
    print(
        "  "
        + ", ".join(
            f"{key.replace('_paper_scale_hours', '')} {value:.1f} h"
            for key, value in results.items()
            if key.endswith("_paper_scale_hours")
        )
    )
    if "d3rlpy_version" in results:
        results["iql_vs_d3rlpy"] = results["d3rlpy_iql_update_ms"] / results["iql_update_ms"]
        print(
            f"IQL update vs d3rlpy {results['d3rlpy_version']} "
            f"({args.num_critics} critics, batch 256, 2x256 networks): "
            f"{results['iql_vs_d3rlpy']:.2f}x its updates/s (d3rlpy {results['d3rlpy_iql_update_ms']:.2f} ms, "
            f"{results['d3rlpy_iql_sample_and_update_ms']:.2f} ms with its own sampling)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main(tyro.cli(Args))
