"""The evaluation's episodes one at a time (as the scripts run them) against stepped together in one batch.

    python lab/speed/eval_batching.py     # a table, then one JSON line

Loads a shipped model, then scores its deterministic policy over the same start states (seeds seed..seed+n-1) twice:
one episode after another with a one-row policy forward per step (the scripts' `evaluate`), and all episodes at once
in a Gymnasium SyncVectorEnv with one batched forward per step (each episode counted until its own end). Reports each
episode's return both ways, the D4RL-normalised mean both ways and the seconds each took. A batched matrix product
rounds other than a one-row product (about 1e-7), and a HalfCheetah episode amplifies that: the same start state can
end hundreds of return units apart, so the two ways are compared as evaluations (their means), not episode by episode.
"""

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # the scripts, at the repository's top
    sys.path.insert(0, ROOT)


@dataclass
class Args:
    model: str = os.path.join(
        ROOT, "lab", "studies", "premise", "pretrained", "iql__embedded-halfcheetah-medium__seed1.pt"
    )
    """a model as --load-offline reads it"""
    script: str = "o3f_iql"
    """the script whose Agent, policy_action and make_env score it"""
    env_id: str = "embedded-halfcheetah-medium"
    episodes: int = 10
    seed: int = 10_001
    """the first start state's seed (a run with --seed 1 evaluates from 10001 on)"""


def one_at_a_time(script, agent, env, n: int, seed: int) -> list:
    returns = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        done, episode_return = False, 0.0
        while not done:
            action = script.policy_action(agent, torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            episode_return, done = episode_return + float(reward), terminated or truncated
        returns.append(episode_return)
    return returns


def in_one_batch(script, agent, env_id: str, n: int, seed: int) -> list:
    envs = gym.vector.SyncVectorEnv([lambda: script.make_env(env_id) for _ in range(n)])
    obs, _ = envs.reset(seed=[seed + i for i in range(n)])
    returns, running = np.zeros(n), np.ones(n, bool)
    while running.any():  # an episode that ended is stepped on (reset by the vector env) but no longer counted
        action = script.policy_action(agent, torch.as_tensor(obs, dtype=torch.float32, device=agent.device))
        obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
        returns += np.where(running, reward, 0.0)
        running &= ~(terminated | truncated)
    envs.close()
    return returns.tolist()


def main(args: Args) -> dict:
    script = importlib.import_module(args.script)
    flags = script.domain_defaults(script.Args(env_id=args.env_id))
    env = script.make_env(args.env_id)
    agent = script.Agent(env, flags, torch.device("cpu"))
    script.load_model(args.model, flags, agent)
    start = time.perf_counter()
    sequential = one_at_a_time(script, agent, env, args.episodes, args.seed)
    middle = time.perf_counter()
    batched = in_one_batch(script, agent, args.env_id, args.episodes, args.seed)
    end = time.perf_counter()
    score = lambda returns: script.normalized_score(args.env_id, float(np.mean(returns)))  # noqa: E731
    result = {
        "model": os.path.relpath(args.model, ROOT),
        "episodes": args.episodes,
        "one_at_a_time_returns": sequential,
        "in_one_batch_returns": batched,
        "one_at_a_time_score": score(sequential),
        "in_one_batch_score": score(batched),
        "largest_episode_difference": float(np.max(np.abs(np.subtract(sequential, batched)))),
        "one_at_a_time_s": middle - start,
        "in_one_batch_s": end - middle,
        "torch": torch.__version__,
    }
    print("| | score | seconds |\n|---|---|---|")
    print(f"| one at a time | {result['one_at_a_time_score']:.2f} | {result['one_at_a_time_s']:.2f} |")
    print(f"| in one batch | {result['in_one_batch_score']:.2f} | {result['in_one_batch_s']:.2f} |")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread, as the runs it stands for evaluate
    main(tyro.cli(Args))
