"""The evaluation's episodes one at a time against stepped together, as the scripts' `evaluate` steps them.

    python lab/speed/eval_batching.py     # a table, then one JSON line

Loads a shipped model, then scores its deterministic policy over the same start states (seeds seed..seed+n-1) twice:
one episode after another with a one-row policy forward per step, and with the scripts' `evaluate`: all episodes at
once, one batched forward per step over the episodes still running. Reports the episodes' returns one at a time, the
D4RL-normalised mean both ways and the seconds each took. A batched matrix product rounds other than a one-row product
(about 1e-7), and a HalfCheetah episode amplifies that: the same start state can end hundreds of return units apart,
so the two ways agree as evaluations (their means, within the spread of the episodes), not episode by episode; with a
policy that rounds alike at any batch size they agree exactly (tests/test_evaluation.py).
"""

import importlib
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


def score_std_error(script, env_id: str, returns: list) -> float:
    """The standard error of a mean score over these episodes (the spread two evaluations may differ by)."""
    scores = [script.normalized_score(env_id, r) for r in returns]
    return float(np.std(scores, ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else float("nan")


def main(args: Args) -> dict:
    script = importlib.import_module(args.script)
    flags = script.domain_defaults(script.Args(env_id=args.env_id))
    env = script.make_env(args.env_id)
    agent = script.Agent(env, flags, torch.device("cpu"))
    script.load_model(args.model, flags, agent)
    envs = [script.make_env(args.env_id) for _ in range(args.episodes)]  # as a run makes them, before it evaluates
    start = time.perf_counter()
    sequential = one_at_a_time(script, agent, env, args.episodes, args.seed)
    middle = time.perf_counter()
    batched = script.evaluate(agent, envs, args.env_id, args.seed)["return"]  # the scripts' evaluation
    end = time.perf_counter()
    score = lambda returns: script.normalized_score(args.env_id, float(np.mean(returns)))  # noqa: E731
    result = {
        "model": os.path.relpath(args.model, ROOT),
        "episodes": args.episodes,
        "one_at_a_time_returns": sequential,
        "one_at_a_time_score": score(sequential),
        "in_one_batch_score": script.normalized_score(args.env_id, batched),
        "one_at_a_time_score_std_error": score_std_error(script, args.env_id, sequential),
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
