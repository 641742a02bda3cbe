"""Does O3F's premise hold? The selection diagnostic: what each action-selection rule executes, on a frozen model.

    python lab/premise.py measure MODEL.pt [MODEL.pt ...] --out lab/studies/premise/diagnostic.jsonl
    python lab/premise.py plot --results lab/studies/premise/diagnostic.jsonl

O3F (paper, section 5) rests on one premise: a critic trained offline ranks actions near the policy's
well enough that executing the best of N candidates collects better data than adding noise. For a saved
model of o3f_iql.py / iql_noise.py (IQL) or o3f_lapo.py (LAPO) on a locomotion or maze task (a snapshot,
`offline.pt`, `final.pt` or a `checkpoint.pt`), and each selection rule (the policy's action, a ~ pi, the
noise baseline at sigma, O3F at N, sigma, omega), acting through the scripts' own selection functions:

1. episodes: the D4RL-normalised return of full episodes acting with that rule, model frozen (the quality
   of the data the rule collects), and O3F's difference from noise over the same start states (the rules'
   random draws part after the first step: episodes share their start states, not their draws);
2. states: on K states visited by the deterministic policy, the critics' predicted value (the ensemble's
   mean Q) of the action the rule executes, and its true value: the MuJoCo state is restored, the action
   executed, then the deterministic policy followed for H more steps, discounted, in the critic's reward
   units. Truncating at H leaves out the tail past it, which weighs gamma^(H+1) of an infinite discounted
   sum (0.049 at H = 300, gamma = 0.99); a paired difference of two first actions loses less, since both
   continue with the same policy. Reported: each rule's predicted and true values, the gain of O3F over
   noise (true and predicted) on the same states from the same draw (paired), and the rank correlation
   (Spearman) between predicted and true values across R candidates c ~ N(a, sigma^2) of one state, averaged
   over states, beside its control: the rank correlation of the candidates' true values with those of the same
   candidates nudged by 1e-3 (HalfCheetah is chaotic: where the control is near 0, the true values'
   differences come from the dynamics, not from the actions, and no critic could rank them).

Every figure comes with its standard error; seeds are fixed, so two runs on the same model agree. One
JSON line per model goes to --out (models already there are skipped, so a study resumes), and a table
to the terminal.
"""

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@dataclass
class Measure:
    """Measure every selection rule on each saved model."""

    models: tyro.conf.Positional[tuple[str, ...]]
    """saved models (snapshots, offline.pt, final.pt or checkpoint.pt of o3f_iql.py, iql_noise.py or o3f_lapo.py)"""
    out: str | None = None
    """append one JSON line per model here; models already in the file are skipped"""
    sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)
    """the candidates' (and the noise baseline's) standard deviations"""
    n_candidates: tuple[int, ...] = (10, 100)
    """O3F's N"""
    omegas: tuple[float, ...] = (0.0,)
    """O3F's optimism weights"""
    episodes: int = 5
    """full episodes per rule"""
    states: int = 40
    """K, states visited by the deterministic policy"""
    horizon: int = 300
    """H, steps of the deterministic policy after the executed action"""
    rank_candidates: int = 20
    """R, candidates per state for the rank correlation (each one a rollout of H steps)"""
    seed: int = 0
    """seed of the start states, the visited states and every rule's random draws"""
    env_id: str | None = None
    """measure on this task instead of each model's own: one with the model's data and conventions (the 20k maze's
    models on embedded-pointmaze-large-20k-any-start)"""
    threads: int = 1
    """torch threads"""


@dataclass
class Plot:
    """Draw the diagnostic against training budget from the JSON lines of `measure`."""

    results: str = "lab/studies/premise/diagnostic.jsonl"
    """the JSON lines of `measure`"""
    out: str | None = None
    """the PNG to write (default: next to the results, premise.png)"""


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
REPLICATE = 1e-3  # the nudge of the rank correlation's control


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value) of the defined values (NaN: none)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def ranks(x) -> np.ndarray:
    """Ranks from 0, tied values sharing their mean rank."""
    _, group, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2)[group.reshape(-1)]


def spearman(a, b) -> float:
    """Rank correlation of two samples; NaN where either is constant (a sparse reward no candidate reaches within
    the horizon leaves every true return equal: no order to follow)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------------
# Rollouts from restored states
# ---------------------------------------------------------------------------------------------
def simulator(env):
    """The MuJoCo environment under the wrappers: the task's own, or a maze's point mass or ant."""
    base = env.unwrapped
    return getattr(base, "point_env", None) or getattr(base, "ant_env", None) or base


def save_state(env) -> tuple:
    """What MuJoCo needs to replay a step bit for bit: positions, velocities and the solver's warm start; in a maze,
    also its goal (the reward and the end of the episode depend on it)."""
    data, goal = simulator(env).data, getattr(env.unwrapped, "goal", None)
    return data.qpos.copy(), data.qvel.copy(), data.qacc_warmstart.copy(), None if goal is None else goal.copy()


def restore_state(env, state: tuple):
    simulator(env).set_state(state[0], state[1])
    if len(state) > 2:
        simulator(env).data.qacc_warmstart[:] = state[2]
    if len(state) > 3 and state[3] is not None:
        env.unwrapped.goal = state[3].copy()


def true_returns(
    policy: Callable,
    envs: list,
    states: list,
    first_actions: np.ndarray,
    horizon: int,
    gamma: float,
    scale_reward: Callable,
    partial: tuple[int, ...] = (),
    observe: Callable = lambda obs: obs,
) -> np.ndarray:
    """sum_{t=0..H} gamma^t r_t of executing first_actions[i] in states[i], then the deterministic `policy`
    (batched over the rollouts) for H steps; rewards in the critic's units, nothing after a termination.
    With `partial` horizons h <= H, returns [len(partial), n]: the same sums cut after step h. `observe` turns the
    unwrapped environment's observation into the policy's (a maze's dict into its vector)."""
    n = len(states)
    assert n <= len(envs) and all(h <= horizon for h in partial)
    returns, alive, discount, cuts = np.zeros(n), np.ones(n, dtype=bool), 1.0, {}
    obs, actions = [None] * n, np.asarray(first_actions)
    for i in range(n):
        restore_state(envs[i], states[i])
    for t in range(horizon + 1):
        for i in np.flatnonzero(alive):
            raw, reward, terminated, _, _ = envs[i].unwrapped.step(actions[i])
            obs[i] = observe(raw)
            returns[i] += discount * scale_reward(float(reward))
            alive[i] = not terminated
        discount *= gamma
        if t in partial:
            cuts[t] = returns.copy()
        if t < horizon and alive.any():
            actions = policy(np.stack(obs))
    return np.stack([cuts[h] for h in partial]) if partial else returns


# ---------------------------------------------------------------------------------------------
# A frozen model, acting through its scripts' own functions
# ---------------------------------------------------------------------------------------------
@dataclass
class Rule:
    kind: str  # "policy", "sample" (a ~ pi), "noise" (the baseline) or "o3f"
    sigma: float = 0.0
    n: int = 1
    omega: float = 0.0

    @property
    def name(self) -> str:
        return {"policy": "policy mean", "sample": "a ~ pi", "noise": f"noise s{self.sigma:g}"}.get(
            self.kind, f"O3F N{self.n} s{self.sigma:g}" + (f" w{self.omega:g}" if self.omega else "")
        )


def read_model(path: str, device: str = "cpu") -> dict:
    """A saved IQL or LAPO model's state (networks, task, arguments), or one line and exit code 2."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        fail(f"{path}: not a model of this project ({type(e).__name__})")
    algorithm = state.get("algorithm") if isinstance(state, dict) else None
    if algorithm not in ("iql", "lapo"):
        fail(
            f"{path}: the diagnostic reads IQL and LAPO models (o3f_iql.py, iql_noise.py, o3f_lapo.py), not {algorithm}"
        )
    missing = [key for key in ("env_id", "step", "args") if key not in state]  # what every saved model carries
    if missing:
        fail(f"{path}: a {algorithm} model without {', '.join(missing)}: not one this project's scripts saved")
    return state


class Agent:
    """A saved IQL or LAPO model with its task, its critic's reward scale and the scripts' selection functions."""

    def __init__(self, path: str, device: str = "cpu", env_id: str | None = None):
        state = read_model(path, device)
        self.algorithm = state["algorithm"]
        import iql_noise
        import o3f_iql
        import o3f_lapo

        self.script = o3f_iql if self.algorithm == "iql" else o3f_lapo
        self.noise_script = iql_noise if self.algorithm == "iql" else o3f_lapo
        self.path, self.env_id, self.step, args = path, env_id or state["env_id"], state["step"], state["args"]
        if self.env_id not in self.script.TASKS:
            fail(f"{path}: {self.env_id} is not a task of {self.script.__name__}.py; --env-id names one it serves")
        alike = self.script.DATASET_OF  # each task less its env's settings: a model serves every task with its data
        if alike.get(self.env_id, self.env_id) != alike.get(state["env_id"], state["env_id"]):
            fail(f"{path}: trained on {state['env_id']}; {self.env_id} is not a task with its data and conventions")
        if self.script.TASKS[self.env_id].domain == "kitchen":
            fail(
                f"{path}: trained on {self.env_id}; the diagnostic restores the locomotion and maze tasks' states only"
            )
        self.observe = lambda obs, task=self.script.TASKS[self.env_id]: self.script.flatten_obs(task, obs)
        self.offline_steps, self.gamma, self.train_seed = args["offline_steps"], args["gamma"], args["seed"]
        self.exp_name = args.get("exp_name")  # which run the model comes from (lab/run.py: the variant)
        s, run_args = (
            self.script,
            self.script.Args(**{k: v for k, v in args.items() if k in self.script.Args.__dataclass_fields__}),
        )
        env = s.make_env(self.env_id)
        data = s.load_dataset(self.env_id, args.get("dataset_path"))  # the critic's reward units come from the data
        self.dataset_size = len(data["rewards"])
        if self.algorithm == "iql":
            self.scale_reward = s.reward_transform(self.env_id, data["episode_returns"])
            self.model = s.Agent(env, run_args, torch.device(device))
        else:
            self.scale_reward, v_min, v_max = s.reward_transform_and_value_range(
                self.env_id, data["rewards"], self.gamma
            )
            self.model = s.Agent(
                env, data, v_min, v_max, run_args, torch.device(device)
            )  # the checkpoint holds the normaliser
        env.close()
        del data
        try:
            for name, part in s.agent_state(self.model).items():
                if isinstance(part, torch.nn.Module):  # the networks; a model-only file has no optimiser state
                    part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as e:
            fail(f"{path}: does not fit the networks of {self.script.__name__}.py ({str(e).splitlines()[0]})")
        self.low, self.high, self.device = self.model.low, self.model.high, device

    @torch.no_grad()
    def policy(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic policy (IQL: the Gaussian's mean; LAPO: D_target(s, pi(s))) for a batch of states."""
        return (
            self.script.policy_action(self.model, torch.as_tensor(obs, dtype=torch.float32, device=self.device))
            .cpu()
            .numpy()
        )

    @torch.no_grad()
    def q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every critic's value of (s, a): [m, batch]."""
        if self.algorithm == "iql":
            return self.model.qf(obs, actions)
        normalizer = self.model.normalizer
        return self.model.qf(normalizer.obs(obs), normalizer.action(actions))

    @torch.no_grad()
    def base_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Algorithm 1, line 2: the action the candidates are drawn around (IQL: a ~ pi; LAPO: a = pi(s))."""
        if self.algorithm == "iql":
            return self.model.actor(obs).sample()
        return self.script.policy_action(self.model, obs)

    @torch.no_grad()
    def act(self, obs: np.ndarray, rule: Rule) -> np.ndarray:
        """The action `rule` executes in one state, through the scripts' own selection functions."""
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
        if rule.kind == "policy":
            return self.policy(o.cpu().numpy())[0]
        if rule.kind == "sample":
            return self.base_action(o)[0].cpu().numpy()
        if rule.kind == "noise" and self.algorithm == "iql":
            return self.noise_script.select_action(self.model, o, SimpleNamespace(sigma=rule.sigma)).cpu().numpy()
        if rule.kind == "noise":  # LAPO's baseline is its O3F with one candidate
            return (
                self.script.select_action(self.model, o, SimpleNamespace(n_candidates=1, sigma=rule.sigma, omega=0.0))
                .cpu()
                .numpy()
            )
        return (
            self.script.select_action(
                self.model, o, SimpleNamespace(n_candidates=rule.n, sigma=rule.sigma, omega=rule.omega)
            )
            .cpu()
            .numpy()
        )


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------
def episode_scores(agent: Agent, rule: Rule, episodes: int, seed: int) -> list[float]:
    """D4RL-normalised returns of full episodes acting with `rule`, from the same start states for every rule."""
    env = agent.script.make_env(agent.env_id)
    torch.manual_seed(seed)  # the rule's own random draws
    scores = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, rule))
            total, done = total + float(reward), terminated or truncated
        scores.append(agent.script.normalized_score(agent.env_id, total))
    env.close()
    return scores


def visited_states(agent: Agent, k: int, seed: int) -> tuple[np.ndarray, list]:
    """K (observation, MuJoCo state) pairs drawn uniformly from the deterministic policy's episodes, one per 20."""
    env = agent.script.make_env(agent.env_id)
    observations, states = [], []
    for i in range(max(1, -(-k // 20))):
        obs, _ = env.reset(seed=seed + 20_000 + i)
        done = False
        while not done:
            observations.append(obs)
            states.append(save_state(env))
            obs, _, terminated, truncated, _ = env.step(agent.policy(obs[None])[0])
            done = terminated or truncated
    env.close()
    pick = np.random.default_rng(seed).choice(len(states), size=k, replace=False)
    return np.stack(observations)[pick], [states[i] for i in pick]


def rollout_envs(agent: Agent, count: int) -> list:
    envs = [agent.script.make_env(agent.env_id) for _ in range(count)]
    for env in envs:
        env.reset(seed=0)  # then only ever set to saved states
    return envs


class Progress:
    """`[i/n] phase (elapsed, about ETA left)` on stderr. The phases differ in cost (a rank-correlation phase steps the
    environment some 30x as often as a rule's), so the ETA times each kind of phase by its own finished phases, and a
    kind with none finished yet by the seconds per environment step seen so far."""

    def __init__(self, phases: list[tuple[str, int]]):  # (kind, environment steps) of every phase, in order
        self.phases, self.took = phases, {}
        self.start = self.last = time.time()

    def eta(self, i: int) -> float | None:
        steps = sum(n for _, n in self.phases[:i])
        per_step = (self.last - self.start) / steps if steps else None
        left = 0.0
        for kind, n in self.phases[i:]:
            if kind in self.took:
                left += float(np.mean(self.took[kind]))
            elif per_step is None:
                return None
            else:
                left += per_step * n
        return left

    def __call__(self, i: int, what: str):
        now = time.time()
        if i > 0:
            self.took.setdefault(self.phases[i - 1][0], []).append(now - self.last)
        self.last = now
        eta = self.eta(i)
        left = "?" if eta is None else f"{eta:.0f}"
        print(
            f"  [{i}/{len(self.phases)}] {what} ({now - self.start:.0f} s, about {left} s left)",
            file=sys.stderr,
            flush=True,
        )


def measure_model(agent: Agent, args: Measure) -> dict:
    start = time.time()
    rules = [Rule("policy"), *([Rule("sample")] if agent.algorithm == "iql" else [])]
    for sigma in args.sigmas:
        rules.append(Rule("noise", sigma))
        rules += [Rule("o3f", sigma, n, omega) for n in args.n_candidates for omega in args.omegas]
    obs, states = visited_states(agent, args.states, args.seed)
    envs = rollout_envs(agent, max(args.states, args.rank_candidates))
    rows, per_state, per_episode = [], {}, {}
    episode_steps = envs[0].spec.max_episode_steps or 1000
    progress = Progress(
        [("rule", args.episodes * episode_steps + args.states * (args.horizon + 1))] * len(rules)
        + [("rank", 2 * args.rank_candidates * args.states * (args.horizon + 1))] * len(args.sigmas)
    )
    for i, rule in enumerate(rules):
        progress(i, f"{rule.name}: {args.episodes} episodes, {args.states} states")
        per_episode[rule.name] = episode_scores(agent, rule, args.episodes, args.seed)
        actions = []
        for k in range(args.states):
            torch.manual_seed(
                args.seed * 1_000_003 + k
            )  # every rule starts from the same draw at this state: a paired comparison
            actions.append(agent.act(obs[k], rule))
        actions = np.stack(actions)
        predicted = (
            agent.q(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(actions, dtype=torch.float32))
            .mean(0)
            .numpy()
        )
        true = true_returns(
            agent.policy, envs, states, actions, args.horizon, agent.gamma, agent.scale_reward, observe=agent.observe
        )
        per_state[rule.name] = (predicted, true)
        score, score_se = mean_se(per_episode[rule.name])
        p, p_se = mean_se(predicted)
        t, t_se = mean_se(true)
        d, d_se = mean_se(np.linalg.norm(actions - agent.policy(obs), axis=1))  # how far from the policy's mean it acts
        rows.append(
            {
                "rule": rule.name,
                "kind": rule.kind,
                "sigma": rule.sigma,
                "n": rule.n,
                "omega": rule.omega,
                "episode_score": score,
                "episode_score_se": score_se,
                "predicted": p,
                "predicted_se": p_se,
                "true": t,
                "true_se": t_se,
                "distance": d,
                "distance_se": d_se,
            }
        )
    for row in rows:  # O3F against the noise baseline at the same sigma: the same start states, the same visited states
        if row["kind"] != "o3f":
            continue
        noise = Rule("noise", row["sigma"]).name
        row["episode_gain"], row["episode_gain_se"] = mean_se(np.subtract(per_episode[row["rule"]], per_episode[noise]))
        row["true_gain"], row["true_gain_se"] = mean_se(per_state[row["rule"]][1] - per_state[noise][1])
        row["predicted_gain"], row["predicted_gain_se"] = mean_se(per_state[row["rule"]][0] - per_state[noise][0])
    rank = []
    for j, sigma in enumerate(args.sigmas):  # can the critic rank R candidates of one state as their true values do?
        progress(
            len(rules) + j,
            f"rank correlation at sigma {sigma:g}: {args.rank_candidates} candidates x {args.states} states",
        )
        horizons = tuple(sorted({h for h in (10, 30, 100) if h < args.horizon} | {args.horizon}))
        correlations, replicates, spreads = [], [], []
        for k in range(args.states):
            torch.manual_seed(args.seed * 7_919 + k)
            o = torch.as_tensor(obs[k], dtype=torch.float32)[None]
            a = agent.base_action(o)
            candidates = (a + sigma * torch.randn(args.rank_candidates, a.shape[-1])).clamp(agent.low, agent.high)
            predicted = agent.q(o.expand(args.rank_candidates, -1), candidates).mean(0).numpy()

            def values(actions, k=k):  # each action's true return from state k, cut at every horizon
                return true_returns(
                    agent.policy,
                    envs,
                    [states[k]] * args.rank_candidates,
                    actions.numpy(),
                    args.horizon,
                    agent.gamma,
                    agent.scale_reward,
                    horizons,
                    agent.observe,
                )

            true = values(candidates)
            # The control: the same candidates moved by 1e-3. How far their true values keep their order bounds what any
            # critic could reach; near 0, the true values' differences are the dynamics' chaos, not the actions'.
            nudged = (candidates + REPLICATE * torch.randn_like(candidates)).clamp(agent.low, agent.high)
            again = values(nudged)
            correlations.append([spearman(predicted, x) for x in true])
            replicates.append([spearman(x, y) for x, y in zip(true, again)])
            spreads.append(float(np.std(true[-1])))
        correlations, replicates = np.array(correlations), np.array(replicates)
        by_horizon = [
            {
                "horizon": h,
                **dict(zip(("spearman", "spearman_se"), mean_se(correlations[:, i]))),
                **dict(zip(("replicate_spearman", "replicate_spearman_se"), mean_se(replicates[:, i]))),
                "ranked_states": int(np.isfinite(correlations[:, i]).sum()),  # the states whose candidates differ
            }
            for i, h in enumerate(horizons)
        ]
        s, s_se = mean_se(spreads)
        rank.append(
            {
                "sigma": sigma,
                **{k: v for k, v in by_horizon[-1].items() if k != "horizon"},
                "true_spread": s,
                "true_spread_se": s_se,
                "by_horizon": by_horizon,
            }
        )
    for env in envs:
        env.close()
    return {
        "model": os.path.relpath(os.path.abspath(agent.path), ROOT),
        "algorithm": agent.algorithm,
        "env_id": agent.env_id,
        "step": agent.step,
        "phase": "offline" if agent.step <= agent.offline_steps else "online",
        "online_steps": max(0, agent.step - agent.offline_steps),
        "dataset_size": agent.dataset_size,
        "train_seed": agent.train_seed,  # the run's --seed: its model's initialisation and batches
        "exp_name": agent.exp_name,
        "seed": args.seed,
        "episodes": args.episodes,
        "states": args.states,
        "horizon": args.horizon,
        "tail_weight": agent.gamma ** (args.horizon + 1),
        "rank_candidates": args.rank_candidates,
        "rules": rows,
        "rank": rank,
        "wall_s": round(time.time() - start, 1),
        # where it was measured: the scores repeat bitwise only where this is the same
        "platform": agent.script.platform_info(torch.device(agent.device)),
    }


def corr(value, se) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.2f} ± {se:.2f}"


def ranked(x: dict, states: int) -> str:
    """A rank correlation and its control, as printed; n/a where no state's candidates differ in true return."""
    n = x.get("ranked_states", states)  # lines measured before the count was kept: every state ranked
    if n == 0:
        return "n/a (the candidates' true returns tie in every state)"
    text = f"{corr(x['spearman'], x['spearman_se'])} ({corr(x['replicate_spearman'], x['replicate_spearman_se'])})"
    return text + (f" in {n} of {states} states" if n < states else "")


def table(result: dict) -> str:
    lines = [
        f"{result['model']}: {result['algorithm']} on {result['env_id']} ({result['dataset_size']:,} transitions), "
        f"step {result['step']:,} ({result['phase']}); {result['episodes']} episodes, K={result['states']} states, "
        f"H={result['horizon']}, seed {result['seed']}",
        "| rule | episode score | distance to the mean | predicted Q | true return (H) | true gain vs noise "
        "| predicted gain vs noise | episode gain vs noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rules"]:
        gains = [
            f"{row[g]:+.2f} ± {row[g + '_se']:.2f}" if g in row else ""
            for g in ("true_gain", "predicted_gain", "episode_gain")
        ]
        lines.append(
            f"| {row['rule']} | {row['episode_score']:.1f} ± {row['episode_score_se']:.1f} "
            f"| {row['distance']:.3f} ± {row['distance_se']:.3f} "
            f"| {row['predicted']:.2f} ± {row['predicted_se']:.2f} "
            f"| {row['true']:.2f} ± {row['true_se']:.2f} | {' | '.join(gains)} |"
        )
    lines.append(
        "rank correlation across candidates of a state, predicted vs true return cut at h steps "
        "(control: true vs true of the candidates nudged by 1e-3):"
    )
    for r in result["rank"]:
        if all(x.get("ranked_states", 1) == 0 for x in r["by_horizon"]):
            lines.append(f"  sigma {r['sigma']:g}: every h: {ranked(r['by_horizon'][0], result['states'])}")
            continue
        lines.append(
            f"  sigma {r['sigma']:g}: "
            + ", ".join(f"h {x['horizon']}: {ranked(x, result['states'])}" for x in r["by_horizon"])
        )
    return "\n".join(lines)


def done_models(path: str | None) -> set:
    if not path or not os.path.isfile(path):
        return set()
    return {(r["model"], r["env_id"]) for r in map(json.loads, filter(str.strip, open(path)))}  # a model on a task


def measure(args: Measure):
    checks = {
        "--episodes must be >= 1": args.episodes >= 1,
        "--states must be >= 2": args.states >= 2,
        "--horizon must be >= 0": args.horizon >= 0,
        "--rank-candidates must be >= 2": args.rank_candidates >= 2,
        "--n-candidates must be >= 1": all(n >= 1 for n in args.n_candidates),
        "--sigmas must be >= 0": all(s >= 0 for s in args.sigmas),
    }
    for message, ok in checks.items():
        if not ok:
            fail(message)
    missing = [m for m in args.models if not os.path.isfile(m)]
    if missing:
        fail(f"no such model: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    done = done_models(args.out)
    for path in args.models:
        env_id = args.env_id or read_model(path)["env_id"]  # known before the data and env load: skips cost nothing
        if (os.path.relpath(os.path.abspath(path), ROOT), env_id) in done:
            print(f"{path}: already in {args.out} on {env_id}, skipped", file=sys.stderr)
            continue
        agent = Agent(path, env_id=env_id)
        print(f"{path}:", file=sys.stderr, flush=True)
        result = measure_model(agent, args)
        print(table(result), flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
        else:
            print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------
def summary_table(results: list) -> str:
    """One row per model and sigma: the frozen rules' episode scores, O3F's gains over noise, the rank correlation."""
    lines = [
        "| algorithm | data | training seed | updates | sigma | policy mean | a ~ pi | noise | O3F N10 | O3F N100 "
        "| episode gain N100 vs noise | vs a ~ pi | vs policy mean | true gain N100 vs noise "
        "| predicted gain N100 vs noise | rank corr. | control | distance to the mean: noise, O3F N100 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    over = lambda g: f"{g[0]:+.1f} ± {g[1]:.1f}" if g else ""  # noqa: E731
    pm = lambda row, key, d=1: f"{row[key]:+.{d}f} ± {row[key + '_se']:.{d}f}" if row and key in row else ""  # noqa: E731
    score = lambda row: f"{row['episode_score']:.1f} ± {row['episode_score_se']:.1f}" if row else ""  # noqa: E731
    distance = lambda row: f"{row['distance']:.2f}" if row and "distance" in row else ""  # noqa: E731
    for r in sorted(
        results, key=lambda r: (r["algorithm"], data(r), r["phase"], r["step"], r["train_seed"], r["model"])
    ):
        rows = {(x["kind"], x["n"], x["sigma"], x["omega"]): x for x in r["rules"]}
        for rank in r["rank"]:
            s = rank["sigma"]
            o3f = rows.get(("o3f", 100, s, 0.0))
            updates = (
                f"{r['step']:,}"
                if r["phase"] == "offline"
                else f"{r['step'] - r['online_steps']:,} + {r['online_steps']:,} online ({r.get('exp_name')})"
            )
            lines.append(
                f"| {r['algorithm'].upper()} | {data(r)} | {r['train_seed']} | {updates} | {s:g} "
                f"| {score(rows.get(('policy', 1, 0.0, 0.0)))} | {score(rows.get(('sample', 1, 0.0, 0.0)))} "
                f"| {score(rows.get(('noise', 1, s, 0.0)))} | {score(rows.get(('o3f', 10, s, 0.0)))} | {score(o3f)} "
                f"| {pm(o3f, 'episode_gain')} | {over(gain_over(r, 'sample', 100, s))} "
                f"| {over(gain_over(r, 'policy', 100, s))} | {pm(o3f, 'true_gain', 2)} "
                f"| {pm(o3f, 'predicted_gain', 2)} "
                f"| {corr(rank['spearman'], rank['spearman_se'])} "
                f"| {corr(rank['replicate_spearman'], rank['replicate_spearman_se'])} "
                f"| {distance(rows.get(('noise', 1, s, 0.0)))}, {distance(o3f)} |"
            )
    return "\n".join(lines)


def glance_table(offline: list, sigma: float = 0.2) -> str:
    """The verdict at a glance: O3F N 100's episode gain at one sigma over each reference (REFERENCES), one row per
    algorithm, data size and reference, one column per pretraining budget; over several training seeds the mean ±
    the standard error over them (their count in brackets), one seed its own standard error."""
    steps = sorted({r["step"] for r in offline})
    lines = [
        "| algorithm | data | O3F N 100 minus | " + " | ".join(f"{budget(s)} updates" for s in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for algorithm, size in sorted({(r["algorithm"], data(r)) for r in offline}, key=lambda c: (c[0] != "iql", c)):
        models = [r for r in offline if (r["algorithm"], data(r)) == (algorithm, size)]
        for reference, label in REFERENCES:
            cells = []
            for step in steps:
                values = [g for r in models if r["step"] == step for g in [gain_over(r, reference, 100, sigma)] if g]
                if not values:
                    cells.append("")
                elif len(values) == 1:
                    cells.append(f"{values[0][0]:+.1f} ± {values[0][1]:.1f}")
                else:
                    mean, se = mean_se([v for v, _ in values])
                    cells.append(f"{mean:+.1f} ± {se:.1f} ({len(values)} seeds)")
            if any(cells):
                lines.append(f"| {algorithm.upper()} | {size} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What O3F's episodes are measured against: the noise baseline at the same sigma (the paper's), the policy's own
# sample a ~ pi (IQL's base action, before noise or selection) and the deterministic policy (IQL: the Gaussian's
# mean; LAPO: pi(s), also its base action). O3F's gain over noise includes undoing the noise; the others show what
# the selection adds beyond that.
REFERENCES = (("noise", "noise"), ("sample", "a ~ pi"), ("policy", "the deterministic policy"))


def gain_over(r: dict, reference: str, n: int = 100, sigma: float = 0.2) -> tuple | None:
    """O3F N `n`'s episode score minus `reference`'s (a kind of REFERENCES), over the same start states, and its
    standard error (against noise: over the per-episode differences; else from the two scores' standard errors);
    None where either was not measured."""
    rows = {(x["kind"], x["n"], x["sigma"], x["omega"]): x for x in r["rules"]}
    o3f = rows.get(("o3f", n, sigma, 0.0))
    if reference == "noise":
        return (o3f["episode_gain"], o3f["episode_gain_se"]) if o3f and "episode_gain" in o3f else None
    ref = rows.get((reference, 1, 0.0, 0.0))
    if not (o3f and ref):
        return None
    return o3f["episode_score"] - ref["episode_score"], float(
        np.hypot(o3f["episode_score_se"], ref["episode_score_se"])
    )


def data(r: dict) -> str:
    """The data a model learnt from, as tables and figures name it: its task (embedded- and -1m dropped) and size, so
    that two datasets of one size (the medium and the random 1M) stay apart."""
    name = r.get("env_id", "").removeprefix("embedded-").removesuffix("-1m")
    return f"{name}, {r['dataset_size'] // 1000}k" if name else f"{r['dataset_size'] // 1000}k"


def budget(n: int) -> str:
    """A number of updates as the tables write it: 300k, 1000k; a small one in full."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def online_table(online: list, offline: list) -> str:
    """Frozen models along fine-tuning, one row per rule that fine-tuned and online step, the runs' seeds pooled:
    mean ± standard error over the seeds' models (one model: its own standard error) of O3F N 100's episode gain
    over noise at each sigma, and at sigma 0.2 the rules' episode scores, O3F N 100's gain over a ~ pi and over
    the deterministic policy, and the rank correlation with the 10-step return. The first row is the pretrained
    models those runs started from, where measured. A run's seed is its --seed: where the seeds fine-tune one
    pretrained model (the LAPO study at UTD 20), they are fine-tuning seeds, not training seeds."""
    lines = [
        "| fine-tuned by | online steps | run seeds | policy mean | a ~ pi | noise | O3F N100 "
        "| episode gain N100 vs noise, sigma 0.05 | sigma 0.1 | sigma 0.2 | vs a ~ pi, sigma 0.2 "
        "| vs policy mean, sigma 0.2 | rank corr. h 10, sigma 0.2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def measured(row, key):
        return (row[key], row[key + "_se"]) if row and key in row and np.isfinite(row[key]) else None

    def rule(kind, n=1, sigma=0.2):
        return lambda r: next(
            (x for x in r["rules"] if (x["kind"], x["n"], x["sigma"], x["omega"]) == (kind, n, sigma, 0.0)), None
        )

    def rank_h10(r):
        rank = next((x for x in r["rank"] if x["sigma"] == 0.2), {"by_horizon": []})
        return measured(next((y for y in rank["by_horizon"] if y["horizon"] == 10), None), "spearman")

    def pooled(models, get, d=1, sign=""):
        """The mean over the models; its standard error over them, or the one model's own."""
        values = [v for v in map(get, models) if v is not None]
        if not values:
            return ""
        mean, se = mean_se([v for v, _ in values])
        return f"{mean:{sign}.{d}f} ± {se if len(values) > 1 else values[0][1]:.{d}f}"

    policy = lambda r: measured(next(x for x in r["rules"] if x["kind"] == "policy"), "episode_score")  # noqa: E731
    score = lambda kind, n=1: lambda r: measured(rule(kind, n)(r), "episode_score")  # noqa: E731
    gain = lambda sigma: lambda r: measured(rule("o3f", 100, sigma)(r), "episode_gain")  # noqa: E731
    sample = lambda r: measured(next((x for x in r["rules"] if x["kind"] == "sample"), None), "episode_score")  # noqa: E731

    groups = {}  # runs pooled by algorithm, data size, pretraining updates (the switch), rule and online step
    for r in online:
        name, switch = r.get("exp_name") or "?", r["step"] - r["online_steps"]
        groups.setdefault((r["algorithm"], data(r), switch, name, r["online_steps"]), []).append(r)
        for start in offline:  # the pretrained model the run started from
            if (start["algorithm"], data(start), start["train_seed"], start["step"]) == (
                r["algorithm"],
                data(r),
                r["train_seed"],
                switch,
            ):
                key = (r["algorithm"], data(r), switch, "pretrained model, at the switch", 0)
                group = groups.setdefault(key, [])
                group += [start] if start not in group else []
    for (algorithm, size, switch, name, steps), models in sorted(
        groups.items(), key=lambda g: (*g[0][:3], g[0][4] > 0, g[0])
    ):
        models = sorted(models, key=lambda r: r["train_seed"])
        lines.append(
            f"| {name} ({algorithm.upper()}, {size} data, {budget(switch)} updates) | {steps:,} "
            f"| {', '.join(str(r['train_seed']) for r in models)} | {pooled(models, policy)} "
            f"| {pooled(models, sample)} | {pooled(models, score('noise'))} | {pooled(models, score('o3f', 100))} "
            f"| {pooled(models, gain(0.05), sign='+')} | {pooled(models, gain(0.1), sign='+')} "
            f"| {pooled(models, gain(0.2), sign='+')} | {pooled(models, lambda r: gain_over(r, 'sample'), sign='+')} "
            f"| {pooled(models, lambda r: gain_over(r, 'policy'), sign='+')} "
            f"| {pooled(models, rank_h10, d=2, sign='+')} |"
        )
    return "\n".join(lines)


def plot(args: Plot):
    import matplotlib

    matplotlib.use("Agg")

    if not os.path.isfile(args.results):
        fail(f"--results {args.results}: no such file")
    results = [json.loads(line) for line in open(args.results) if line.strip()]
    offline = [r for r in results if r["phase"] == "offline"]
    online = [r for r in results if r["phase"] == "online"]
    if not results:
        fail(f"{args.results}: no models to draw")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.results)), "premise.png")
    if offline:
        print(plot_offline(offline, out))
    if online:
        print(plot_online(online, offline, os.path.join(os.path.dirname(out), "premise_online.png")))
    if offline:
        print(
            "\nAt a glance: O3F N 100's episode gain at sigma 0.2 over noise, a ~ pi and the deterministic policy, "
            "by pretraining budget:\n" + glance_table(offline)
        )
        print("\nAlong pretraining (one row per model and sigma):\n" + summary_table(offline))
    if online:
        print("\nAlong fine-tuning (the runs' seeds pooled; N 100):\n" + online_table(online, offline))


def plot_offline(offline: list, out: str) -> str:
    """Frozen models along pretraining: one column per algorithm and data size, one row per measure (O3F N 100's
    episode gain over noise at each sigma; the rules' episode scores, the true-return gain and the critics'
    ranking at sigma 0.2); lines join a training seed's models, markers tell the training seeds apart."""
    import matplotlib.pyplot as plt

    columns = sorted({(r["algorithm"], data(r)) for r in offline}, key=lambda c: (c[0] != "iql", c))
    seeds = sorted({r["train_seed"] for r in offline})
    sigmas = sorted({x["sigma"] for r in offline for x in r["rules"] if x["kind"] == "o3f"})  # one colour each
    horizons = sorted({y["horizon"] for r in offline for x in r["rank"] for y in x["by_horizon"]})
    markers = "os^Dv<>PX*"
    rows = [
        "episode score gain, O3F N 100 - noise\n(D4RL-normalised)",
        "episode score at sigma 0.2\n(D4RL-normalised)",
        "true return gain, O3F N 100 - noise,\nsigma 0.2 (critic units, H steps)",
        "rank corr. across candidates, sigma 0.2,\npredicted vs true return cut at h",
    ]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(5 * len(columns), 13), squeeze=False, sharex=True, sharey="row"
    )

    def rule(r, kind, n=1, sigma=0.2):
        return next((x for x in r["rules"] if (x["kind"], x["n"], x["sigma"], x["omega"]) == (kind, n, sigma, 0)), None)

    def draw(ax, x, y, e, colour, marker, **kw):
        ax.errorbar(x, y, e, color=colour, marker=marker, capsize=3, markersize=5, **kw)

    for col, (algorithm, size) in enumerate(columns):
        for seed in seeds:
            models = sorted(
                (r for r in offline if (r["algorithm"], data(r), r["train_seed"]) == (algorithm, size, seed)),
                key=lambda r: r["step"],
            )
            if not models:
                continue
            marker = markers[seeds.index(seed) % len(markers)]
            for c, sigma in enumerate(sigmas):  # row 0: the gain at every sigma, N 100 (the paper's)
                pts = [(r["step"], rule(r, "o3f", 100, sigma)) for r in models if rule(r, "o3f", 100, sigma)]
                if pts:
                    x = np.array([p[0] for p in pts]) * 1.06 ** (c - 1)
                    y, e = [p[1]["episode_gain"] for p in pts], [p[1]["episode_gain_se"] for p in pts]
                    draw(axes[0, col], x, y, e, f"C{c}", marker)
            for c, (kind, n) in enumerate((("policy", 1), ("noise", 1), ("o3f", 100))):  # row 1: the scores
                pts = [
                    (
                        r["step"],
                        next(x for x in r["rules"] if x["kind"] == "policy") if kind == "policy" else rule(r, kind, n),
                    )
                    for r in models
                ]
                pts = [p for p in pts if p[1]]
                x = np.array([p[0] for p in pts]) * 1.06 ** (c - 1)
                y, e = [p[1]["episode_score"] for p in pts], [p[1]["episode_score_se"] for p in pts]
                draw(axes[1, col], x, y, e, ["k", "C3", "C2"][c], marker)
            pts = [(r["step"], rule(r, "o3f", 100)) for r in models if rule(r, "o3f", 100)]  # row 2: the true gain
            if pts:
                y, e = [p[1]["true_gain"] for p in pts], [p[1]["true_gain_se"] for p in pts]
                draw(axes[2, col], [p[0] for p in pts], y, e, "C2", marker)
            for c, h in enumerate(horizons):  # row 3: the ranking, with its control (faint)
                pts = [
                    (r["step"], y)
                    for r in models
                    for x in r["rank"]
                    if x["sigma"] == 0.2
                    for y in x["by_horizon"]
                    if y["horizon"] == h
                ]
                if not pts:
                    continue
                x = np.array([p[0] for p in pts]) * 1.06 ** (c - 1)
                y, e = [p[1]["spearman"] for p in pts], [p[1]["spearman_se"] for p in pts]
                draw(axes[3, col], x, y, e, f"C{c}", marker)
                y, e = [p[1]["replicate_spearman"] for p in pts], [p[1]["replicate_spearman_se"] for p in pts]
                draw(axes[3, col], x, y, e, f"C{c}", marker, alpha=0.35, mfc="none", ls=":")
        axes[0, col].set_title(f"{algorithm.upper()}, {size} transitions", fontsize=11)
        for row in range(len(rows)):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if row != 1:
                ax.axhline(0, color="k", lw=0.8)
            if col == 0:
                ax.set_ylabel(rows[row], fontsize=9)
        axes[-1, col].set_xlabel("offline updates")
    legends = [
        [(f"C{c}", "-", f"sigma {sigma:g}") for c, sigma in enumerate(sigmas)],
        [("k", "-", "policy mean"), ("C3", "-", "noise"), ("C2", "-", "O3F N 100")],
        [("C2", "-", "O3F N 100 - noise")],
        [(f"C{c}", "-", f"h {h}") for c, h in enumerate(horizons)] + [("grey", ":", "faint: the control")],
    ]
    for row, entries in enumerate(legends):
        handles = [plt.Line2D([], [], color=c, ls=ls, label=label) for c, ls, label in entries]
        if row == 0:
            handles += [
                plt.Line2D(
                    [], [], color="grey", marker=markers[i % len(markers)], ls="none", label=f"training seed {seed}"
                )
                for i, seed in enumerate(seeds)
            ]
        axes[row, -1].legend(handles=handles, fontsize=7, loc="best")
    return save_figure(fig, "Does O3F's premise hold? Frozen models along pretraining (± 1 standard error)", out)


def plot_online(online: list, offline: list, out: str) -> str:
    """Frozen models along fine-tuning, one line per run, from the switch (the pretrained model, where it was
    measured) on: O3F's gain over noise, and the episode scores of the rules, at N 100 and sigma 0.2 (the
    paper's). The colour is the rule that fine-tuned the run and the pretraining budget it started from, the marker
    its training seed."""
    import matplotlib.pyplot as plt

    def pick(r, kind, n=1):
        return next((x for x in r["rules"] if (x["kind"], x["n"], x["sigma"], x["omega"]) == (kind, n, 0.2, 0.0)), None)

    def run(r):  # the run a model comes from: algorithm, data size, pretraining updates, training seed, rule
        return r["algorithm"], data(r), r["step"] - r["online_steps"], r["train_seed"], r.get("exp_name")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = sorted({run(r) for r in online}, key=str)
    groups = sorted({(a, size, switch, name) for a, size, switch, _, name in runs}, key=str)
    seeds = sorted({seed for *_, seed, _ in runs})
    markers = "os^Dv<>PX*"
    for algorithm, size, switch, seed, name in runs:
        colour = f"C{groups.index((algorithm, size, switch, name)) % 10}"
        marker = markers[seeds.index(seed) % len(markers)]
        models = sorted((r for r in online if run(r) == (algorithm, size, switch, seed, name)), key=lambda r: r["step"])
        start = [
            r
            for r in offline
            if (r["algorithm"], data(r), r["train_seed"], r["step"]) == (algorithm, size, seed, switch)
        ]
        models = [r for r in start[-1:] + models if pick(r, "o3f", 100) and pick(r, "noise")]  # measured at N 100
        if not models:
            continue
        x = [r["online_steps"] for r in models]
        gain = [pick(r, "o3f", 100) for r in models]
        axes[0].errorbar(
            x,
            [g["episode_gain"] for g in gain],
            [g["episode_gain_se"] for g in gain],
            color=colour,
            marker=marker,
            capsize=3,
            alpha=0.8,
        )
        for kind, n, ls in (("policy", 1, ":"), ("noise", 1, "--"), ("o3f", 100, "-")):
            rows = [
                pick(r, kind, n) if kind != "policy" else next(x for x in r["rules"] if x["kind"] == "policy")
                for r in models
            ]
            axes[1].plot(
                x,
                [y["episode_score"] for y in rows],
                color=colour,
                ls=ls,
                marker=marker,
                markersize=4,
                alpha=0.8,
            )  # the colour: the rule that fine-tuned the model; the line style: the rule measured on it
    for c, (algorithm, size, switch, name) in enumerate(groups):
        label = f"fine-tuned by {name} ({algorithm.upper()}, {size} data, {budget(switch)} updates)"
        axes[0].plot([], [], color=f"C{c % 10}", lw=3, label=label)
    for seed, marker in zip(seeds, markers * len(seeds)):
        axes[0].plot([], [], color="k", marker=marker, ls="none", label=f"training seed {seed}")
    for kind, ls in (("measured: O3F N 100", "-"), ("measured: policy mean", ":"), ("measured: noise", "--")):
        axes[1].plot([], [], color="k", ls=ls, label=kind)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_title("episode score gain, O3F N 100 - noise (sigma 0.2), frozen model", fontsize=10)
    axes[1].set_title("episode score of each rule (policy mean, noise, O3F), frozen model", fontsize=10)
    for ax in axes:
        ax.set_xlabel("online steps of the run the model comes from (0: the switch)")
        ax.set_ylabel("D4RL-normalised")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].legend(fontsize=8, loc="center right")
    return save_figure(fig, "The premise along fine-tuning (± 1 standard error)", out)


def save_figure(fig, title: str, out: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    command = tyro.extras.subcommand_cli_from_dict({"measure": Measure, "plot": Plot})
    measure(command) if isinstance(command, Measure) else plot(command)
