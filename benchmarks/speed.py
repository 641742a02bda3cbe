"""Time the scripts' hot paths in one process: updates, O3F selection, and whole online env steps.

    python benchmarks/speed.py            # prints a table, then one JSON line

Uses the scripts' own functions on the embedded HalfCheetah medium dataset (made if missing), the
paper's batch sizes and critic counts. Medians over repeated calls, after a warm-up. Each update is
also set against its arithmetic floor: its FLOPs (torch's FlopCounterMode, matmuls) divided by this
machine's measured matmul GFLOP/s.
"""
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cql_to_sac  # noqa: E402
import o3f_iql  # noqa: E402
import o3f_lapo  # noqa: E402

ENV_ID = "embedded-halfcheetah-medium"


@dataclass
class Args:
    repeats: int = 200
    """timed calls per update measurement (online env steps: a tenth of it)"""
    threads: int = 0
    """torch threads (0: PyTorch's default)"""


def median_ms(fn, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def matmul_gflops(n: int = 2048) -> float:
    """This machine's dense matmul throughput: the peak that the arithmetic floor divides by."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_ms(lambda: a @ b, 10, warmup=3) / 1e6


def floor(name: str, fn, ms: float, gflops: float) -> dict:
    """FLOPs of one call (counted by torch's FlopCounterMode: matmuls), and the measured time over the floor."""
    with FlopCounterMode(display=False) as counter:
        fn()
    flops = counter.get_total_flops()
    return {f"{name}_gflop": flops / 1e9, f"{name}_floor_ratio": ms / (flops / gflops / 1e6)}


def online_step(select, update, env, rb, scale_reward, state):
    """One online step as the scripts take it: select, step the env, store, update."""
    obs = state["obs"]
    action = select(torch.as_tensor(obs, dtype=torch.float32)[None])
    next_obs, reward, terminated, truncated, _ = env.step(action.numpy())
    rb.add(obs, action, scale_reward(reward), next_obs, terminated)
    state["obs"] = env.reset()[0] if terminated or truncated else next_obs
    update()


def bench_iql(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale_reward = o3f_iql.reward_transform(ENV_ID, data["episode_returns"])
    data = {**data, "rewards": scale_reward(data["rewards"])}
    actor, vf = o3f_iql.Actor(obs_dim, act_dim), o3f_iql.ValueNetwork(obs_dim)
    qf, qf_target = o3f_iql.QEnsemble(obs_dim, act_dim, 5), o3f_iql.QEnsemble(obs_dim, act_dim, 5)
    optimizers = [torch.optim.Adam(net.parameters(), lr=3e-4) for net in (actor, qf, vf)]
    args = SimpleNamespace(expectile=0.7, beta=3.0, gamma=0.99, tau=0.005)
    rb = o3f_iql.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, torch.device("cpu"))
    low, high = torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
    update = lambda: o3f_iql.iql_update(rb.sample(256), actor, qf, qf_target, vf, *optimizers, args)  # noqa: E731
    select = lambda obs: o3f_iql.select_action(actor, qf, obs, 100, 0.2, 0.0, low, high)  # noqa: E731
    state = {"obs": env.reset(seed=0)[0]}
    ms = median_ms(update, repeats)
    return {
        "iql_update_ms": ms, **floor("iql_update", update, ms, GFLOPS),
        "iql_selection_ms": median_ms(lambda: select(torch.as_tensor(state["obs"], dtype=torch.float32)[None]), 5 * repeats),
        "iql_online_step_ms": median_ms(lambda: online_step(select, update, env, rb, scale_reward, state), repeats // 2),
    }


def bench_lapo(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale_reward, v_min, v_max = o3f_lapo.reward_transform(ENV_ID, data["rewards"], 0.99)
    data = {**data, "rewards": scale_reward(data["rewards"])}
    normalizer = o3f_lapo.Normalizer(data["observations"], data["actions"])
    cvae, policy = o3f_lapo.CVAE(obs_dim, act_dim, 2 * act_dim), o3f_lapo.LatentPolicy(obs_dim, 2 * act_dim, 2.0)
    qf, vf = o3f_lapo.QEnsemble(obs_dim, act_dim, 5), o3f_lapo.ValueNetwork(obs_dim)
    cvae_t, policy_t, qf_t = copy.deepcopy(cvae), copy.deepcopy(policy), copy.deepcopy(qf)
    for target in (cvae_t, policy_t, qf_t):
        target.requires_grad_(False)
    cvae_opt, policy_opt = torch.optim.Adam(cvae.parameters(), lr=2e-4), torch.optim.Adam(policy.parameters(), lr=2e-4)
    critic_opt = torch.optim.Adam([*qf.parameters(), *vf.parameters()], lr=2e-4)
    args = SimpleNamespace(gamma=0.99, tau=0.005, num_min_q=2, doubleq_min=1.0, expectile=0.9, kl_beta=1.0)
    rb = o3f_lapo.ReplayBuffer(data, len(data["rewards"]) + repeats + 100, torch.device("cpu"))
    low, high = torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
    critic = lambda: o3f_lapo.critic_update(rb.sample(512), normalizer, policy_t, cvae_t, qf, qf_t, vf, critic_opt, v_min, v_max, args)  # noqa: E731
    actor = lambda: o3f_lapo.actor_update(rb.sample(512), normalizer, cvae, cvae_t, policy, policy_t, qf, qf_t, vf, cvae_opt, policy_opt, args)  # noqa: E731
    select = lambda obs: o3f_lapo.select_action(policy, cvae_t, normalizer, qf, obs, 100, 0.2, 0.0, low, high)  # noqa: E731

    def utd20():
        for _ in range(20):
            critic()
        actor()

    state = {"obs": env.reset(seed=0)[0]}
    critic_ms, actor_ms, offline_ms = median_ms(critic, repeats), median_ms(actor, repeats), median_ms(lambda: (critic(), actor()), repeats)
    return {
        "lapo_critic_update_ms": critic_ms, **floor("lapo_critic_update", critic, critic_ms, GFLOPS),
        "lapo_actor_update_ms": actor_ms, **floor("lapo_actor_update", actor, actor_ms, GFLOPS),
        "lapo_offline_update_ms": offline_ms, **floor("lapo_offline_update", lambda: (critic(), actor()), offline_ms, GFLOPS),
        "lapo_selection_ms": median_ms(lambda: select(torch.as_tensor(state["obs"], dtype=torch.float32)[None]), 5 * repeats),
        "lapo_online_step_utd20_ms": median_ms(lambda: online_step(select, utd20, env, rb, scale_reward, state), max(repeats // 10, 5), warmup=3),
    }


def bench_cql(data, env, repeats):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor, qf = cql_to_sac.Actor(obs_dim, act_dim), cql_to_sac.QEnsemble(obs_dim, act_dim, 2)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    alpha, alpha_prime = cql_to_sac.LogMultiplier(), cql_to_sac.LogMultiplier()
    optimizers = [torch.optim.Adam(net.parameters(), lr=3e-4) for net in (actor, qf, alpha, alpha_prime)]
    args = SimpleNamespace(gamma=0.99, tau=0.005, cql_weight=5.0, cql_n_actions=10)
    rb = cql_to_sac.ReplayBuffer(data, len(data["rewards"]), torch.device("cpu"))
    update = lambda conservative: cql_to_sac.cql_update(rb.sample(256), actor, qf, qf_target, alpha, alpha_prime, *optimizers,  # noqa: E731
                                                        conservative, 5.0, -float(act_dim), args)
    cql_ms, sac_ms = median_ms(lambda: update(True), repeats // 2), median_ms(lambda: update(False), repeats)
    return {"cql_update_ms": cql_ms, **floor("cql_update", lambda: update(True), cql_ms, GFLOPS),
            "sac_update_ms": sac_ms, **floor("sac_update", lambda: update(False), sac_ms, GFLOPS)}


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = o3f_iql.load_dataset(ENV_ID)
    env = o3f_iql.make_env(ENV_ID)
    GFLOPS = matmul_gflops()
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu", "matmul_gflops": GFLOPS}
    results |= bench_iql(data, env, args.repeats)
    results |= bench_lapo(data, env, args.repeats)
    results |= bench_cql(data, env, args.repeats)
    print(f"matmul peak: {GFLOPS:.0f} GFLOP/s ({results['threads']} threads)")
    print(f"{'measurement':28s} {'median ms':>10s} {'GFLOP':>7s} {'x floor':>8s}")
    for key, value in results.items():
        if key.endswith("_ms"):
            name = key[:-3]
            flop, ratio = results.get(f"{name}_gflop"), results.get(f"{name}_floor_ratio")
            print(f"{name:28s} {value:10.2f} " + (f"{flop:7.3f} {ratio:8.2f}" if flop else ""))
    print(f"lapo online env steps/s at UTD 20: {1000 / results['lapo_online_step_utd20_ms']:.2f}")
    print(json.dumps(results))
