"""Direct checks of what --cudagraphs records, through the scripts' own block_runner and replay buffer (a GPU run of
lab/gpu/gpu_session.sh starts with them; on a CPU they run the eager loop, the dry mode that tests this file):

    python lab/gpu/graph_checks.py          # one JSON line per check, then a line of all that failed (exit 1 if any)

1. draws: a recorded draw of a batch (the buffer's `sample`, as inside every update) gives another batch at every
   replay, and a row added to the buffer after the recording is drawn (the buffer's size is a device tensor the graph
   reads, updated in place);
2. updates: for each script's update, recorded as the online loop records it (one step, its third call), two replays
   run (their losses change with the parameters they move) and stay finite.
"""

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # the scripts, at the repository's top
    sys.path.insert(0, ROOT)

import awac  # noqa: E402
import cql_to_sac  # noqa: E402
import o3f_iql  # noqa: E402
import o3f_lapo  # noqa: E402


def spaces(obs_dim: int = 17, act_dim: int = 6):
    import gymnasium as gym

    box = lambda n: gym.spaces.Box(-1, 1, (n,))  # noqa: E731
    return SimpleNamespace(observation_space=box(obs_dim), action_space=box(act_dim))


def buffer(script, device, n: int = 1000, online: int = 10, obs_dim: int = 17, act_dim: int = 6):
    data = {
        "observations": np.random.randn(n, obs_dim).astype(np.float32),
        "actions": np.random.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": np.random.randn(n).astype(np.float32),
        "next_observations": np.random.randn(n, obs_dim).astype(np.float32),
        "terminals": np.zeros(n, np.float32),
    }
    stats = {"observations": data["observations"], "actions": data["actions"]}  # the buffer takes `data` apart
    return script.ReplayBuffer(data, n + online, device), stats


def recorded(script, fn, device):
    """`fn` through the script's block_runner, recorded as a one-step graph on a GPU (its third call), a loop on a CPU;
    returns a function that replays it (or calls it)."""
    updates = script.block_runner(fn, SimpleNamespace(cudagraphs=device.type == "cuda", block=1))
    for _ in range(3):  # the third call records
        updates(1)
    return lambda: updates(1)


def check_draws(device) -> dict:
    rb, _ = buffer(o3f_iql, device)
    draw = recorded(o3f_iql, lambda: rb.sample(256, online_fraction=1.0)[2], device)  # the online rewards' column
    first, second = draw(), draw()
    online_before = bool((first != 0).any())  # no online row yet: every draw falls back to offline rows
    rb.add(np.full(17, 7.0), torch.zeros(6, device=device), 12345.0, np.full(17, 7.0), False)
    after = draw()
    return {
        "check": "draws",
        "replays_differ": bool((first != second).any()),
        "row_added_after_recording_drawn": bool((after == 12345.0).all()),
        "offline_rows_before_any_online": online_before,
        "ok": bool((first != second).any() and (after == 12345.0).all() and online_before),
    }


def script_updates(device):
    """(name, script, one step's update as the loop calls it, the networks it trains)."""
    iql_args = o3f_iql.Args(num_critics=2, expectile=0.7, beta=3.0, sigma=0.2, cudagraphs=device.type == "cuda")
    iql = o3f_iql.Agent(spaces(), iql_args, device)
    rb, stats = buffer(o3f_iql, device)
    yield "iql_update", o3f_iql, lambda: o3f_iql.iql_update(iql, rb.sample(64), 0.7, iql_args), iql.qf
    lapo_args = o3f_lapo.Args(num_critics=5, doubleq_min=1.0, sigma=0.2, cudagraphs=device.type == "cuda")
    lapo = o3f_lapo.Agent(spaces(), stats, -10.0, 10.0, lapo_args, device)
    yield "lapo_critic_update", o3f_lapo, lambda: o3f_lapo.critic_update(lapo, rb.sample(64), lapo_args), lapo.qf
    yield "lapo_actor_update", o3f_lapo, lambda: o3f_lapo.actor_update(lapo, rb.sample(64), lapo_args), lapo.cvae
    cql_args = cql_to_sac.Args(cudagraphs=device.type == "cuda")
    cql = cql_to_sac.Agent(spaces(), cql_args, device)
    update = lambda: cql_to_sac.cql_update(cql, rb.sample(64), True, cql_args.cql_target_gap, cql_args)  # noqa: E731
    yield "cql_update", cql_to_sac, update, cql.qf
    awac_args = awac.Args(cudagraphs=device.type == "cuda")
    agent = awac.Agent(spaces(), awac_args, device)
    yield "awac_update", awac, lambda: awac.awac_update(agent, rb.sample(64), awac_args.lam, awac_args), agent.qf


def check_updates(device) -> list:
    rows = []
    for name, script, update, net in script_updates(device):
        replay = recorded(script, update, device)
        before = [p.detach().clone() for p in net.parameters()]
        first, second = replay(), replay()
        losses = [{k: float(v.detach()) for k, v in out.items()} for out in (first, second)]
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(net.parameters(), before))
        finite = all(np.isfinite(v) for out in losses for v in out.values())
        differ = any(losses[0][k] != losses[1][k] for k in losses[0])
        ok = finite and differ and moved > 0
        rows.append({"check": name, "losses_change_between_replays": differ, "parameters_moved": moved, "ok": ok})
    return rows


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [check_draws(device), *check_updates(device)]
    for row in rows:
        print(json.dumps({"device": device.type, **row}), flush=True)
    failed = [row["check"] for row in rows if not row["ok"]]
    print(json.dumps({"device": device.type, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    sys.exit(main())
