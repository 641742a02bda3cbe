"""CQL offline, then SAC online: the objective-switch baseline of the O3F paper's Figure 2, in one file.

Offline: CQL (Kumar et al., 2020) with a tanh-Gaussian SAC actor, twin critics, automatic entropy and
the Lagrange form of the conservative weight (`--cql-target-gap`, the paper's "Lagrange threshold").
Online: SAC (Haarnoja et al., 2018): the conservative term is dropped at the switch, one update per env
step, stochastic actions ("Fine-tuning offline policies with optimistic action selection", Figure 2).
`--online-objective cql` keeps the conservative term online instead (Figure 3's "same objective"),
and `--online-target-gap` with `--schedule` loosens it abruptly or linearly.
Figure 2's diagnostics: the critic's Q on visited pairs against the discounted return actually
obtained from them (Q bias and ratio), the critic loss, and performance, across the switch.
Reads top to bottom: arguments, networks, the CQL/SAC update, the diagnostics, then `train`, the training loop;
the plumbing (tasks and data, buffer, bookkeeping) is one block at the end.
"""

import contextlib
import copy
import difflib
import functools
import http.client
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.distributions import Normal
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

ALGORITHM, SCRIPTS = "cql", ("cql_to_sac.py",)  # checkpoints name their algorithm, and load into these scripts


@dataclass
class Args:
    # CQL and SAC
    batch_size: int = 256
    """the batch size of each update"""
    q_lr: float = 3e-4
    """the learning rate of the critics"""
    policy_lr: float = 1e-4
    """the learning rate of the actor (CQL's D4RL setting)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """the Polyak averaging rate of the target critics"""
    cql_target_gap: float = 5.0
    """the Lagrange threshold: the multiplier grows while --cql-weight * (logsumexp Q - data Q) exceeds it"""
    cql_weight: float = 5.0
    """the scale of the conservative term inside the Lagrange form (CQL's min_q_weight)"""
    cql_n_actions: int = 10
    """actions sampled per state for each of the three proposals of the importance-sampled logsumexp"""

    # The switch
    online_objective: Literal["sac", "cql"] = "sac"
    """the online loss: `sac` drops the conservative term at the switch (Figure 2); `cql` keeps it (Figure 3)"""
    online_target_gap: float | None = None
    """with `--online-objective cql`: the Lagrange threshold to move to online (default: keep --cql-target-gap)"""
    schedule: Literal["abrupt", "linear"] = "abrupt"
    """with --online-target-gap: switch to it at once, or move there linearly, reaching it at the last online step"""
    switch_window: int = 5000
    """steps on each side of the switch in which the critic loss is logged every 10 steps"""

    # The run: the task and its data, the schedule, logging, checkpoints, the device
    env_id: str = "embedded-halfcheetah-medium"
    """the task: a D4RL name ({halfcheetah,hopper,walker2d}-{random,medium,medium-replay,medium-expert,expert}-v2,
    antmaze-{umaze,umaze-diverse,medium-play,medium-diverse,large-play,large-diverse}-v2,
    kitchen-{complete,partial,mixed}-v0) or a dataset made here with no network (docs/data.md:
    embedded-halfcheetah-{medium,random}{,-1m} (1M: D4RL's size), embedded-pointmaze-{medium,large},
    embedded-pointmaze-large-{20k,10k}{,-any-start})"""
    dataset_path: str | None = None
    """a local D4RL-format HDF5 file to use instead of the task's own dataset"""
    offline_steps: int = 1_000_000
    """number of offline gradient steps (CQL pretraining)"""
    online_steps: int = 500_000
    """number of online environment steps (fine-tuning, one update each)"""
    eval_freq: int = 5000
    """evaluate every this many steps (offline updates and online env steps alike)"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_freq: int = 1000
    """write losses to TensorBoard every this many steps"""
    save_offline: str | None = None
    """save the pretrained model here at the end of the offline phase (default: `{run_dir}/offline.pt`)"""
    load_offline: str | None = None
    """skip pretraining and fine-tune this saved model (so that every online variant starts from the same one)"""
    block: int = 1
    """offline, run this many steps' updates as one call (with --cudagraphs one CUDA graph replay); the same updates"""
    checkpoint_every: int = 10_000
    """save the whole run to `{run_dir}/checkpoint.pt` every this many steps (online: at the episode's end); 0: never"""
    snapshot_steps: tuple[int, ...] = ()
    """also keep the model (as --load-offline reads it) at these steps, in `{run_dir}/snapshots/step{N}.pt`"""
    snapshot_every: int = 0
    """also keep the model every this many steps, in `{run_dir}/snapshots/`; 0: never"""
    resume: str | None = None
    """continue the run that saved this checkpoint (its `checkpoint.pt` or its run directory), with that run's flags"""
    compile: bool = False
    """if toggled, each update (forward, backward, the optimiser's step) is one torch.compile graph (docs/speed.md)"""
    cudagraphs: bool = False
    """if toggled, each call of the updates (a step or --block steps) replays one CUDA graph (compiled: --compile)"""
    exp_name: str = "cql_to_sac"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    track: bool = False
    """if toggled, the run is tracked with Weights and Biases (wandb must be installed)"""
    wandb_project_name: str = "o3f"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the entity (team) of the wandb project"""
    capture_video: bool = False
    """if toggled, the first evaluation episode of every evaluation is recorded to `videos/`"""
    output_dir: str = "runs"
    """runs are written to `{output_dir}/{env_id}__{exp_name}__{seed}__{time}/`"""


# ---------------------------------------------------------------------------------------------
# Networks (CQL: three hidden layers of 256)
# ---------------------------------------------------------------------------------------------
def mlp(in_dim: int, out_dim: int, hidden_dim: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class EnsembleLinear(nn.Module):
    """m independent linear layers as one batched matmul: [m, batch, in] -> [m, batch, out]."""

    def __init__(self, num_members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = in_dim**-0.5  # nn.Linear's default initialisation, drawn independently for every member
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x):
        return torch.baddbmm(self.bias, x, self.weight)


class QEnsemble(nn.Module):
    """The critic ensemble {Q_j(s, a)}, j = 1..m (twin critics here), as one network with batched layers; returns a
    [m, batch] tensor.

    One matmul per layer for all m critics instead of one per critic: the same m independent MLPs, fewer calls.
    """

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int, hidden_dim: int = 256):
        super().__init__()
        self.num_critics = num_critics
        dims = [obs_dim + act_dim, hidden_dim, hidden_dim, hidden_dim, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(num_critics, d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:])
        )

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1).expand(self.num_critics, -1, -1)
        for layer in self.layers[:-1]:
            x = layer(x).relu_()
        return self.layers[-1](x).squeeze(-1)


class Actor(nn.Module):
    """SAC's tanh-Gaussian policy: returns an action in [-1, 1] and its log-density (None if deterministic)."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim)

    def forward(self, obs, deterministic: bool = False):
        mean, log_std = self.net(obs).chunk(2, -1)
        if deterministic:
            return torch.tanh(mean), None
        std = log_std.clamp(-5.0, 2.0).exp()
        u = mean + std * torch.randn_like(mean)
        # log N(u; mean, std) minus the log-Jacobian of tanh, log(1 - tanh(u)^2), in a stable form.
        log_prob = Normal(mean, std, validate_args=False).log_prob(u).sum(-1) - (
            2 * (math.log(2) - u - F.softplus(-2 * u))
        ).sum(-1)
        return torch.tanh(u), log_prob


class LogMultiplier(nn.Module):
    """A positive multiplier learned in log space: SAC's entropy temperature alpha, CQL's Lagrange alpha'."""

    def __init__(self):
        super().__init__()
        self.log_value = nn.Parameter(torch.zeros(()))

    def forward(self):
        return self.log_value.exp()


class Agent:
    """CQL's and SAC's networks and their optimisers, which travel together, and SAC's target entropy
    (checkpoints name each part)."""

    def __init__(self, env: gym.Env, args: Args, device: torch.device):
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        self.actor = Actor(obs_dim, act_dim).to(device)
        self.qf = QEnsemble(obs_dim, act_dim, 2).to(device)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)  # moved by Polyak averaging only
        self.alpha, self.alpha_prime = LogMultiplier().to(device), LogMultiplier().to(device)
        self.target_entropy = -float(act_dim)
        self.actor_optimizer = adam(self.actor.parameters(), args.policy_lr, args)
        self.q_optimizer = adam(self.qf.parameters(), args.q_lr, args)
        self.alpha_optimizer = adam(self.alpha.parameters(), args.q_lr, args)
        self.alpha_prime_optimizer = adam(self.alpha_prime.parameters(), args.q_lr, args)
        self.device = device


# ---------------------------------------------------------------------------------------------
# CQL and SAC: losses and one update
# ---------------------------------------------------------------------------------------------
def conservative_gap(qf, actor, obs, next_obs, actions, n_actions: int) -> torch.Tensor:
    """CQL(H)'s gap per critic: logsumexp_a Q(s, a) - Q(s, a_data), averaged over the batch.

    The logsumexp is importance-sampled over n_actions draws from each of three proposals, each
    corrected by its own density: uniform actions (0.5^|A|), and the policy at s and at s'.
    """
    batch, act_dim = actions.shape
    obs_n, next_obs_n = obs.repeat(n_actions, 1), next_obs.repeat(n_actions, 1)
    with torch.no_grad():
        pi_actions, pi_log_prob = actor(obs_n)
        next_actions, next_log_prob = actor(next_obs_n)
    uniform_actions = torch.rand(n_actions * batch, act_dim, device=obs.device) * 2 - 1
    log_density = torch.cat(
        [torch.full((n_actions * batch,), act_dim * math.log(0.5), device=obs.device), pi_log_prob, next_log_prob]
    )
    q = qf(obs_n.repeat(3, 1), torch.cat([uniform_actions, pi_actions, next_actions])) - log_density  # [m, 3 n batch]
    logsumexp = torch.logsumexp(q.view(q.shape[0], 3 * n_actions, batch), dim=1)  # [m, batch]
    return logsumexp.mean(1) - qf(obs, actions).mean(1)


def cql_update(agent: Agent, batch, conservative: bool, target_gap: float, args: Args) -> dict:
    """One step of SAC, plus CQL's Lagrange-weighted conservative term on the critics when `conservative`."""
    obs, actions, rewards, next_obs, dones = batch
    with torch.no_grad():
        next_actions, next_log_prob = agent.actor(next_obs)
        next_v = agent.qf_target(next_obs, next_actions).min(0).values - agent.alpha() * next_log_prob
        td_target = rewards + args.gamma * (1.0 - dones) * next_v
    td_loss = ((agent.qf(obs, actions) - td_target) ** 2).mean(1).sum()
    losses = {"td_loss": td_loss}
    qf_loss, alpha_prime_loss = td_loss, torch.zeros((), device=obs.device)
    if conservative:
        gap = args.cql_weight * conservative_gap(
            agent.qf, agent.actor, obs, next_obs, actions, args.cql_n_actions
        )  # [m]
        # Lagrange form: alpha' grows while the scaled gap exceeds the threshold, and shrinks (to 0) below it.
        qf_loss = qf_loss + (agent.alpha_prime().clamp(0.0, 1e6).detach() * (gap - target_gap)).sum()
        alpha_prime_loss = -(agent.alpha_prime().clamp(0.0, 1e6) * (gap.detach() - target_gap)).mean()
        losses["cql_gap"] = gap.mean()
    # One backward for two losses: each sees the other's variables as constants (compiled code allows one per graph).
    agent.q_optimizer.zero_grad(set_to_none=True)
    agent.alpha_prime_optimizer.zero_grad(set_to_none=True)
    (qf_loss + alpha_prime_loss).backward()
    agent.q_optimizer.step()
    if conservative:
        agent.alpha_prime_optimizer.step()
        losses["alpha_prime"] = agent.alpha_prime().detach()
    # Actor and temperature: SAC's, in both phases (one backward again: the temperature's loss sees log pi as fixed).
    pi_actions, log_prob = agent.actor(obs)
    actor_loss = (agent.alpha().detach() * log_prob - agent.qf(obs, pi_actions).min(0).values).mean()
    alpha_loss = -(agent.alpha() * (log_prob.detach() + agent.target_entropy)).mean()
    agent.actor_optimizer.zero_grad(set_to_none=True)
    agent.alpha_optimizer.zero_grad(set_to_none=True)
    (actor_loss + alpha_loss).backward()
    agent.actor_optimizer.step()
    agent.alpha_optimizer.step()
    with torch.no_grad():  # Polyak averaging: target <- target + tau (critic - target), every tensor in one call
        torch._foreach_lerp_(list(agent.qf_target.parameters()), list(agent.qf.parameters()), args.tau)
    return losses | {"qf_loss": qf_loss, "actor_loss": actor_loss, "alpha": agent.alpha().detach()}


def target_gap_at(online_step: int, args: Args) -> float:
    """The Lagrange threshold `online_step` steps after the switch (1..online_steps) under --schedule."""
    end = args.cql_target_gap if args.online_target_gap is None else args.online_target_gap
    if args.schedule == "abrupt":
        return end
    return args.cql_target_gap + (end - args.cql_target_gap) * online_step / max(args.online_steps, 1)


def reward_transform(env_id: str):
    """CQL's reward convention: antmaze (r - 0.5) * 4, elsewhere r as it is."""
    if TASKS[env_id].domain == "antmaze":
        return lambda r: (r - 0.5) * 4.0
    return lambda r: r


@torch.no_grad()
def policy_action(agent: Agent, obs: torch.Tensor) -> torch.Tensor:
    """The deterministic policy that evaluations score: tanh of the Gaussian's mean, for `obs` [batch, obs_dim]."""
    return agent.actor(obs, deterministic=True)[0]


@torch.no_grad()
def evaluate(agent, env, env_id: str, n_episodes: int, seed: int) -> dict:
    """Mean return and D4RL-normalised score of the deterministic policy (`policy_action`), from fixed start states."""
    returns = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)  # the same start states at every evaluation
        done, episode_return = False, 0.0
        while not done:
            action = policy_action(agent, torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None])[0]
            obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
            episode_return, done = episode_return + float(reward), terminated or truncated
        returns.append(episode_return)
    mean_return = float(np.mean(returns))
    return {"return": mean_return, "normalized_score": normalized_score(env_id, mean_return)}


# ---------------------------------------------------------------------------------------------
# Diagnostics (Figure 2): the critic's Q against the discounted return that actually followed
# ---------------------------------------------------------------------------------------------
def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_(t+k) within the episode."""
    returns, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def exact_enough(length: int, terminated: bool, gamma: float, tolerance: float = 0.01) -> np.ndarray:
    """Steps whose Monte Carlo return stands for the value: all of a terminated episode; in one cut by a
    time limit, only those at least log(tolerance) / log(gamma) steps before the cut, where the missing
    tail weighs gamma^(T - t) <= tolerance (no bootstrapping past the time limit is mixed in)."""
    if terminated:
        return np.ones(length, bool)
    return np.arange(length) < length - math.ceil(math.log(tolerance) / math.log(gamma))


def q_bias(q_values: list, rewards: list, terminated: bool, gamma: float):
    """(Q - G, Q, G) on the episode's usable pairs."""
    keep = exact_enough(len(rewards), terminated, gamma)
    q, g = np.asarray(q_values)[keep], discounted_returns(np.asarray(rewards, dtype=np.float64), gamma)[keep]
    return q - g, q, g


@torch.no_grad()
def evaluate_q_bias(agent: Agent, envs: list, env_id: str, seed: int, scale_reward, gamma: float) -> dict:
    """Return, D4RL-normalised score and Q bias of the deterministic policy (tanh of the mean): one episode in each of
    `envs`, from fixed start states, stepped together (one batched forward per step over the episodes still running)."""
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])  # the same start states every time
    returns, running = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
    q_values, rewards, terminated = [[] for _ in envs], [[] for _ in envs], [False] * len(envs)
    while running.any():
        obs_t = torch.as_tensor(obs[running], dtype=torch.float32, device=agent.device)
        actions = policy_action(agent, obs_t)
        q = agent.qf(obs_t, actions).min(0).values  # the smallest of the ensemble
        for i, action, q_i in zip(np.flatnonzero(running), actions.cpu().numpy(), q.cpu().numpy()):
            obs[i], reward, terminated[i], truncated, _ = envs[i].step(action)
            q_values[i].append(q_i)
            rewards[i].append(scale_reward(float(reward)))
            returns[i], running[i] = returns[i] + float(reward), not (terminated[i] or truncated)
    biases, qs, gs = zip(*(q_bias(*episode, gamma) for episode in zip(q_values, rewards, terminated)))
    mean_return = float(returns.mean())
    bias, q, g = np.concatenate(biases), np.concatenate(qs), np.concatenate(gs)
    return {
        "return": mean_return,
        "normalized_score": normalized_score(env_id, mean_return),
        "q_bias": float(bias.mean()) if len(bias) else None,
        "q_ratio": float(q.mean() / g.mean()) if len(g) and abs(g.mean()) > 1e-8 else None,
    }


def record_q_bias(run, step: int, q_values: list, rewards: list, terminated: bool, gamma: float):
    """Figure 2's Q bias on the pairs a training episode visited, to summary.json and TensorBoard."""
    bias, q, g = q_bias(torch.cat(q_values).cpu().numpy(), rewards, terminated, gamma)
    if len(bias):
        entry = {
            "step": step,
            "q_bias": float(bias.mean()),
            "q": float(q.mean()),
            "mc_return": float(g.mean()),
            "q_ratio": float(q.mean() / g.mean()) if abs(g.mean()) > 1e-8 else None,
        }
        run.summary["online_episodes"].append(entry)
        for name in ("q_bias", "q", "mc_return", "q_ratio"):
            if entry[name] is not None:
                run.writer.add_scalar(f"diagnostics/{name}", entry[name], step)


# ---------------------------------------------------------------------------------------------
# Training: CQL offline, then SAC (or CQL) online, in one loop
# ---------------------------------------------------------------------------------------------
def train(args: Args):
    args, resumed = read_flags(args)
    if args.online_target_gap is not None and args.online_objective != "cql":
        fail("--online-target-gap needs --online-objective cql (SAC online has no conservative term)")
    method_checks = {
        "--cql-n-actions must be >= 1": args.cql_n_actions >= 1,
        "--switch-window must be >= 0": args.switch_window >= 0,
    }
    device, data, env = setup(args, method_checks)  # the flags checked, seeding, the dataset and the environment
    scale_reward = reward_transform(args.env_id)
    data["rewards"] = scale_reward(data["rewards"])
    agent = Agent(env, args, device)
    # The replay buffer starts as the whole offline dataset; online transitions are added to it.
    rb = ReplayBuffer(data, len(data["rewards"]) + args.online_steps, device)
    evaluate = functools.partial(evaluate_q_bias, scale_reward=scale_reward, gamma=args.gamma)
    if args.load_offline and not resumed:  # fine-tune a saved model: pretraining ends at the model's own step
        args.offline_steps = load_model(args.load_offline, args, agent)
    run = Run(args, resumed, agent, env, rb, evaluate)  # directory, logs, checkpoints; --resume: the stopped run
    run.summary.setdefault("online_episodes", [])  # Figure 2's Q bias on the training episodes
    update = maybe_compile(cql_update, args)

    def one_step(conservative, target_gap):  # CQL's update (SAC's where not conservative), on a batch drawn from D
        return update(agent, rb.sample(args.batch_size), conservative, target_gap, args)

    updates = block_runner(one_step, args)  # updates(n, conservative, target_gap): n steps in one call

    obs, episode_q, episode_rewards = run.obs, [], []
    for global_step in range(run.start_step, run.total_steps):
        step, online = global_step + 1, global_step >= args.offline_steps  # step: the one this iteration completes
        if online:
            if obs is None:  # the previous episode ended
                obs = torch.as_tensor(env.reset()[0], dtype=torch.float32, device=device)
            # ALGO LOGIC: SAC acts with its own stochastic policy
            with torch.no_grad():
                action = agent.actor(obs[None])[0]
                episode_q.append(agent.qf(obs[None], action).min(0).values)  # the critic's view of the pair it visits
            next_obs, reward, terminated, truncated, info = env.step(action[0].cpu().numpy())
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)  # one upload: buffer, next step
            # Only a true termination stops bootstrapping, a time limit does not.
            rb.add(obs, action[0], scale_reward(reward), next_obs, terminated)
            episode_rewards.append(scale_reward(float(reward)))
            run.record_episode(step, info)
            if terminated or truncated:
                record_q_bias(run, step, episode_q, episode_rewards, terminated, args.gamma)
                episode_q, episode_rewards = [], []
            obs = None if terminated or truncated else next_obs

        # ALGO LOGIC: CQL offline; online SAC (the switch drops the conservative term) or CQL with a threshold schedule;
        # offline, --block steps' updates run as one call (the same updates: only the calls are fewer)
        conservative = not online or args.online_objective == "cql"
        target_gap = target_gap_at(step - args.offline_steps, args) if online else args.cql_target_gap
        # Figure 2 wants the critic loss at a fine grain around the switch, so it is logged every 10 steps there.
        near_switch = abs(step - args.offline_steps) <= args.switch_window and step % 10 == 0
        if n := run.steps_to_update(step, now=online or near_switch):
            losses = updates(n, conservative, target_gap)
            # Bookkeeping, one call each (the plumbing block below): divergence guard and logs, evaluation, checkpoints
            run.log(step, losses, scalars={"target_gap": target_gap}, now=near_switch)
            run.evaluate_if_due(step, critic_loss=losses["td_loss"])
            run.save_if_due(step, between_episodes=not online or obs is None)
    run.finish()


# =============================================================================================
# PLUMBING: tasks and data, the replay buffer, flags, the run's bookkeeping, checkpoints, guards.
# The same in every script of this project, line for line (tests/test_alignment.py); skip it on a first read.
# =============================================================================================
class BadInput(SystemExit):
    """Bad input: uncaught, it ends the program with exit code 2 and no traceback (`fail` printed its one line)."""


def fail(message: str):
    """Bad input ends the run with one line and exit code 2, never a traceback (a caller may catch BadInput)."""
    print(f"error: {message}", file=sys.stderr)
    raise BadInput(2)


DATA_DIR = os.environ.get("O3F_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "o3f"))
D4RL_URL = os.environ.get("O3F_D4RL_URL", "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2")
EVAL_MAZES = {  # D4RL's antmaze evaluation mazes, row by row: 1 a wall, 0 free, one start (r), one goal (g)
    name: [[cell if cell in "rg" else int(cell) for cell in row] for row in rows.split()]
    for name, rows in {
        "umaze": "11111 100r1 10111 100g1 11111",
        "medium": "11111111 1r011001 10010001 11000111 10010001 10100101 100010g1 11111111",
        "large": "111111111111 1r0001000001 101101010101 100000010001 101111011101 100101000001 110101010111 "
        "100100010g01 111111111111",
    }.items()
}


@dataclass
class Task:
    domain: str  # "locomotion", "antmaze" (sparse-reward navigation) or "kitchen": defaults and reward conventions
    env: str  # the Gymnasium environment
    env_kwargs: dict
    obs_keys: tuple | None  # dict observations flattened as D4RL's vectors (antmaze: x, y, then the body)
    source: str  # "d4rl" (D4RL's HDF5 file over HTTP), "minari" (a Minari dataset id) or "embedded" (made here)
    dataset: str
    ref_min: float  # D4RL's reference returns: score = 100 * (return - ref_min) / (ref_max - ref_min)
    ref_max: float


def task_table() -> dict:
    """D4RL's tasks, then the embedded ones (made by make_datasets.py with no network, scored as D4RL's)."""
    tasks = {}
    for robot, (env, ref_min, ref_max) in {
        "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
        "hopper": ("Hopper-v5", -20.272305, 3234.3),
        "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
    }.items():
        for data in ("random", "medium", "medium-replay", "medium-expert", "expert"):
            dataset = f"{robot}_{data.replace('-', '_')}-v2"
            tasks[f"{robot}-{data}-v2"] = Task("locomotion", env, {}, None, "d4rl", dataset, ref_min, ref_max)
    mazes = {"umaze": "UMaze", "umaze-diverse": "UMaze", "medium-play": "Medium", "large-play": "Large"}
    mazes.update({"medium-diverse": "Medium_Diverse_GR", "large-diverse": "Large_Diverse_GR"})  # AntMaze_{}-v4
    for data, env in mazes.items():  # success (return 1) ends the episode, as in D4RL
        maze = {"maze_map": EVAL_MAZES[data.split("-")[0]], "continuing_task": False, "reset_target": False}
        keys, dataset = ("achieved_goal", "observation"), f"D4RL/antmaze/{data}-v1"
        tasks[f"antmaze-{data}-v2"] = Task("antmaze", f"AntMaze_{env}-v4", maze, keys, "minari", dataset, 0.0, 1.0)
    mixed = ["microwave", "kettle", "bottom burner", "light switch"]
    partial = ["microwave", "kettle", "light switch", "slide cabinet"]
    for data, subtasks in {"complete": partial, "partial": partial, "mixed": mixed}.items():  # return: tasks done, of 4
        kwargs = dict(tasks_to_complete=subtasks, remove_task_when_completed=True, max_episode_steps=280)
        kwargs["terminate_on_tasks_completed"], dataset, keys = True, f"D4RL/kitchen/{data}-v2", ("observation",)
        tasks[f"kitchen-{data}-v0"] = Task("kitchen", "FrankaKitchen-v1", kwargs, keys, "minari", dataset, 0.0, 4.0)
    for name in (f"embedded-halfcheetah-{data}" for data in ("medium", "medium-1m", "random", "random-1m")):
        tasks[name] = replace(tasks["halfcheetah-medium-v2"], source="embedded", dataset=name)
    for data in ("medium", "large", "large-20k", "large-10k"):  # PointMaze in D4RL's evaluation maze, for antmaze
        maze = {"maze_map": EVAL_MAZES[data.split("-")[0]], "continuing_task": False, "reset_target": False}
        env, name = f"PointMaze_{data.split('-')[0].title()}-v3", f"embedded-pointmaze-{data}"
        tasks[name] = Task("antmaze", env, maze, ("observation",), "embedded", name, 0.0, 1.0)
    any_start = [[0 if c == "r" else c for c in row] for row in EVAL_MAZES["large"]]  # D4RL's maze2d: any free cell
    for name in ("embedded-pointmaze-large-20k", "embedded-pointmaze-large-10k"):  # their data, any start cell
        maze = tasks[name]
        tasks[f"{name}-any-start"] = replace(maze, env_kwargs={**maze.env_kwargs, "maze_map": any_start})
    return tasks


TASKS = task_table()
DATASET_OF = {env_id: replace(task, env_kwargs={}) for env_id, task in TASKS.items()}  # a task less its env's settings


def normalized_score(env_id: str, episode_return: float) -> float:
    return 100.0 * (episode_return - TASKS[env_id].ref_min) / (TASKS[env_id].ref_max - TASKS[env_id].ref_min)


def flatten_obs(task: Task, obs):
    return obs if task.obs_keys is None else np.concatenate([obs[key] for key in task.obs_keys], -1)


def make_env(env_id: str, video_dir: str | None = None):  # video_dir: every episode recorded there
    task = TASKS[env_id]
    if task.env.startswith(("AntMaze", "PointMaze", "FrankaKitchen")):
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its import prints an Adroit notice
            warnings.simplefilter("ignore")
            gym.register_envs(importlib.import_module("gymnasium_robotics"))
    with warnings.catch_warnings():  # AntMaze v4 on purpose: v5 changed the observation D4RL's data use
        warnings.filterwarnings("ignore", message=".*out of date.*")
        env = gym.make(task.env, render_mode="rgb_array" if video_dir else None, **task.env_kwargs)
    if os.path.isfile(xml := getattr(env.unwrapped, "tmp_xml_file_path", "")):  # a maze's model file, loaded, which
        os.remove(xml)  # gymnasium-robotics (1.4.2) would leave in the temporary folder, one per environment made
    if task.obs_keys is not None:
        space = gym.spaces.Box(-np.inf, np.inf, (sum(env.observation_space[k].shape[0] for k in task.obs_keys),))
        env = gym.wrappers.TransformObservation(env, lambda obs: flatten_obs(task, obs), space)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda episode: True)
    return gym.wrappers.RecordEpisodeStatistics(env)


def dataset_file(env_id: str) -> str:
    """The task's HDF5 file, made (embedded) or downloaded (D4RL) on first use."""
    task = TASKS[env_id]
    path = os.path.join(DATA_DIR, task.source, f"{task.dataset}.hdf5")
    if not os.path.isfile(path) and task.source == "embedded":
        tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_datasets.py")  # the project's data tool
        if not os.path.isfile(tool):
            fail(f"{env_id} is made by make_datasets.py, which is not next to this script; pass --dataset-path FILE")
        print(f"making the embedded dataset {env_id} (once) at {path}", file=sys.stderr)
        command = [sys.executable, tool, "make", "--name", task.dataset, "--out", path]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as maker:
            error = (maker.communicate()[1].strip().splitlines() or ["?"])[-1]  # Ctrl-C stops both; waited for
        if maker.returncode:
            fail(f"make_datasets.py could not make {env_id} ({error}); fix that, or pass --dataset-path FILE")
    if os.path.isfile(path) or task.source != "d4rl":
        return path
    url, folder = f"{D4RL_URL}/{task.dataset}.hdf5", os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    for stale in [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".partial")]:  # killed downloads'
        with contextlib.suppress(OSError):  # (torch.hub's temporary files); a live download writes every second
            os.remove(stale) if time.time() - os.path.getmtime(stale) > 600 else None
    try:  # through a temporary file, renamed once whole; then read: a cut file or an error page is not cached either
        torch.hub.download_url_to_file(url, path)
        h5py.File(path, "r").close()
    except (OSError, http.client.HTTPException) as e:
        with contextlib.suppress(OSError):
            os.remove(path)
        offline = f"with no network, put D4RL's file at {path} or pass --dataset-path FILE"
        fail(f"could not download {env_id} from {url} ({getattr(e, 'reason', e)}); {offline}")
    return path


def read_hdf5(path: str) -> dict:
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    try:
        with h5py.File(path, "r") as f:
            if missing := [k for k in keys[:4] if k not in f]:
                fail(f"{path}: not a D4RL dataset, it has no {', '.join(missing)}")
            return {k: f[k][:] for k in keys if k in f}
    except OSError as e:
        fail(f"{path}: cannot be read as HDF5 ({e}); if it is a cut download or dataset, delete it and run again")


def read_minari(env_id: str) -> dict:
    """The task's Minari dataset as D4RL arrays: downloaded on first use, read whole, a bad download not kept."""
    try:
        import minari
        from huggingface_hub import constants
    except ImportError:
        fail(f"{env_id} is a Minari dataset: pip install 'minari[hf]' (requirements.txt has it)")
    task, store = TASKS[env_id], minari.storage.get_dataset_path()  # $MINARI_DATASETS_PATH, or ~/.minari/datasets
    path = os.path.join(store, task.dataset)
    fetch, hub = not os.path.isdir(os.path.join(path, "data")), urllib.parse.urlparse(constants.ENDPOINT)
    what, fix = f"{task.dataset} for {env_id}", f"`python make_datasets.py fetch {env_id}`"
    prepare = f"on a machine with network run {fix} and copy {store} here, or pass --dataset-path FILE"
    if fetch:  # one quick look first: with no network, one clear line instead of the client's retries
        try:
            socket.create_connection((hub.hostname, hub.port or {"http": 80}.get(hub.scheme, 443)), 15).close()
        except OSError as e:
            fail(f"no network: could not reach {hub.hostname} ({e.strerror or e}) to download {what}; {prepare}")
    parts = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Minari prints its progress
            dataset = minari.load_dataset(task.dataset, download=fetch)
        for ep in dataset.iterate_episodes():
            obs = flatten_obs(task, ep.observations)
            for key, value in zip(parts, (obs[:-1], ep.actions, ep.rewards, ep.terminations, ep.truncations, obs[1:])):
                parts[key].append(value)
        counts = [sum(map(len, parts["actions"])), len(parts["actions"]), dataset.total_steps, dataset.total_episodes]
        if counts[:2] != counts[2:]:
            raise ValueError("{} steps in {} episodes, the metadata says {} in {}".format(*counts))
        return {key: np.concatenate(value) for key, value in parts.items()}
    except Exception as e:  # h5py, Minari, huggingface_hub and NumPy each raise their own kinds
        error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        if fetch:
            shutil.rmtree(path, ignore_errors=True)
            fail(f"could not download {what} from {hub.hostname} ({error}); nothing was kept; {prepare}")
        fail(f"{path}: an incomplete or corrupt Minari dataset ({error}); delete it and run {fix}")


def load_dataset(env_id: str, dataset_path: str | None = None) -> dict:
    """The task's dataset (or `dataset_path`, a D4RL-format HDF5 file) as float32 (s, a, r, s', terminal) and episode
    returns. Time-limit ends are not terminal; without `next_observations` s' is the next row (as in d4rl's loader)."""
    if dataset_path is not None and not os.path.isfile(dataset_path):
        fail(f"--dataset-path {dataset_path}: no such file")
    minari_data = dataset_path is None and TASKS[env_id].source == "minari"
    name = TASKS[env_id].dataset if minari_data else dataset_path or dataset_file(env_id)
    data = read_minari(env_id) if minari_data else read_hdf5(name)
    try:  # copy=False: a 2M-transition dataset is ~340 MB, so arrays already in float32 are not copied again.
        obs, actions, rewards = (data[k].astype(np.float32, copy=False) for k in ("observations", "actions", "rewards"))
        next_obs = data.get("next_observations", obs).astype(np.float32, copy=False)  # without them: shifted below
        terminals = data["terminals"].astype(bool).reshape(-1)
        timeouts = data.get("timeouts", np.zeros_like(terminals)).astype(bool).reshape(-1)
    except (TypeError, ValueError) as e:
        fail(f"{name}: its arrays are not all numbers ({e})")
    for key, value in dict(observations=obs, actions=actions, rewards=rewards, next_observations=next_obs).items():
        if not np.isfinite(value).all():  # every row, those dropped below too: the reward scale sums them all
            fail(f"{name}: {key} holds NaN or inf values")
    rewards = rewards.reshape(-1)
    if len({len(x) for x in (obs, actions, rewards, terminals, timeouts)}) > 1 or obs.ndim != 2 or actions.ndim != 2:
        fail(f"{name}: observations, actions, rewards, terminals and timeouts differ in length or shape")
    # Episode returns of the behaviour policy (IQL scales locomotion rewards by their range; also a sanity check).
    starts = np.flatnonzero((terminals | timeouts)[:-1]) + 1  # the last row ends an episode, cut or not
    episode_returns = np.array([segment.sum() for segment in np.split(rewards, starts)])
    if "next_observations" not in data:
        keep = np.flatnonzero(~timeouts[:-1])  # the rows whose next row is of the same episode
        obs, actions, rewards, terminals, next_obs = (x[keep] for x in (obs, actions, rewards, terminals, obs[1:]))
    arrays = dict(observations=obs, actions=actions, rewards=rewards, next_observations=next_obs)
    return dict(**arrays, terminals=terminals.astype(np.float32), episode_returns=episode_returns)


class ReplayBuffer:
    """D, then the online transitions, preallocated on the device (taken out of `data` one array at a time)."""

    KEYS = ("obs", "actions", "rewards", "next_obs", "dones")  # its arrays; from D4RL's keys of the same order

    def __init__(self, data: dict, capacity: int, device: torch.device):
        self.size = self.n_offline = len(data["rewards"])
        self.count = torch.tensor(self.size, device=device)  # the size on the device, which sample() draws from
        for key, d4rl_key in zip(self.KEYS, ("observations", "actions", "rewards", "next_observations", "terminals")):
            array = data.pop(d4rl_key)  # out of `data` before the next one is copied: the host holds it once
            setattr(self, key, torch.empty((capacity, *array.shape[1:]), dtype=torch.float32, device=device))
            getattr(self, key)[: self.size] = torch.as_tensor(array, device=device)

    def add(self, obs, action, reward, next_obs, done):
        i, self.size = self.size, self.size + 1
        self.obs[i], self.actions[i], self.next_obs[i] = torch.as_tensor(obs), action, torch.as_tensor(next_obs)
        self.rewards[i], self.dones[i] = float(reward), float(done)
        self.count += 1  # in place: the updates (a CUDA graph among them) read this tensor

    def online_part(self, n_offline: int) -> dict:
        # clone: a slice shares the whole buffer's storage, and torch.save would write all of it (the offline data too)
        return {key: getattr(self, key)[n_offline : self.size].clone().cpu() for key in self.KEYS}

    def restore_online_part(self, part: dict):
        start, self.size = self.size, self.size + len(part["rewards"])
        for key, value in part.items():
            getattr(self, key)[start : self.size] = value.to(self.obs.device)
        self.count += self.size - start

    def sample(self, batch_size: int, online_fraction: float | None = None):
        """Uniform, or round(F * batch) online rows with `online_fraction` F (RLPD: 0.5), on the device: no sync."""
        bits = torch.randint(0, 2**62, (batch_size,), device=self.obs.device)  # modulo a size: bias < size / 2^62
        if online_fraction is None:
            idx = bits % self.count
        else:
            n_online, n_new = round(online_fraction * batch_size), self.count - self.n_offline
            idx, online = bits % self.n_offline, self.n_offline + bits[:n_online] % n_new.clamp(min=1)
            idx[:n_online] = torch.where(n_new > 0, online, idx[:n_online])
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]


def read_flags(args):
    """The run's flags (with --resume, the stopped run's own) and the checkpoint it resumes; Ctrl-C: one line."""
    signal.signal(signal.SIGINT, lambda *_: sys.exit(print("interrupted before training", file=sys.stderr) or 130))
    resumed = read_checkpoint(args.resume, "--resume") if args.resume else None
    if resumed:  # a resumed run is the same run: its own flags, its own directory
        given, default = vars(args), vars(type(args)())
        try:
            args = type(args)(**{**resumed["args"], "resume": resumed["path"]})
        except TypeError:
            fail(f"--resume {resumed['path']}: another script's run ({resumed['args']['exp_name']}); resume it there")
        if ignored := [k for k, v in given.items() if k != "resume" and v not in (default[k], getattr(args, k))]:
            print(f"--resume keeps its flags; ignored: --{' --'.join(ignored)}".replace("_", "-"), file=sys.stderr)
    if args.env_id not in TASKS:
        close = difflib.get_close_matches(args.env_id, list(TASKS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see --help for the known tasks"
        fail(f"unknown --env-id {args.env_id}{hint}")
    return args, resumed


def setup(args, method_checks: dict) -> tuple:
    """The flags checked (shared, then `method_checks`), the dataset, seeding, the device and the environment."""
    flag, floats = lambda name: "--" + name.replace("_", "-"), {k: v for k, v in vars(args).items() if type(v) is float}
    checks = {f"{flag(k)} must be a finite number": bool(np.isfinite(v)) for k, v in floats.items()}
    checks.update({f"{flag(k)} must be > 0": v > 0 for k, v in floats.items() if k.endswith(("lr", "rate", "tau"))})
    minima = dict(offline_steps=0, online_steps=0, eval_freq=1, eval_episodes=1, log_freq=1, checkpoint_every=0)
    minima.update(snapshot_every=0, batch_size=1, block=1, seed=0, gamma=0)
    checks.update({f"{flag(k)} must be >= {v}": getattr(args, k) >= v for k, v in minima.items()})
    maxima = dict(gamma=1, tau=1, seed=2**32 - 1)
    checks.update({f"{flag(k)} must be <= {v}": getattr(args, k) <= v for k, v in maxima.items()})
    checks["--save-offline must name a file, not a folder"] = not os.path.isdir(args.save_offline or "")
    cuda = torch.cuda.is_available() and args.cuda
    checks.update(method_checks, **{"--cudagraphs needs a CUDA device (and --cuda)": cuda or not args.cudagraphs})
    for message in (message for message, ok in checks.items() if not ok):
        fail(message)
    try:  # --save-offline's folder made now, not after the pretraining it is to keep
        os.makedirs(os.path.dirname(os.path.abspath(args.save_offline or ".")), exist_ok=True)
    except OSError as e:
        fail(f"--save-offline {args.save_offline}: its folder cannot be made ({e.strerror})")
    data = load_dataset(args.env_id, args.dataset_path)
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device, env = torch.device("cuda" if cuda else "cpu"), make_env(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        sizes = f"{data['observations'].shape[1]}-d observations and {data['actions'].shape[1]}-d actions"
        fail(f"dataset has {sizes}; {args.env_id} needs {obs_dim} and {act_dim}")
    if args.batch_size > len(data["rewards"]):
        fail(f"--batch-size {args.batch_size} is larger than the dataset ({len(data['rewards'])} transitions)")
    env.action_space.seed(args.seed)
    return device, data, env


def maybe_compile(fn, args):
    """`fn` as the loop calls it: eager by default (the reference, and what --cudagraphs alone records); with --compile,
    traced whole (forward, backward, the optimiser's step) into one graph returning detached outputs, no break; where
    this torch cannot trace `fn` whole (it raises before running any of it), it says so once and `fn` runs eagerly."""
    if not args.compile:
        return fn
    detached = lambda *x: torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, fn(*x))  # noqa: E731
    detached.__code__ = detached.__code__.replace(co_name=fn.__name__)  # its own code: dynamo caches per code object
    graph = [torch._dynamo.config.patch(trace_autograd_ops=True)(torch.compile(detached, fullgraph=True))]

    def graph_or_eager(*x):
        with contextlib.suppress(torch._dynamo.exc.TorchDynamoException):
            return graph[-1](*x)
        sys.stderr.write(f"--compile: torch {torch.__version__} cannot trace {fn.__name__} whole: it runs eagerly\n")
        return graph.append(fn) or fn(*x)

    return graph_or_eager


def block_runner(train_step, args):
    """`train_step` (one step's updates, on batches it draws) as `updates(n, *inputs)`: n steps per call, the last's
    outputs returned: a loop, or with --cudagraphs CUDA graphs of --block steps and of one step (replayed n times for
    another n), per bool and int inputs, recorded after a warm-up (whole-network capture; a compile there: an error)."""
    loop = lambda n, *inputs: [train_step(*inputs) for _ in range(n)][-1]  # noqa: E731
    if not args.cudagraphs:
        return loop
    graphs, floats, calls, pool = {}, {}, {}, torch.cuda.graph_pool_handle()

    def updates(n, *inputs):
        if n not in (1, args.block):  # a remainder at a log, evaluation or checkpoint step: n one-step replays
            return [updates(1, *inputs) for _ in range(n)][-1]
        key = (n, *(type(x) if isinstance(x, float) else x for x in inputs if isinstance(x, (bool, int, float))))
        inputs = [(floats[i] if i in floats else floats.setdefault(i, torch.zeros((), device="cuda"))).fill_(x)
                  if isinstance(x, float) else x for i, x in enumerate(inputs)]  # fmt: skip
        if key in graphs:
            graphs[key].replay()
            return torch.utils._pytree.tree_map_only(torch.Tensor, lambda x: x.detach().clone(), graphs[key].outputs)
        calls[key] = calls.get(key, 0) + 1
        (side := torch.cuda.Stream()).wait_stream(torch.cuda.current_stream())  # warm-up on a side stream
        with torch.cuda.stream(side):
            outputs = loop(n, *inputs)  # the call's n steps (a compiled update's first call compiles it)
        torch.cuda.current_stream().wait_stream(side)
        if calls[key] == 3:  # recorded at its third call, warmed up (a compiled update compiles at its first)
            graphs[key] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[key], pool=pool), torch.compiler.set_stance("fail_on_recompile"):
                graphs[key].outputs = loop(n, *inputs)  # n more steps, recorded, not run (one pool: outputs copied)
        return outputs

    return updates


def adam(params, lr: float, args) -> torch.optim.Optimizer:  # --compile traces GraphAdam
    fused = dict(fused=True, capturable=args.cudagraphs)  # torch.optim's kernels; capturable: a CUDA graph replays them
    return GraphAdam(params, lr) if args.compile else torch.optim.Adam(params, lr, **fused)


class GraphAdam(torch.optim.Adam):
    """torch.optim.Adam in operations torch.compile traces (its step and zero_grad end a graph); the same state."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr, capturable=True)  # capturable: load_state_dict keeps `step` on the device
        for param in (param for group in self.param_groups for param in group["params"]):
            zeros = torch.zeros_like(param)
            self.state[param] = dict(step=torch.zeros((), device=param.device), exp_avg=zeros, exp_avg_sq=zeros.clone())

    def zero_grad(self, set_to_none: bool = True):
        for param in (param for group in self.param_groups for param in group["params"]):
            param.grad = None

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            for param in (param for param in group["params"] if param.grad is not None):
                state = self.state[param]
                state["step"] += 1
                state["exp_avg"].lerp_(param.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                bias_correction1, bias_correction2 = (1 - beta ** state["step"].double() for beta in (beta1, beta2))
                denom = state["exp_avg_sq"].sqrt() / bias_correction2.sqrt() + eps
                param.sub_(state["exp_avg"] / denom * (lr / bias_correction1))

    step.hooked = True  # torch.optim would wrap step() in a profiler range, which compiled code drops with a warning


class RunRecords:
    """What a run writes: episodes, losses, speed (TensorBoard, wandb), summary.json, the divergence guard, progress."""

    def record_episode(self, step: int, info: dict):
        """A training episode that ended with the env step of `step`: its return, the behaviour's quality, logged."""
        if "episode" in info:
            episode = {"step": step, "return": float(info["episode"]["r"]), "length": int(info["episode"]["l"])}
            episode["normalized_score"] = normalized_score(self.args.env_id, episode["return"])
            for name in ("return", "length"):
                self.writer.add_scalar(f"charts/episodic_{name}", episode[name], step)
            self.summary["train_episodes"].append(episode)

    def log(self, step: int, losses: dict, scalars: dict | None = None, now: bool = False):
        """After the updates up to `step`: the divergence guard, every --log-freq steps (or `now`) the losses, `scalars`
        and the speed to TensorBoard (the losses stay on the device until then: the updates never wait for the host)."""
        args, bar = self.args, self.progress
        bar.update(step - (args.offline_steps if step > args.offline_steps else 0) - bar.n)  # the phase's steps
        self.healthy &= torch.stack([value.detach().float() for value in losses.values()]).isfinite().all()
        self.checkpoint_due |= args.checkpoint_every > 0 and step % args.checkpoint_every == 0
        due = step % args.log_freq == 0 or step % args.eval_freq == 0 or self.checkpoint_due or self.interrupted
        if due and not self.healthy:  # stop: the last checkpoint, if any, is the last good one
            diverged(", ".join(name for name, value in losses.items() if not value.isfinite().all()), step, self.dir)
        if step % args.log_freq == 0 or now:
            for name, value in {**(scalars or {}), **losses}.items():
                self.writer.add_scalar(f"losses/{name}", value.item() if torch.is_tensor(value) else value, step)
            self.writer.add_scalar("charts/SPS", int((step - self.start_step) / (time.time() - self.start_time)), step)
            if bar.n == args.log_freq and (hours := bar.format_dict["elapsed"] * bar.total / bar.n / 3600) > 12:  # once
                bar.write(f"warning: {bar.desc} phase: {hours:.0f} hours at this pace (--{bar.desc}-steps)", sys.stderr)

    def write_summary(self):
        self.summary["wall_s"] = self.wall_before + time.time() - self.start_time  # over all its resumptions
        with open(f"{self.summary_path}.tmp{os.getpid()}", "w") as f:  # then renamed: never half a summary
            json.dump(self.summary, f, indent=2)
        os.replace(f"{self.summary_path}.tmp{os.getpid()}", self.summary_path)

    def finish(self):
        self.progress.close()
        save_checkpoint(os.path.join(self.dir, "final.pt"), self.total_steps, self)
        self.summary["complete"] = True
        self.write_summary()
        at = {e["step"]: e["normalized_score"] for e in self.summary["evaluations"]}  # the switch's, if it has one
        switch = f"{at[self.args.offline_steps]:.1f} at the switch, " if self.args.offline_steps in at else ""
        scores = [episode["normalized_score"] for episode in self.summary["train_episodes"]]
        collected = f"; its {len(scores)} training episodes scored {np.mean(scores):.1f} on average" if scores else ""
        logs = f"logs in {self.dir} (tensorboard --logdir {os.path.dirname(self.dir) or '.'})"
        print(f"{self.name}: normalized score {switch}{self.score:.1f} at the end{collected}\n{logs}")
        for resource in (self.env, *self.eval_envs, self.writer):
            resource.close()


class RunSchedule:
    """What falls due at a step: updates (a block per call), evaluations, saves; after Ctrl-C or SIGTERM, save, exit."""

    def steps_to_update(self, step: int, now: bool) -> int:
        """How many steps' updates to run at `step`: offline they wait to run as one call (see `block_runner`) every
        --block steps, or sooner where the bookkeeping of `step` needs them; online, or `now`, at each step (1)."""
        args, self.pending = self.args, self.pending + 1
        every = (args.log_freq, args.eval_freq, args.checkpoint_every, args.snapshot_every)
        due = now or self.pending >= args.block or self.interrupted or any(f and step % f == 0 for f in every)
        due = due or step in (args.offline_steps, self.total_steps, *args.snapshot_steps)
        n, self.pending = (self.pending, 0) if due else (0, self.pending)
        return n

    def evaluate_if_due(self, step: int, **extra):
        """Every --eval-freq steps, at the switch and at the end: score the policy (`extra`: for summary.json)."""
        args = self.args
        if step % args.eval_freq != 0 and step not in (args.offline_steps, self.total_steps):
            return
        result = self.evaluate_policy(self.agent, self.eval_envs, args.env_id, args.seed + 10_000)
        extra = {name: value.item() if torch.is_tensor(value) else value for name, value in extra.items()}
        phase = "online" if step > args.offline_steps else "offline"
        self.summary["evaluations"].append({"step": step, "phase": phase, **result, **extra})
        self.summary["final_normalized_score"] = self.score = result["normalized_score"]
        self.write_summary()
        for name, value in ((name, value) for name, value in result.items() if value is not None):
            self.writer.add_scalar(f"eval/{name}", value, step)
        self.progress.set_postfix(score=f"{self.score:.1f}")

    def save_if_due(self, step: int, between_episodes: bool):
        """The pretrained model at the switch, snapshots, and every --checkpoint-every steps the whole run (online at
        the end of the episode then, so that a resumed run replays exactly); after Ctrl-C or SIGTERM, save and exit."""
        args = self.args
        if step == args.offline_steps:
            save_checkpoint(args.save_offline or os.path.join(self.dir, "offline.pt"), step, self)
        if step == args.offline_steps < self.total_steps:  # the online phase: a bar of its own
            self.progress.set_description("online", refresh=False)
            self.progress.reset(args.online_steps)
        if step in args.snapshot_steps or (args.snapshot_every and step % args.snapshot_every == 0):  # for premise.py
            save_checkpoint(os.path.join(self.dir, "snapshots", f"step{step:07d}.pt"), step, self)
        if (self.checkpoint_due and between_episodes) or self.interrupted:
            self.write_summary()  # its wall-clock, into the checkpoint too
            run = {"summary": self.summary, "rng": rng_state(self.env), "episode_over": step > args.offline_steps}
            run["online_buffer"] = self.rb.online_part(self.n_offline)
            save_checkpoint(self.checkpoint_path, step, self, run)
            self.checkpoint_due = False
        if self.interrupted:
            self.progress.close()
            resume = f"python {sys.argv[0]} --resume {self.checkpoint_path}"
            sys.exit(print(f"interrupted at step {step}; continue with: {resume}", file=sys.stderr) or 130)


class Run(RunRecords, RunSchedule):
    """A run set up: directory, logs, evaluation env, progress, Ctrl-C and SIGTERM; --resume's run, loaded whole."""

    def __init__(self, args, resumed: dict | None, agent, env, rb, evaluate):
        self.args, self.agent, self.env, self.rb, self.evaluate_policy = args, agent, env, rb, evaluate
        self.name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}__{os.getpid()}"  # unique here
        self.name = resumed["summary"]["run_name"] if resumed else self.name
        self.dir = os.path.dirname(resumed["path"]) if resumed else os.path.join(args.output_dir, self.name)
        self.checkpoint_path, self.summary_path = (os.path.join(self.dir, f) for f in ("checkpoint.pt", "summary.json"))
        try:  # purge_step: a resumed run drops the events logged after its checkpoint
            os.makedirs(self.dir, exist_ok=bool(resumed))
            tempfile.TemporaryFile(dir=self.dir).close()  # writable? (TensorBoard's thread would fail with a traceback)
            self.writer = SummaryWriter(self.dir, purge_step=resumed["step"] + 1 if resumed else None)
        except OSError as e:
            fail(f"cannot write the run to {self.dir} ({e.strerror}); pass --output-dir DIR")
        for flag, package in {"--track": "wandb", "--capture-video": "moviepy"}.items():  # moviepy: for RecordVideo
            if getattr(args, flag[2:].replace("-", "_")) and importlib.util.find_spec(package) is None:
                fail(f"{flag} needs {package}: pip install {package}")
        if args.track:
            project = dict(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), save_code=True)
            importlib.import_module("wandb").init(name=self.name, sync_tensorboard=True, **project)
        table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        videos = os.path.join("videos", self.name) if args.capture_video else None  # each evaluation's first episode
        self.eval_envs = [make_env(args.env_id, videos if i == 0 else None) for i in range(args.eval_episodes)]
        self.total_steps, self.n_offline = args.offline_steps + args.online_steps, rb.size
        self.start_step = resumed["step"] if resumed else args.offline_steps if args.load_offline else 0
        new = dict(args=vars(args), run_name=self.name, evaluations=[], train_episodes=[], final_normalized_score=None)
        new.update(complete=False, wall_s_since_step=self.start_step)  # the step wall_s counts from (its pace)
        self.summary = {**new, **(resumed["summary"] if resumed else {}), "device": str(agent.device)}  # the one used
        here, platforms = platform_info(agent.device), self.summary.setdefault("platforms", [])
        last = {key: value for key, value in (platforms or [{}])[-1].items() if key != "from_step"}
        if last and {**last, "host": None} != {**here, "host": None}:  # resumed elsewhere
            elsewhere = "another CPU, GPU or library build than it last ran with: it carries on, not bitwise alike"
            print(f"{self.name}: resumed with {elsewhere} (summary.json lists its platforms)", file=sys.stderr)
        if last != here:  # each stretch of the run, from the step where it started
            platforms.append({"from_step": self.start_step, **here})
        self.wall_before = self.summary.get("wall_s", 0.0)
        self.obs = torch.as_tensor(env.reset(seed=args.seed)[0], dtype=torch.float32, device=agent.device)  # on device
        if resumed:  # last, after everything that draws random numbers while setting up
            load_model(resumed, args, agent, "--resume")
            rb.restore_online_part(resumed["online_buffer"])
            set_rng_state(env, resumed["rng"])
            self.obs = None if resumed["episode_over"] else self.obs
        self.healthy, self.checkpoint_due, self.interrupted = torch.tensor(True, device=agent.device), False, []
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a scheduler's stop: finish the step, save, exit
            signal.signal(sig, lambda *_: self.interrupted.append(True))
        self.start_time, self.score, self.pending = time.time(), float("nan"), 0  # pending: see steps_to_update
        online = self.start_step >= args.offline_steps  # the bar counts the phase being run, and its time left
        bar = dict(total=args.online_steps if online else args.offline_steps, desc="online" if online else "offline")
        self.progress = tqdm(initial=self.start_step - online * args.offline_steps, unit="step", file=sys.stderr, **bar)
        self.progress.mininterval = 1 if sys.stderr.isatty() else 30  # seconds between refreshes (in a log: rarely)
        if self.start_step == args.offline_steps and args.load_offline and not resumed:  # the loaded model, scored once
            self.evaluate_if_due(self.start_step)


def rng_state(env) -> dict:
    """Every random stream the run draws from, so that a resumed run draws what the uninterrupted one would."""
    numpy, env_state = np.random.get_state(), env.unwrapped.np_random.bit_generator.state
    numpy = (numpy[0], torch.as_tensor(numpy[1].astype(np.int64)), *numpy[2:])  # tensors: weights_only loads them
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return dict(python=random.getstate(), numpy=numpy, torch=torch.get_rng_state(), cuda=cuda, env=env_state)


def set_rng_state(env, state: dict):
    random.setstate(state["python"])
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    torch.cuda.set_rng_state_all(state["cuda"])  # [] where the run had no CUDA device: nothing to set
    env.unwrapped.np_random.bit_generator.state = state["env"]


def agent_state(agent) -> dict:
    """The agent's networks and optimisers, by the names checkpoints keep them under (its attributes' names)."""
    return {name: part for name, part in vars(agent).items() if isinstance(part, (nn.Module, torch.optim.Optimizer))}


def save_checkpoint(path: str, step: int, run, resumable: dict | None = None):
    """`run`'s agent (and `resumable`'s state) to a temporary name, then renamed: never half, never a non-finite one."""
    args, agent = run.args, run.agent
    state = {"algorithm": ALGORITHM, "env_id": args.env_id, "step": step, "args": asdict(args), **(resumable or {})}
    if not all(p.isfinite().all() for part in agent_state(agent).values() for p in getattr(part, "parameters", list)()):
        diverged("network weights", step, run.dir)  # never saved, nor the run marked complete
    state.update({name: part.state_dict() for name, part in agent_state(agent).items()})
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(state, f"{path}.tmp{os.getpid()}")
        os.replace(f"{path}.tmp{os.getpid()}", path)
    except (OSError, RuntimeError) as e:  # a full disk, a folder that cannot be written: torch raises either
        with contextlib.suppress(OSError):
            os.remove(f"{path}.tmp{os.getpid()}")
        kept = f"the last good one is still {path}" if os.path.isfile(path) else "nothing was written there"
        fail(f"could not write {path} ({str(e).splitlines()[0][:120]}); {kept}")


def diverged(what: str, step: int, run_dir: str):
    """The divergence guard's stop (exit 3): a non-finite loss or network is never saved, nor a run marked complete."""
    kept = os.path.join(run_dir, "checkpoint.pt")
    kept = f"the last good checkpoint is {kept}" if os.path.isfile(kept) else "no checkpoint was written before it"
    error = f"\nerror: training diverged: non-finite {what or 'values'} by step {step}; {kept}"
    sys.exit(print(f"{error} (lower the learning rate or check the dataset)", file=sys.stderr) or 3)


def read_checkpoint(path: str, flag: str) -> dict:
    """A checkpoint of this script's algorithm (see ALGORITHM); a run directory stands for its `checkpoint.pt`."""
    path = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{flag} {path}: cannot be read, truncated or not a checkpoint ({type(e).__name__}); use an earlier one")
    if not isinstance(state, dict) or state.get("algorithm") != ALGORITHM:
        fail(f"{flag} {path}: written by another script (needs {' or '.join(SCRIPTS)})")
    if flag == "--resume" and "rng" not in state:
        fail(f"--resume {path}: a model-only checkpoint; pass it to --load-offline instead")
    return {**state, "path": path}


def load_model(source, args, agent, flag: str = "--load-offline") -> int:
    """A saved model (a path, or a checkpoint read) into `agent`; its step. A model-only file: fresh optimisers."""
    state = read_checkpoint(source, flag) if isinstance(source, str) else source
    where, trained_on = f"{flag} {state['path']}", state["env_id"]
    if DATASET_OF.get(trained_on, trained_on) != DATASET_OF[args.env_id]:  # a model serves every task with its data
        fail(f"{where}: trained on {trained_on}, not {args.env_id}; pass --env-id {trained_on}")
    parts = agent_state(agent)
    fresh = [name for name, part in parts.items() if isinstance(part, torch.optim.Optimizer) and name not in state]
    try:
        for name in [name for name in parts if name not in fresh]:
            parts[name].load_state_dict(state[name])
    except (KeyError, RuntimeError, ValueError) as e:
        fail(f"{where}: does not fit these networks ({str(e).splitlines()[0]})")
    if fresh:
        print(f"{where}: a model without optimiser state; {', '.join(fresh)} start afresh", file=sys.stderr)
    return state["step"]


def platform_info(device: torch.device) -> dict:
    """What a run's numbers depend on beyond flags and seed (rounding differs between CPUs and library builds)."""
    names = open("/proc/cpuinfo").read().split("model name")[1:] if os.path.isfile("/proc/cpuinfo") else []
    cpu = names[0].split(":", 1)[1].splitlines()[0].strip() if names else platform.processor() or platform.machine()
    versions = {package: importlib.metadata.version(package) for package in ("torch", "numpy", "gymnasium", "mujoco")}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"host": platform.node(), "cpu": cpu, "gpu": gpu, "python": platform.python_version(), **versions}


if __name__ == "__main__":
    train(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
