"""O3F on top of LAPO, in one file: the paper's main method.

Offline: LAPO (Chen et al., NeurIPS 2022; its final public code, pcchenxi/LAPO-offlienRL): a CVAE over the data's
actions, weighted by a binary expectile of the advantage, and a deterministic latent policy acting through its
decoder; with the O3F paper's change, 5 Q-functions trained REDQ-style (a random subset of them forms each target).
Online: the same LAPO update, `--utd` critic updates per environment step, while acting with O3F's optimistic action
selection ("Fine-tuning offline policies with optimistic action selection", Algorithm 1 and Eq. 2);
`--n-candidates 1` is the paper's "LAPO + noise" baseline of Figure 5.
Beside o3f_iql.py (`diff o3f_iql.py o3f_lapo.py`), O3F itself differs in two ways: the candidates are drawn around
LAPO's deterministic action (IQL's: a sample of its Gaussian), and scored in LAPO's normalised units. The rest is
LAPO's: --utd critic updates per online step (IQL: one), targets from a random subset of 2 of the 5 critics (IQL:
the min over all 5), and `--expectile` is LAPO's CVAE weight, not IQL's value expectile.
Reads top to bottom: arguments, networks, the LAPO updates, the action selection, then `train`, whose `ALGO LOGIC`
lines are Algorithm 1; the plumbing (tasks and data, buffer, bookkeeping) is one block at the end.
"""

import contextlib
import copy
import difflib
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

ALGORITHM, SCRIPTS = "lapo", ("o3f_lapo.py",)  # checkpoints name their algorithm, and load into these scripts


@dataclass
class Args:
    # LAPO
    batch_size: int = 512
    """the batch size of each update"""
    learning_rate: float = 2e-4
    """the learning rate of the critics, the CVAE and the latent policy"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """the Polyak averaging rate of the target networks"""
    num_critics: int = 5
    """the number of Q-functions in the ensemble (the paper uses 5)"""
    num_min_q: int = 2
    """the size of the random subset of target Q-functions that forms each target (REDQ)"""
    utd: int = 20
    """critic updates per environment step online (the CVAE and the latent policy update once per step)"""
    doubleq_min: float | None = None
    """m in mixQ = m * min + (1 - m) * max over the subset (None: the domain's, 0.7 on antmaze, 1.0 elsewhere)"""
    expectile: float = 0.9
    """tau_e: the CVAE's weight where the advantage is positive (1 - tau_e elsewhere); LAPO's binary "expectile",
    not IQL's value expectile"""
    kl_beta: float = 1.0
    """the weight of the KL term of the CVAE loss"""
    max_latent_action: float = 2.0
    """the latent policy's actions lie in [-max_latent_action, max_latent_action]"""

    # O3F
    n_candidates: int = 100
    """N, the number of candidate actions scored at every online step (1: the paper's "LAPO + noise" baseline)"""
    sigma: float | None = None
    """the standard deviation of the candidates around the policy's action, in action units (None: the
    domain's, 0.2 locomotion, 0.05 antmaze and kitchen)"""
    omega: float = 0.0
    """the optimism weight on the ensemble's standard deviation in the score (0: mean Q only; 1: optimism)"""

    # The run: the task and its data, the schedule, logging, checkpoints, the device
    env_id: str = "embedded-halfcheetah-medium"
    """the task: a D4RL name ({halfcheetah,hopper,walker2d}-{random,medium,medium-replay,medium-expert,expert}-v2,
    antmaze-{umaze,umaze-diverse,medium-play,medium-diverse,large-play,large-diverse}-v2,
    kitchen-{complete,partial,mixed}-v0) or a dataset made here with no network (embedded-halfcheetah-medium,
    embedded-halfcheetah-medium-1m, embedded-halfcheetah-random, embedded-halfcheetah-random-1m (1M: D4RL's size),
    embedded-pointmaze-medium)"""
    dataset_path: str | None = None
    """a local D4RL-format HDF5 file to use instead of the task's own dataset"""
    offline_steps: int = 1_000_000
    """number of offline gradient steps (pretraining)"""
    online_steps: int = 500_000
    """number of online environment steps (fine-tuning; --utd critic updates and one actor update each)"""
    eval_freq: int = 5000
    """evaluate every this many steps (offline updates and online env steps alike)"""
    eval_episodes: int = 10
    """number of episodes per evaluation"""
    log_freq: int = 1000
    """write losses to TensorBoard every this many steps"""
    save_offline: str | None = None
    """save the pretrained model here at the end of the offline phase (default: `{run_dir}/offline.pt`)"""
    load_offline: str | None = None
    """skip pretraining and fine-tune this saved model (so O3F and the noise baseline start from the same one)"""
    checkpoint_every: int = 10_000
    """save the whole run to `{run_dir}/checkpoint.pt` every this many steps (online: at the episode's end); 0: never"""
    snapshot_steps: tuple[int, ...] = ()
    """also keep the model (as --load-offline reads it) at these steps, in `{run_dir}/snapshots/step{N}.pt`"""
    snapshot_every: int = 0
    """also keep the model every this many steps, in `{run_dir}/snapshots/`; 0: never"""
    resume: str | None = None
    """continue the run that saved this checkpoint (its `checkpoint.pt` or its run directory), with that run's flags"""
    compile: bool = False
    """if toggled, the update and the action selection run through torch.compile (compiles for ~10-60 s at the start)"""
    cudagraphs: bool = False
    """if toggled, the update and the action selection replay as CUDA graphs (compile's reduce-overhead mode; CUDA)"""
    exp_name: str = "o3f_lapo"
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


def domain_defaults(args: Args) -> Args:
    """The flags left at None take their per-domain values: LAPO's doubleq_min (its code: 0.7 on antmaze), and sigma
    (the O3F paper, section 5.3: 0.2 for locomotion, 0.05 for antmaze and kitchen)."""
    domain = TASKS[args.env_id].domain
    args.doubleq_min = (0.7 if domain == "antmaze" else 1.0) if args.doubleq_min is None else args.doubleq_min
    args.sigma = (0.2 if domain == "locomotion" else 0.05) if args.sigma is None else args.sigma
    return args


# ---------------------------------------------------------------------------------------------
# Networks (LAPO: three hidden layers of 256)
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


class Normalizer(nn.Module):
    """LAPO learns in z-normalised states and actions (the dataset's statistics); the buffer keeps raw ones."""

    def __init__(self, observations: np.ndarray, actions: np.ndarray):
        super().__init__()
        self.register_buffer("obs_mean", torch.as_tensor(observations.mean(0)))
        self.register_buffer("obs_std", torch.as_tensor(observations.std(0) + 1e-3))
        self.register_buffer("act_mean", torch.as_tensor(actions.mean(0)))
        self.register_buffer("act_std", torch.as_tensor(actions.std(0) + 1e-3))

    def obs(self, obs):
        return (obs - self.obs_mean) / self.obs_std

    def action(self, action):
        return (action - self.act_mean) / self.act_std

    def unnormalize_action(self, action):
        return action * self.act_std + self.act_mean


class EnsembleLinear(nn.Module):
    """m independent linear layers as one batched matmul: [m, batch, in] -> [m, batch, out]."""

    def __init__(self, num_members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = in_dim**-0.5  # nn.Linear's default initialisation, drawn independently for every member
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x, members=None):
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])  # only the chosen members' layers


class QEnsemble(nn.Module):
    """The critic ensemble {Q_j(s, a)}, j = 1..m, as one network with batched layers; returns a [m, batch] tensor
    (of the `members` only, if given: an index tensor).

    One matmul per layer for all m critics instead of one per critic: the same m independent MLPs, fewer calls.
    """

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int, hidden_dim: int = 256):
        super().__init__()
        self.num_critics = num_critics
        dims = [obs_dim + act_dim, hidden_dim, hidden_dim, hidden_dim, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(num_critics, d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:])
        )

    def forward(self, obs, act, members=None):
        x = torch.cat([obs, act], -1).expand(self.num_critics if members is None else len(members), -1, -1)
        for layer in self.layers[:-1]:
            x = layer(x, members).relu_()
        return self.layers[-1](x, members).squeeze(-1)


class ValueNetwork(nn.Module):
    def __init__(self, obs_dim: int):
        super().__init__()
        self.net = mlp(obs_dim, 1)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class CVAE(nn.Module):
    """LAPO's conditional VAE over the data's actions: encoder (s, a) -> z, decoder (s, z) -> a."""

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int):
        super().__init__()
        self.encoder = mlp(obs_dim + act_dim, 2 * latent_dim)  # mean and log-variance of z
        self.decoder = mlp(obs_dim + latent_dim, act_dim)  # linear output: actions are z-normalised

    def forward(self, obs, actions):
        mu, log_var = self.encoder(torch.cat([obs, actions], -1)).chunk(2, -1)
        z = mu + torch.exp(log_var / 2) * torch.randn_like(mu)
        return self.decode(obs, z), mu, log_var

    def decode(self, obs, z):
        return self.decoder(torch.cat([obs, z], -1))


class LatentPolicy(nn.Module):
    """The deterministic latent policy pi(s) = max_latent_action * tanh(.): where in the CVAE's latent space to act."""

    def __init__(self, obs_dim: int, latent_dim: int, max_latent_action: float):
        super().__init__()
        self.net = mlp(obs_dim, latent_dim)
        self.max_latent_action = max_latent_action

    def forward(self, obs):
        return self.max_latent_action * torch.tanh(self.net(obs))


class Agent:
    """LAPO's networks and their optimisers, which travel together, the value clamps and the action bounds
    (checkpoints name each part)."""

    def __init__(self, env: gym.Env, data: dict, v_min: float, v_max: float, args: Args, device: torch.device):
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        latent_dim = 2 * act_dim
        self.normalizer = Normalizer(data["observations"], data["actions"]).to(device)
        self.cvae = CVAE(obs_dim, act_dim, latent_dim).to(device)
        self.latent_policy = LatentPolicy(obs_dim, latent_dim, args.max_latent_action).to(device)
        self.qf = QEnsemble(obs_dim, act_dim, args.num_critics).to(device)
        self.vf = ValueNetwork(obs_dim).to(device)
        self.cvae_target, self.latent_policy_target, self.qf_target = (
            copy.deepcopy(self.cvae),
            copy.deepcopy(self.latent_policy),
            copy.deepcopy(self.qf),
        )
        for target in (self.cvae_target, self.latent_policy_target, self.qf_target):
            target.requires_grad_(False)  # moved by Polyak averaging only
        # Fused Adam: one kernel per step; compiled code fuses its own (capturable: state stays on the GPU for graphs).
        adam = dict(lr=args.learning_rate, fused=not (args.compile or args.cudagraphs), capturable=args.cudagraphs)
        self.cvae_optimizer = torch.optim.Adam(self.cvae.parameters(), **adam)
        self.policy_optimizer = torch.optim.Adam(self.latent_policy.parameters(), **adam)
        self.critic_optimizer = torch.optim.Adam([*self.qf.parameters(), *self.vf.parameters()], **adam)
        self.v_min, self.v_max, self.device = v_min, v_max, device
        self.low = torch.as_tensor(env.action_space.low, dtype=torch.float32, device=device)  # kitchen: float64 bounds
        self.high = torch.as_tensor(env.action_space.high, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------
# LAPO: losses and the two updates (critic; CVAE and latent policy)
# ---------------------------------------------------------------------------------------------
def expectile_weight(advantage: torch.Tensor, expectile: float) -> torch.Tensor:
    """LAPO's binary expectile weight: tau_e where the advantage is positive, 1 - tau_e elsewhere."""
    return torch.where(advantage > 0, expectile, 1.0 - expectile)


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, I)), per sample."""
    return -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)


def redq_target(qf_target, obs, actions, num_min_q: int, doubleq_min: float) -> torch.Tensor:
    """LAPO's mixQ = m * min + (1 - m) * max, over a fresh random subset of `num_min_q` target critics (REDQ)."""
    members = torch.randperm(qf_target.num_critics, device=obs.device)[:num_min_q]
    q = qf_target(obs, actions, members)
    return doubleq_min * q.min(0).values + (1.0 - doubleq_min) * q.max(0).values


def critic_update(agent: Agent, batch, args: Args) -> dict:
    """One step on every Q and on V: Q(s, a) -> r + gamma * V(s'), V(s) -> mixQ of the target policy's action."""
    obs, actions, rewards, next_obs, dones = batch
    obs, actions, next_obs = agent.normalizer.obs(obs), agent.normalizer.action(actions), agent.normalizer.obs(next_obs)
    with torch.no_grad():
        td_target = rewards + args.gamma * (1.0 - dones) * agent.vf(next_obs)
        z = agent.latent_policy_target(obs)
        z = z + (0.1 * torch.randn_like(z)).clamp(-0.2, 0.2)  # target policy smoothing, in latent space
        target_v = redq_target(agent.qf_target, obs, agent.cvae_target.decode(obs, z), args.num_min_q, args.doubleq_min)
        target_v = target_v.clamp(agent.v_min, agent.v_max)
    qf_loss = ((agent.qf(obs, actions) - td_target) ** 2).mean(1).sum()
    vf_loss = ((agent.vf(obs) - target_v) ** 2).mean()
    agent.critic_optimizer.zero_grad(set_to_none=True)
    (qf_loss + vf_loss).backward()
    agent.critic_optimizer.step()
    with torch.no_grad():
        for param, target_param in zip(agent.qf.parameters(), agent.qf_target.parameters()):
            target_param.lerp_(param, args.tau)
    return {"qf_loss": qf_loss, "vf_loss": vf_loss}


def actor_update(agent: Agent, batch, args: Args) -> dict:
    """One step on the advantage-weighted CVAE, then on the latent policy through the target decoder."""
    obs, actions, rewards, next_obs, dones = batch
    obs, actions, next_obs = agent.normalizer.obs(obs), agent.normalizer.action(actions), agent.normalizer.obs(next_obs)
    with torch.no_grad():
        next_actions = agent.cvae_target.decode(next_obs, agent.latent_policy_target(next_obs))
        next_q = redq_target(agent.qf_target, next_obs, next_actions, args.num_min_q, args.doubleq_min)
        advantage = rewards + args.gamma * (1.0 - dones) * next_q - agent.vf(obs)
        weights = expectile_weight(advantage, args.expectile)
    # The CVAE models the data's actions, weighted towards the better ones (binary expectile of A).
    reconstruction, mu, log_var = agent.cvae(obs, actions)
    cvae_loss = (
        weights * (((reconstruction - actions) ** 2).sum(-1) + args.kl_beta * kl_divergence(mu, log_var))
    ).mean()
    agent.cvae_optimizer.zero_grad(set_to_none=True)
    cvae_loss.backward()
    agent.cvae_optimizer.step()
    # The latent policy maximises Q of the decoded action; the bounded latent keeps it near the data.
    policy_loss = -agent.qf(obs, agent.cvae_target.decode(obs, agent.latent_policy(obs))).mean()
    agent.policy_optimizer.zero_grad(set_to_none=True)
    policy_loss.backward()
    agent.policy_optimizer.step()
    with torch.no_grad():
        for net, target in ((agent.cvae, agent.cvae_target), (agent.latent_policy, agent.latent_policy_target)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.lerp_(param, args.tau)
    return {"cvae_loss": cvae_loss, "policy_loss": policy_loss, "advantage_weight": weights.mean()}


def reward_transform(env_id: str, rewards: np.ndarray, gamma: float):
    """LAPO's reward convention and value clamps: antmaze r * 100 with V in [0, 100]; elsewhere
    r / max(r) with V in [min(r), max(r)] / (1 - gamma), both over the dataset's scaled rewards."""
    if TASKS[env_id].domain == "antmaze":
        return (lambda r: r * 100.0), 0.0, 100.0
    scale = float(rewards.max()) if rewards.max() > 0 else float(np.abs(rewards).max() or 1.0)
    return (lambda r: r / scale), float(rewards.min()) / scale / (1 - gamma), float(rewards.max()) / scale / (1 - gamma)


# ---------------------------------------------------------------------------------------------
# Acting: O3F's optimistic action selection online, the deterministic policy for evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def select_action(agent: Agent, obs: torch.Tensor, args: Args) -> torch.Tensor:
    """O3F's optimistic action selection for one state `obs` of shape [1, obs_dim].

    O3F changes only the action executed online, so only the data collected: the updates (line 7) train on the
    buffer as before, and evaluations act with the deterministic policy; neither sees the candidates. LAPO's policy
    is deterministic, so the candidates are drawn around its action a = D(s, pi(s)). They are drawn in the
    environment's units (sigma is in action units, as for IQL) and kept inside the bounds, then normalised as the
    critics were trained. omega 0 scores by the ensemble's mean alone; omega > 0 adds optimism where they disagree.
    With one candidate and omega 0 it is the paper's "LAPO + noise" baseline: a + N(0, sigma^2), nothing selected."""
    a = policy_action(agent, obs)  # Algorithm 1, line 2: a = pi(s)
    # Line 3: N candidates c_i ~ N(a, sigma^2), kept inside the action bounds.
    noise = args.sigma * torch.randn(args.n_candidates, a.shape[-1], device=a.device)
    candidates = (a + noise).clamp(agent.low, agent.high)
    q = agent.qf(agent.normalizer.obs(obs).expand(args.n_candidates, -1), agent.normalizer.action(candidates))  # [m, N]
    score = q.mean(0) + args.omega * q.std(0, unbiased=False)  # Eq. 2: f(s, c) = Q_mean + omega * Q_std
    return candidates[score.argmax()]  # line 4: execute the best-scoring candidate


@torch.no_grad()
def policy_action(agent: Agent, obs: torch.Tensor) -> torch.Tensor:
    """LAPO's action a = D_target(s, pi(s)), in the environment's units, for raw states `obs` [batch, obs_dim]; not
    clamped to the bounds (evaluations execute the policy's own action)."""
    obs = agent.normalizer.obs(obs)
    return agent.normalizer.unnormalize_action(agent.cvae_target.decode(obs, agent.latent_policy(obs)))


# ---------------------------------------------------------------------------------------------
# Training: pretraining offline, then Algorithm 1 online, in one loop
# ---------------------------------------------------------------------------------------------
def train(args: Args):
    args, resumed = read_flags(args)
    args = domain_defaults(args)
    check_flags(
        args,
        {
            "--num-critics must be >= 1": args.num_critics >= 1,
            "--num-min-q must be between 1 and --num-critics": 1 <= args.num_min_q <= args.num_critics,
            "--utd must be >= 1": args.utd >= 1,
            "--doubleq-min must be in [0, 1]": 0 <= args.doubleq_min <= 1,
            "--expectile must be in (0, 1)": 0 < args.expectile < 1,
            "--max-latent-action must be > 0": args.max_latent_action > 0,
            "--n-candidates must be >= 1": args.n_candidates >= 1,
            "--sigma must be >= 0": args.sigma >= 0,
        },
    )
    device, data, env = setup(args)  # seeding, the task's dataset and its environment
    scale_reward, v_min, v_max = reward_transform(args.env_id, data["rewards"], args.gamma)
    data["rewards"] = scale_reward(data["rewards"])
    agent = Agent(env, data, v_min, v_max, args, device)
    # Algorithm 1: the replay buffer starts as the whole offline dataset D.
    rb = ReplayBuffer(data, len(data["rewards"]) + args.online_steps, device)
    if args.load_offline and not resumed:  # fine-tune a saved model: pretraining ends at the model's own step
        args.offline_steps = load_model(args.load_offline, args, agent)
    run = Run(args, resumed, agent, env, rb, evaluate)  # directory, logs, checkpoints; --resume: the stopped run
    update_critic, update_actor, act = (
        compiled(critic_update, args),
        compiled(actor_update, args),
        compiled(select_action, args),
    )

    obs = run.obs
    for global_step in range(run.start_step, run.total_steps):
        step, online = global_step + 1, global_step >= args.offline_steps  # step: the one this iteration completes
        if online:
            if obs is None:  # the previous episode ended
                obs, _ = env.reset()
            # ALGO LOGIC: O3F, Algorithm 1 lines 2-4: act optimistically around the policy's action
            action = act(agent, torch.as_tensor(obs, dtype=torch.float32, device=device)[None], args)
            # Line 5: step the environment.
            next_obs, reward, terminated, truncated, info = env.step(action.cpu().numpy())
            # Line 6: D <- D U {(s, a, r, s')}; only a true termination stops bootstrapping, a time limit does not.
            rb.add(obs, action, scale_reward(reward), next_obs, terminated)
            run.record_episode(step, info)
            obs = None if terminated or truncated else next_obs

        # ALGO LOGIC: Algorithm 1, line 7: the same LAPO update offline and online; online, --utd critic steps (REDQ)
        for _ in range(args.utd if online else 1):  # the logs show the last of them
            losses = update_critic(agent, rb.sample(args.batch_size), args)
        # The actor on a batch of its own, drawn as the critic's are (LAPO's code, at one critic update per step,
        # reuses the critic's batch; at --utd 20 no single critic batch is the natural one).
        losses |= update_actor(agent, rb.sample(args.batch_size), args)

        # Bookkeeping, one call each (the plumbing block below): divergence guard and logs, evaluation, checkpoints
        run.log(step, losses)
        run.evaluate(step)
        run.save(step, between_episodes=not online or obs is None)
    run.finish()


# =============================================================================================
# PLUMBING: tasks and data, the replay buffer, flags, the run's bookkeeping, checkpoints, guards.
# The same in every script of this project, line for line (tests/test_alignment.py); skip it on a first read.
# =============================================================================================
class BadInput(SystemExit):
    """Bad input: uncaught, it ends the program with exit code 2 and no traceback; `message` is its one line."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


def fail(message: str):
    """Bad input ends the run with one line and exit code 2, never a traceback (a caller may catch BadInput)."""
    print(f"error: {message}", file=sys.stderr)
    raise BadInput(message)


DATA_DIR = os.environ.get("O3F_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "o3f"))
D4RL_URL = os.environ.get("O3F_D4RL_URL", "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2")
R, G = "r", "g"
# D4RL's antmaze evaluation mazes: one fixed start (r) and goal (g), as in Minari's D4RL ports.
EVAL_MAZES = {
    "umaze": [[1, 1, 1, 1, 1], [1, 0, 0, R, 1], [1, 0, 1, 1, 1], [1, 0, 0, G, 1], [1, 1, 1, 1, 1]],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
KITCHEN_SUBTASKS = {
    "complete": ["microwave", "kettle", "light switch", "slide cabinet"],
    "partial": ["microwave", "kettle", "light switch", "slide cabinet"],
    "mixed": ["microwave", "kettle", "bottom burner", "light switch"],
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


def d4rl_tasks() -> dict:
    tasks = {}
    for robot, (env, ref_min, ref_max) in {
        "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
        "hopper": ("Hopper-v5", -20.272305, 3234.3),
        "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
    }.items():
        for data in ("random", "medium", "medium-replay", "medium-expert", "expert"):
            tasks[f"{robot}-{data}-v2"] = Task(
                "locomotion", env, {}, None, "d4rl", f"{robot}_{data.replace('-', '_')}-v2", ref_min, ref_max
            )
    for data, env in {
        "umaze": "AntMaze_UMaze-v4",
        "umaze-diverse": "AntMaze_UMaze-v4",
        "medium-play": "AntMaze_Medium-v4",
        "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
        "large-play": "AntMaze_Large-v4",
        "large-diverse": "AntMaze_Large_Diverse_GR-v4",
    }.items():
        maze = EVAL_MAZES[data.split("-")[0]]  # success (return 1) ends the episode, as in D4RL
        tasks[f"antmaze-{data}-v2"] = Task(
            "antmaze",
            env,
            {"maze_map": maze, "continuing_task": False, "reset_target": False},
            ("achieved_goal", "observation"),
            "minari",
            f"D4RL/antmaze/{data}-v1",
            0.0,
            1.0,
        )
    for data, subtasks in KITCHEN_SUBTASKS.items():  # the return counts the sub-tasks done, out of 4
        kwargs = {
            "tasks_to_complete": subtasks,
            "remove_task_when_completed": True,
            "terminate_on_tasks_completed": True,
            "max_episode_steps": 280,
        }
        tasks[f"kitchen-{data}-v0"] = Task(
            "kitchen", "FrankaKitchen-v1", kwargs, ("observation",), "minari", f"D4RL/kitchen/{data}-v2", 0.0, 4.0
        )
    return tasks


TASKS = {
    **d4rl_tasks(),
    # Embedded datasets, made by make_datasets.py with no network (scored with D4RL's halfcheetah references).
    "embedded-halfcheetah-medium": Task(
        "locomotion", "HalfCheetah-v5", {}, None, "embedded", "embedded-halfcheetah-medium", -280.178953, 12135.0
    ),
    "embedded-halfcheetah-medium-1m": Task(
        "locomotion", "HalfCheetah-v5", {}, None, "embedded", "embedded-halfcheetah-medium-1m", -280.178953, 12135.0
    ),
    "embedded-halfcheetah-random": Task(
        "locomotion", "HalfCheetah-v5", {}, None, "embedded", "embedded-halfcheetah-random", -280.178953, 12135.0
    ),
    "embedded-halfcheetah-random-1m": Task(
        "locomotion", "HalfCheetah-v5", {}, None, "embedded", "embedded-halfcheetah-random-1m", -280.178953, 12135.0
    ),
    "embedded-pointmaze-medium": Task(
        "antmaze",
        "PointMaze_Medium-v3",
        {"maze_map": EVAL_MAZES["medium"], "continuing_task": False, "reset_target": False},
        ("observation",),
        "embedded",
        "embedded-pointmaze-medium",
        0.0,
        1.0,
    ),
}


def normalized_score(env_id: str, episode_return: float) -> float:
    task = TASKS[env_id]
    return 100.0 * (episode_return - task.ref_min) / (task.ref_max - task.ref_min)


def flatten_obs(task: Task, obs):
    return obs if task.obs_keys is None else np.concatenate([obs[key] for key in task.obs_keys], -1)


def make_env(env_id: str, capture_video: bool = False, video_dir: str = "", eval_episodes: int = 1):
    task = TASKS[env_id]
    if task.env.startswith(("AntMaze", "PointMaze", "FrankaKitchen")):
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its import prints an Adroit notice
            warnings.simplefilter("ignore")
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
    with warnings.catch_warnings():  # AntMaze v4 on purpose: v5 changed the observation D4RL's data use
        warnings.filterwarnings("ignore", message=".*out of date.*")
        env = gym.make(task.env, render_mode="rgb_array" if capture_video else None, **task.env_kwargs)
    if task.obs_keys is not None:
        size = sum(env.observation_space[key].shape[0] for key in task.obs_keys)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: flatten_obs(task, obs), gym.spaces.Box(-np.inf, np.inf, (size,))
        )
    if capture_video:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda ep: ep % eval_episodes == 0)
    return gym.wrappers.RecordEpisodeStatistics(env)


def download(url: str, path: str, env_id: str):
    """Fetch `url` to `path` through a temporary name: an interrupted download never looks complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.part{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0)
            with tqdm(
                total=size or None,
                unit="B",
                unit_scale=True,
                desc=f"downloading {os.path.basename(path)}",
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(1 << 20):
                    bar.update(f.write(chunk))
        if size and os.path.getsize(tmp) != size:
            raise OSError(f"cut off after {os.path.getsize(tmp)} of {size} bytes")
        h5py.File(tmp, "r").close()  # a complete file that is not HDF5 (an error page) is not cached either
        os.replace(tmp, path)
    except (OSError, http.client.HTTPException) as e:
        fail(
            f"could not download {env_id} from {url} ({getattr(e, 'reason', e)}); "
            f"with no network, put D4RL's file at {path} or pass --dataset-path FILE"
        )
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def dataset_file(env_id: str) -> str:
    """The task's HDF5 file in the cache: downloaded (D4RL) or made here (embedded) on first use."""
    task = TASKS[env_id]
    path = os.path.join(DATA_DIR, task.source, f"{task.dataset}.hdf5")
    if not os.path.isfile(path) and task.source == "d4rl":
        download(f"{D4RL_URL}/{task.dataset}.hdf5", path, env_id)
    if not os.path.isfile(path) and task.source == "embedded":
        try:
            import make_datasets  # the project's dataset tool, next to this script
        except ImportError:
            fail(f"{env_id} is made by make_datasets.py, which is not next to this script; pass --dataset-path FILE")
        print(f"making the embedded dataset {env_id} (once) at {path}", file=sys.stderr)
        make_datasets.generate(task.dataset, path)
    return path


def read_hdf5(path: str) -> dict:
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys[:4] if k not in f]
            if missing:
                fail(f"{path}: not a D4RL dataset, it has no {', '.join(missing)}")
            return {k: f[k][:] for k in keys if k in f}
    except OSError as e:
        fail(f"{path}: cannot be read as HDF5 ({e})")


def minari_store(dataset_id: str = "") -> str:
    """Where Minari keeps a dataset: $MINARI_DATASETS_PATH, or ~/.minari/datasets."""
    root = os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")
    return os.path.join(root, dataset_id) if dataset_id else root


def read_minari_dir(env_id: str, path: str) -> dict:
    """A Minari dataset folder as D4RL-format arrays, read whole: a cut or corrupt download fails here, not later."""
    import minari

    task = TASKS[env_id]
    parts = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    try:
        dataset = minari.MinariDataset(os.path.join(path, "data"))
        for episode in dataset.iterate_episodes():
            obs = flatten_obs(task, episode.observations)
            for key, value in zip(
                parts, (obs[:-1], episode.actions, episode.rewards, episode.terminations, episode.truncations, obs[1:])
            ):
                parts[key].append(value)
        steps = sum(len(a) for a in parts["actions"])
        if steps != dataset.total_steps or len(parts["actions"]) != dataset.total_episodes:
            raise ValueError(
                f"{steps} steps in {len(parts['actions'])} episodes, "
                f"the metadata says {dataset.total_steps} in {dataset.total_episodes}"
            )
    except Exception as e:  # h5py, Minari and NumPy each raise their own kinds
        raise ValueError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return {key: np.concatenate(value) for key, value in parts.items()}


def fetch_minari(env_id: str) -> str:
    """Download the task's Minari dataset into a staging folder, read it back whole, then move it into Minari's store.

    An interrupted or corrupt download is never left looking complete: only a dataset that reads whole is moved in.
    """
    task = TASKS[env_id]
    try:
        import minari
        from huggingface_hub import constants
    except ImportError:
        fail(
            f"{env_id}: downloading {task.dataset} needs Minari's download extra: pip install 'minari[hf]' "
            "(requirements.txt has it)"
        )
    remote = urllib.parse.urlparse(constants.ENDPOINT)
    host, port = remote.hostname, remote.port or (443 if remote.scheme == "https" else 80)
    prepare = (
        f"on a machine with network run `python make_datasets.py fetch {env_id}` and copy {minari_store()} here, "
        "or pass --dataset-path FILE"
    )
    try:  # one quick look first: with no network, one clear line instead of the client's retries
        socket.create_connection((host, port), timeout=15).close()
    except OSError as e:
        fail(
            f"no network: could not reach {host} ({e.strerror or type(e).__name__}) "
            f"to download {task.dataset} for {env_id}; {prepare}"
        )
    root, target, staging = minari_store(), minari_store(task.dataset), minari_store(f".o3f-staging-{os.getpid()}")
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = staging  # Minari downloads into whatever this names
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Minari prints its progress
            minari.download_dataset(task.dataset)
        read_minari_dir(env_id, os.path.join(staging, task.dataset))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # a local copy that did not read (why we are here)
        os.replace(os.path.join(staging, task.dataset), target)
        for folder, _, names in os.walk(staging):  # the namespaces' metadata, as `minari download` leaves it
            if "namespace_metadata.json" in names and ".cache" not in folder:
                there = os.path.join(root, os.path.relpath(folder, staging), "namespace_metadata.json")
                os.makedirs(os.path.dirname(there), exist_ok=True)
                shutil.copyfile(os.path.join(folder, "namespace_metadata.json"), there) if not os.path.exists(
                    there
                ) else None
    except Exception as e:
        fail(
            f"could not download {task.dataset} for {env_id} from {host} "
            f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
            f"nothing was kept; {prepare}"
        )
    finally:
        os.environ.pop("MINARI_DATASETS_PATH") if saved is None else os.environ.__setitem__(
            "MINARI_DATASETS_PATH", saved
        )
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_minari(env_id: str) -> dict:
    """A Minari dataset as D4RL-format arrays, observations flattened as D4RL's; fetched if missing."""
    task = TASKS[env_id]
    try:
        import minari  # noqa: F401
    except ImportError:
        fail(f"{env_id} is a Minari dataset: pip install 'minari[hf]'")
    path = minari_store(task.dataset)
    if not os.path.isdir(os.path.join(path, "data")):
        path = fetch_minari(env_id)
    try:
        return read_minari_dir(env_id, path)
    except ValueError as e:
        fail(
            f"{path}: an incomplete or corrupt Minari dataset ({e}); "
            f"delete it and run `python make_datasets.py fetch {env_id}`"
        )


def load_dataset(env_id: str, dataset_path: str | None = None) -> dict:
    """The task's dataset as float32 arrays of (s, a, r, s', terminal), plus the episode returns.

    `dataset_path` (a D4RL-format HDF5 file) replaces the task's own dataset. Time-limit ends
    (`timeouts`) are not terminal: the value of s' is still bootstrapped there. Files without
    `next_observations` get them from the following row, as d4rl.qlearning_dataset does, dropping
    the rows that end an episode by time limit (their successor is not stored).
    """
    if dataset_path is not None and not os.path.isfile(dataset_path):
        fail(f"--dataset-path {dataset_path}: no such file")
    if dataset_path is None and TASKS[env_id].source == "minari":
        name, data = TASKS[env_id].dataset, read_minari(env_id)
    else:
        name = dataset_path or dataset_file(env_id)
        data = read_hdf5(name)
    # copy=False: a 2M-transition dataset is ~340 MB, so arrays already in float32 are not copied again.
    obs, actions = data["observations"].astype(np.float32, copy=False), data["actions"].astype(np.float32, copy=False)
    rewards, terminals = (
        data["rewards"].astype(np.float32, copy=False).reshape(-1),
        data["terminals"].astype(bool).reshape(-1),
    )
    timeouts = data.get("timeouts", np.zeros_like(terminals)).astype(bool).reshape(-1)
    if (
        not len(obs) == len(actions) == len(rewards) == len(terminals) == len(timeouts)
        or obs.ndim != 2
        or actions.ndim != 2
    ):
        fail(f"{name}: observations, actions, rewards, terminals and timeouts differ in length or shape")
    # Episode returns of the behaviour policy (IQL scales locomotion rewards by their range; also a sanity check).
    ends = np.flatnonzero(terminals | timeouts)
    ends = np.append(ends, len(rewards) - 1) if len(ends) == 0 or ends[-1] != len(rewards) - 1 else ends
    episode_returns = np.array([seg.sum() for seg in np.split(rewards, ends[:-1] + 1)])
    if "next_observations" in data:
        next_obs = data["next_observations"].astype(np.float32, copy=False)
    else:
        keep = ~timeouts[:-1]
        obs, actions, rewards, terminals = obs[:-1][keep], actions[:-1][keep], rewards[:-1][keep], terminals[:-1][keep]
        next_obs = data["observations"][1:][keep].astype(np.float32)
    for key, value in (
        ("observations", obs),
        ("actions", actions),
        ("rewards", rewards),
        ("next_observations", next_obs),
    ):
        if not np.isfinite(value).all():
            fail(f"{name}: {key} holds NaN or inf values")
    return dict(
        observations=obs,
        actions=actions,
        rewards=rewards,
        next_observations=next_obs,
        terminals=terminals.astype(np.float32),
        episode_returns=episode_returns,
    )


class ReplayBuffer:
    """The offline dataset D, then the online transitions, in float32 tensors preallocated on the device.

    Takes the arrays out of `data` one at a time, so that loading never holds the dataset twice; the rows
    for online transitions are reserved, not touched, until written (sampling only reads rows < size).
    """

    def __init__(self, data: dict, capacity: int, device: torch.device):
        self.size = self.n_offline = len(data["rewards"])

        def take(key):
            x = data.pop(key)
            buf = torch.empty((capacity, *x.shape[1:]), dtype=torch.float32, device=device)
            buf[: self.size] = torch.as_tensor(x, device=device)
            return buf

        self.obs, self.actions, self.next_obs = take("observations"), take("actions"), take("next_observations")
        self.rewards, self.dones = take("rewards"), take("terminals")

    def add(self, obs, action, reward, next_obs, done):
        i = self.size
        self.obs[i], self.actions[i], self.next_obs[i] = torch.as_tensor(obs), action, torch.as_tensor(next_obs)
        self.rewards[i], self.dones[i] = float(reward), float(done)
        self.size += 1

    def online_part(self, n_offline: int) -> dict:
        # clone: a slice shares the whole buffer's storage, and torch.save would write all of it (the offline data too)
        return {
            key: getattr(self, key)[n_offline : self.size].clone().cpu()
            for key in ("obs", "actions", "rewards", "next_obs", "dones")
        }

    def restore_online_part(self, part: dict):
        n = len(part["rewards"])
        for key, value in part.items():
            getattr(self, key)[self.size : self.size + n] = value.to(self.obs.device)
        self.size += n

    def sample(self, batch_size: int, online_fraction: float | None = None):
        """A batch drawn uniformly from the whole buffer; with `online_fraction` F, round(F * batch_size) rows drawn
        from the online transitions and the rest from the offline data (RLPD's symmetric sampling is F = 0.5)."""
        if online_fraction is None or self.size == self.n_offline:  # uniform (and always before the first online step)
            idx = torch.randint(0, self.size, (batch_size,), device=self.obs.device)
        else:
            n_online = round(online_fraction * batch_size)
            idx = torch.cat(
                [
                    torch.randint(0, self.n_offline, (batch_size - n_online,), device=self.obs.device),
                    torch.randint(self.n_offline, self.size, (n_online,), device=self.obs.device),
                ]
            )
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]


def read_flags(args):
    """The run's flags (with --resume, the stopped run's own) and the checkpoint it resumes, if any."""
    resumed = read_checkpoint(args.resume, "--resume") if args.resume else None
    if resumed:  # a resumed run is the same run: its own flags, its own directory
        try:
            args = type(args)(**{**resumed["args"], "resume": resumed["path"]})
        except TypeError:
            fail(f"--resume {resumed['path']}: written by another version of this script")
    if args.env_id not in TASKS:
        close = difflib.get_close_matches(args.env_id, list(TASKS), n=3, cutoff=0.5)
        fail(
            f"unknown --env-id {args.env_id}"
            + (f"; did you mean {', '.join(close)}?" if close else "; see --help for the known tasks")
        )
    return args, resumed


def check_flags(args, method_checks: dict):
    """The first flag out of range ends the run with one line: the shared flags, then the method's `method_checks`."""
    checks = {
        "--offline-steps must be >= 0": args.offline_steps >= 0,
        "--online-steps must be >= 0": args.online_steps >= 0,
        "--eval-freq must be >= 1": args.eval_freq >= 1,
        "--eval-episodes must be >= 1": args.eval_episodes >= 1,
        "--log-freq must be >= 1": args.log_freq >= 1,
        "--checkpoint-every must be >= 0": args.checkpoint_every >= 0,
        "--snapshot-every must be >= 0": args.snapshot_every >= 0,
        "--batch-size must be >= 1": args.batch_size >= 1,
        **method_checks,
        "--cudagraphs needs a CUDA device (and --cuda)": not args.cudagraphs
        or (torch.cuda.is_available() and args.cuda),
    }
    for message, ok in checks.items():
        if not ok:
            fail(message)


def setup(args) -> tuple:
    """The task's dataset, seeding, the device and the environment (their sizes checked against the data's)."""
    data = load_dataset(args.env_id, args.dataset_path)  # first: making a dataset draws random numbers of its own
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    env = make_env(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        fail(
            f"dataset has {data['observations'].shape[1]}-d observations and {data['actions'].shape[1]}-d actions; "
            f"{args.env_id} needs {obs_dim} and {act_dim}"
        )
    if args.batch_size > len(data["rewards"]):
        fail(f"--batch-size {args.batch_size} is larger than the dataset ({len(data['rewards'])} transitions)")
    env.action_space.seed(args.seed)
    return device, data, env


def compiled(fn, args):
    """`fn` as the training loop calls it: eager by default (the reference); traced and fused by torch.compile with
    --compile; replayed as a CUDA graph with --cudagraphs (compile's reduce-overhead mode), each call a new graph
    step whose outputs are cloned, so the loop reads them whenever it likes."""
    if not (args.compile or args.cudagraphs):
        return fn
    graph = torch.compile(fn, mode="reduce-overhead" if args.cudagraphs else None)
    if not args.cudagraphs:
        return graph

    def replay(*inputs):
        torch.compiler.cudagraph_mark_step_begin()  # the previous call's graph outputs may now be overwritten
        return torch.utils._pytree.tree_map(lambda x: x.clone() if torch.is_tensor(x) else x, graph(*inputs))

    return replay


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


class Run:
    """A run's bookkeeping: its directory, TensorBoard (and wandb), summary.json, the evaluations, checkpoints and
    snapshots, the divergence guard, the progress bar, and Ctrl-C or SIGTERM (finish the step, save, exit).

    Starting, it loads the stopped run of --resume (its model, online data and random streams), and resets the
    environment: `obs` is the first state.
    `evaluate(agent, env, env_id, n_episodes, seed) -> dict` scores the policy.
    """

    def __init__(self, args, resumed: dict | None, agent, env, rb, evaluate):
        self.args, self.agent, self.env, self.rb, self.evaluate_policy = args, agent, env, rb, evaluate
        self.name = (
            resumed["summary"]["run_name"]
            if resumed
            else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        )
        self.dir = os.path.dirname(resumed["path"]) if resumed else os.path.join(args.output_dir, self.name)
        self.checkpoint_path, self.summary_path = (
            os.path.join(self.dir, "checkpoint.pt"),
            os.path.join(self.dir, "summary.json"),
        )
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            fail(f"cannot write the run to {self.dir} ({e.strerror}); pass --output-dir DIR")
        if args.track:
            try:
                import wandb
            except ImportError:
                fail("--track needs wandb: pip install wandb")
            wandb.init(
                project=args.wandb_project_name,
                entity=args.wandb_entity,
                sync_tensorboard=True,
                config=vars(args),
                name=self.name,
                save_code=True,
            )
        if args.capture_video:
            try:
                import moviepy  # noqa: F401, used by gymnasium's RecordVideo
            except ImportError:
                fail("--capture-video needs moviepy: pip install moviepy")
        self.writer = SummaryWriter(
            self.dir, purge_step=resumed["step"] + 1 if resumed else None
        )  # drop events past the checkpoint
        self.writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        )
        self.eval_env = make_env(args.env_id, args.capture_video, os.path.join("videos", self.name), args.eval_episodes)

        self.start_step = 0
        if resumed:
            load_checkpoint(resumed, args, agent, "--resume")
        self.start_step = resumed["step"] if resumed else args.offline_steps if args.load_offline else 0
        self.total_steps, self.n_offline = args.offline_steps + args.online_steps, rb.size
        self.summary = {
            "args": vars(args),
            "run_name": self.name,
            "evaluations": [],
            "train_episodes": [],
            "final_normalized_score": None,
            "complete": False,
        }
        if resumed:
            self.summary = {"train_episodes": [], **resumed["summary"]}  # checkpoints from before train_episodes
            rb.restore_online_part(resumed["online_buffer"])
        self.summary["device"] = str(agent.device)  # the device used: --cuda asks for CUDA only where there is one
        self.summary.setdefault("wall_s_since_step", self.start_step)  # runs from before wall_s: counted from here
        here, platforms = platform_info(agent.device), self.summary.setdefault("platforms", [])
        last = {key: value for key, value in (platforms or [{}])[-1].items() if key != "from_step"}
        if last and {**last, "host": None} != {**here, "host": None}:  # resumed elsewhere
            print(
                f"{self.name}: resumed with another CPU, GPU or library build than it last ran with: it carries on, "
                "but not bitwise as it would have there (summary.json's `platforms` lists each)",
                file=sys.stderr,
            )
        if last != here:  # each stretch of the run, from the step where it started
            platforms.append({"from_step": self.start_step, **here})
        self.wall_before = self.summary.get("wall_s", 0.0)

        self.obs, _ = env.reset(seed=args.seed)
        if resumed:  # last, after everything that draws random numbers while setting up
            set_rng_state(resumed["rng"], env)
            self.obs = None if resumed["episode_over"] else self.obs
        self.healthy, self.checkpoint_due, self.interrupted = torch.tensor(True, device=agent.device), False, []
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a scheduler's stop: finish the step, save, exit
            signal.signal(sig, lambda *_: self.interrupted.append(True))
        self.start_time, self.score = time.time(), float("nan")
        self.progress = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc="offline" if self.start_step < args.offline_steps else "online",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1 if sys.stderr.isatty() else 30,
        )
        if (
            self.start_step == args.offline_steps and args.load_offline and not resumed
        ):  # score the loaded model once, at the switch
            self.record_evaluation(self.start_step)

    def record_episode(self, step: int, info: dict):
        """A training episode that ended with the env step of `step`: its return (the quality of the behaviour) to
        TensorBoard and summary.json."""
        if "episode" in info:
            episode_return, length = float(info["episode"]["r"]), int(info["episode"]["l"])
            self.writer.add_scalar("charts/episodic_return", episode_return, step)
            self.writer.add_scalar("charts/episodic_length", length, step)
            self.summary["train_episodes"].append(
                {
                    "step": step,
                    "return": episode_return,
                    "length": length,
                    "normalized_score": normalized_score(self.args.env_id, episode_return),
                }
            )

    def log(self, step: int, losses: dict, scalars: dict | None = None, now: bool = False):
        """After the update of `step`: the divergence guard, and every --log-freq steps (or `now`) the losses, `scalars`
        and the speed to TensorBoard (the losses stay on the device until then: the updates never wait for the host)."""
        args = self.args
        self.progress.update(1)
        self.healthy &= all_finite(losses)
        self.checkpoint_due |= args.checkpoint_every > 0 and step % args.checkpoint_every == 0
        if (
            step % args.log_freq == 0 or step % args.eval_freq == 0 or self.checkpoint_due or self.interrupted
        ) and not self.healthy:
            stop_diverged(step, losses, self.checkpoint_path)
        if step % args.log_freq == 0 or now:
            for name, value in {**(scalars or {}), **losses}.items():
                self.writer.add_scalar(f"losses/{name}", value.item() if torch.is_tensor(value) else value, step)
            self.writer.add_scalar("charts/SPS", int((step - self.start_step) / (time.time() - self.start_time)), step)

    def evaluate(self, step: int, **extra):
        """Every --eval-freq steps, at the switch and at the end: score the policy (`extra`: for summary.json)."""
        if step % self.args.eval_freq == 0 or step in (self.args.offline_steps, self.total_steps):
            self.record_evaluation(step, extra)

    def record_evaluation(self, step: int, extra: dict | None = None):
        result = self.evaluate_policy(
            self.agent, self.eval_env, self.args.env_id, self.args.eval_episodes, self.args.seed + 10_000
        )
        extra = {name: value.item() if torch.is_tensor(value) else value for name, value in (extra or {}).items()}
        phase = "online" if step > self.args.offline_steps else "offline"
        self.summary["evaluations"].append({"step": step, "phase": phase, **result, **extra})
        self.summary["final_normalized_score"] = self.score = result["normalized_score"]
        self.summary["wall_s"] = self.wall_s()
        write_json(self.summary_path, self.summary)
        for name, value in result.items():
            if value is not None:
                self.writer.add_scalar(f"eval/{name}", value, step)
        self.progress.set_postfix(score=f"{self.score:.1f}")

    def save(self, step: int, between_episodes: bool):
        """The pretrained model at the switch, snapshots, and every --checkpoint-every steps the whole run (online at
        the end of the episode then, so that a resumed run replays exactly); after Ctrl-C or SIGTERM, save and exit."""
        args = self.args
        if step == args.offline_steps:
            save_checkpoint(args.save_offline or os.path.join(self.dir, "offline.pt"), step, args, self.agent)
            self.progress.set_description("online")
        if step in args.snapshot_steps or (
            args.snapshot_every and step % args.snapshot_every == 0
        ):  # for benchmarks/premise.py
            save_checkpoint(os.path.join(self.dir, "snapshots", f"step{step:07d}.pt"), step, args, self.agent)
        if (self.checkpoint_due and between_episodes) or self.interrupted:
            self.summary["wall_s"] = self.wall_s()
            run = {
                "summary": self.summary,
                "rng": rng_state(self.env),
                "episode_over": step > args.offline_steps,
                "online_buffer": self.rb.online_part(self.n_offline),
            }
            save_checkpoint(self.checkpoint_path, step, args, self.agent, run)
            self.checkpoint_due = False
        if self.interrupted:
            self.progress.close()
            print(
                f"interrupted at step {step}; continue with: python {sys.argv[0]} --resume {self.checkpoint_path}",
                file=sys.stderr,
            )
            sys.exit(130)

    def wall_s(self) -> float:
        """Wall-clock seconds of the run, over all its resumptions, from step `wall_s_since_step` of summary.json."""
        return self.wall_before + time.time() - self.start_time

    def finish(self):
        self.progress.close()
        save_checkpoint(os.path.join(self.dir, "final.pt"), self.total_steps, self.args, self.agent)
        self.summary["complete"], self.summary["wall_s"] = True, self.wall_s()
        write_json(self.summary_path, self.summary)
        episodes = [e["normalized_score"] for e in self.summary["train_episodes"]]
        collected = (
            f"; its {len(episodes)} training episodes scored {np.mean(episodes):.1f} on average" if episodes else ""
        )
        print(f"{self.name}: final normalized score {self.score:.1f}{collected}; logs in {self.dir}")
        self.env.close()
        self.eval_env.close()
        self.writer.close()


def agent_state(agent) -> dict:
    """The agent's networks and optimisers, by the names checkpoints keep them under (its attributes' names)."""
    return {name: part for name, part in vars(agent).items() if isinstance(part, (nn.Module, torch.optim.Optimizer))}


def save_checkpoint(path: str, step: int, args, agent, run: dict | None = None):
    """Write the agent (and, for a resumable run, `run`) to a temporary name, then rename: never half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {"algorithm": ALGORITHM, "env_id": args.env_id, "step": step, "args": asdict(args), **(run or {})}
    state.update({name: part.state_dict() for name, part in agent_state(agent).items()})
    torch.save(state, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def read_checkpoint(path: str, flag: str) -> dict:
    """A checkpoint of this script's algorithm (see ALGORITHM); a run directory stands for its `checkpoint.pt`."""
    path = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{flag} {path}: not a checkpoint of this project ({type(e).__name__})")
    if not isinstance(state, dict) or state.get("algorithm") != ALGORITHM:
        fail(f"{flag} {path}: written by another script (needs {' or '.join(SCRIPTS)})")
    if flag == "--resume" and "rng" not in state:
        fail(f"--resume {path}: a model-only checkpoint; pass it to --load-offline instead")
    state["path"] = path
    return state


def load_model(path: str, args, agent) -> int:
    """--load-offline: a saved model's networks (and optimisers) into `agent`; returns the step it was saved at."""
    pretrained = read_checkpoint(path, "--load-offline")
    load_checkpoint(pretrained, args, agent, "--load-offline")
    return pretrained["step"]


def load_checkpoint(state: dict, args, agent, flag: str):
    """The networks and optimisers of `state` into `agent`; a model saved without its optimisers' state (a model-only
    file, see results/MODELS.md) loads its networks, and its optimisers start afresh."""
    if state["env_id"] != args.env_id:
        fail(
            f"{flag} {state['path']}: trained on {state['env_id']}, not {args.env_id}; pass --env-id {state['env_id']}"
        )
    parts = agent_state(agent)
    fresh = [name for name, part in parts.items() if isinstance(part, torch.optim.Optimizer) and name not in state]
    try:
        for name, part in parts.items():
            if name not in fresh:
                part.load_state_dict(state[name])
    except (KeyError, RuntimeError, ValueError) as e:
        fail(f"{flag} {state['path']}: does not fit these networks ({str(e).splitlines()[0]})")
    if fresh:
        print(
            f"{flag} {state['path']}: a model without optimiser state; {', '.join(fresh)} start afresh", file=sys.stderr
        )


def rng_state(env) -> dict:
    """Every random stream the run draws from, so that a resumed run draws what the uninterrupted one would."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "env": env.unwrapped.np_random.bit_generator.state,
    }


def set_rng_state(state: dict, env):
    random.setstate(state["python"])
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    env.unwrapped.np_random.bit_generator.state = state["env"]


def all_finite(losses: dict) -> torch.Tensor:
    """A flag on the device (no host sync): every loss of this update is finite."""
    return torch.stack([value.detach().float() for value in losses.values()]).isfinite().all()


def stop_diverged(step: int, losses: dict, checkpoint: str):
    bad = (
        ", ".join(name for name, value in losses.items() if not torch.isfinite(value).all())
        or "an earlier update's loss"
    )
    kept = (
        f"the last good checkpoint is {checkpoint}"
        if os.path.isfile(checkpoint)
        else "no checkpoint was written before it"
    )
    print(
        f"error: training diverged: non-finite {bad} by step {step}; stopped, {kept} "
        f"(lower the learning rate or check the dataset)",
        file=sys.stderr,
    )
    sys.exit(3)


def platform_info(device: torch.device) -> dict:
    """What a run's numbers depend on beyond its flags and seed: one model evaluates bitwise alike only where all of
    this is the same (float rounding differs between CPUs and library builds, and the dynamics amplify it)."""
    import importlib.metadata
    import platform

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    versions = {}
    for package in ("torch", "numpy", "gymnasium", "mujoco"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"host": platform.node(), "cpu": cpu, "gpu": gpu, "python": platform.python_version(), **versions}


def write_json(path: str, content: dict):
    with open(f"{path}.tmp", "w") as f:
        json.dump(content, f, indent=2)
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    train(tyro.cli(Args))
