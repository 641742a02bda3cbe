"""--compile's machinery in the plumbing: GraphAdam is torch.optim.Adam, and every update traces as one graph."""

import contextlib
import copy
import functools
import os
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch
import torch.nn as nn

import awac
import cql_to_sac
import o3f_iql
import o3f_lapo
from conftest import COMPILE, ROOT, random_batch, stand_in_cuda_graphs

sys.path.insert(0, os.path.join(ROOT, "lab", "speed"))


def regression(seed=0):
    """A small network and a regression batch whose every gradient is well away from 0 (Adam's steps then do not
    hinge on rounding: see conftest.smooth_graph_adam)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    return net, torch.randn(64, 5), torch.randn(64, 3)


def train(net, optimizer, x, y, steps):
    for _ in range(steps):
        loss = ((net(x) - y) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_graph_adam_steps_as_torch_optim_adam_does():
    ours, x, y = regression()
    theirs = copy.deepcopy(ours)
    graph_adam, adam = o3f_iql.GraphAdam(ours.parameters(), 1e-2), torch.optim.Adam(theirs.parameters(), 1e-2)
    train(ours, graph_adam, x, y, 20)
    train(theirs, adam, x, y, 20)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.allclose(next(ours.parameters()), next(regression()[0].parameters()))  # it did move them
    assert graph_adam.state[next(ours.parameters())]["step"].item() == 20
    ours_state, theirs_state = graph_adam.state_dict()["state"], adam.state_dict()["state"]
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        assert ours_state[key].keys() == theirs_state[key].keys()  # step, exp_avg, exp_avg_sq: the same layout
        for name, value in ours_state[key].items():
            assert torch.allclose(value, theirs_state[key][name], atol=1e-6), name


def test_a_checkpoint_moves_between_the_eager_and_the_compiled_optimiser():
    """A run pretrained eagerly (torch.optim.Adam) fine-tunes under --compile (GraphAdam), and back: the moments and
    the step count carry over, so the next steps are the ones the other optimiser would have taken."""
    net, x, y = regression(1)
    adam = torch.optim.Adam(net.parameters(), 1e-2)
    train(net, adam, x, y, 5)
    for target in (o3f_iql.GraphAdam, torch.optim.Adam):
        continued, reference = copy.deepcopy(net), copy.deepcopy(net)
        loaded = target(continued.parameters(), 1e-2) if target is o3f_iql.GraphAdam else target(continued.parameters())
        loaded.load_state_dict(copy.deepcopy(adam.state_dict()))  # as from a file: tensors of its own
        same = torch.optim.Adam(reference.parameters(), 1e-2)
        same.load_state_dict(copy.deepcopy(adam.state_dict()))
        train(continued, loaded, x, y, 5)
        train(reference, same, x, y, 5)
        for p, q in zip(continued.parameters(), reference.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_graph_adam_clears_gradients_to_none():
    net, x, y = regression()
    optimizer = o3f_iql.GraphAdam(net.parameters(), 1e-3)
    ((net(x) - y) ** 2).mean().backward()
    optimizer.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_the_optimiser_follows_the_compile_flags():
    params = list(nn.Linear(2, 2).parameters())
    eager = o3f_iql.adam(params, 1e-3, SimpleNamespace(compile=False, cudagraphs=False))
    assert type(eager) is torch.optim.Adam and eager.defaults["fused"]  # eager: torch.optim's fused kernels
    assert not eager.defaults["capturable"]
    graphed = o3f_iql.adam(params, 1e-3, SimpleNamespace(compile=False, cudagraphs=True))  # a CUDA graph replays its
    assert type(graphed) is torch.optim.Adam and graphed.defaults["fused"] and graphed.defaults["capturable"]  # step
    for cudagraphs in (False, True):  # --compile traces GraphAdam, also where its graph is then recorded
        assert (
            type(o3f_iql.adam(params, 1e-3, SimpleNamespace(compile=True, cudagraphs=cudagraphs))) is o3f_iql.GraphAdam
        )


def spaces(obs_dim=4, act_dim=2):
    return SimpleNamespace(
        observation_space=gym.spaces.Box(-1, 1, (obs_dim,)), action_space=gym.spaces.Box(-1, 1, (act_dim,))
    )


def updates():
    """Each script's updates, with an agent built as --compile builds it, and their arguments."""
    compile_flags = dict(compile=True, cudagraphs=False)
    iql_args = o3f_iql.Args(num_critics=3, expectile=0.7, beta=3.0, sigma=0.2, **compile_flags)
    iql = o3f_iql.Agent(spaces(), iql_args, torch.device("cpu"))
    yield "iql_update", o3f_iql.iql_update, (iql, random_batch(4), 0.7, iql_args)
    lapo_args = o3f_lapo.Args(num_critics=3, doubleq_min=1.0, sigma=0.2, **compile_flags)
    stats = {"observations": torch.randn(50, 4).numpy(), "actions": torch.rand(50, 2).numpy() * 2 - 1}
    lapo = o3f_lapo.Agent(spaces(), stats, -10.0, 10.0, lapo_args, torch.device("cpu"))
    yield "lapo_critic_update", o3f_lapo.critic_update, (lapo, random_batch(4), lapo_args)
    yield "lapo_actor_update", o3f_lapo.actor_update, (lapo, random_batch(4), lapo_args)
    cql_args = cql_to_sac.Args(**compile_flags)
    cql = cql_to_sac.Agent(spaces(), cql_args, torch.device("cpu"))
    yield "cql_update", cql_to_sac.cql_update, (cql, random_batch(4), True, cql_args.cql_target_gap, cql_args)
    yield "sac_update", cql_to_sac.cql_update, (cql, random_batch(4), False, cql_args.cql_target_gap, cql_args)
    awac_args = awac.Args(**compile_flags)
    agent = awac.Agent(spaces(), awac_args, torch.device("cpu"))
    yield "awac_update", awac.awac_update, (agent, random_batch(4), awac_args.lam, awac_args)


@pytest.mark.parametrize(
    "name", ["iql_update", "lapo_critic_update", "lapo_actor_update", "cql_update", "sac_update", "awac_update"]
)
def test_every_update_traces_as_one_graph(name):
    """What speed.py --compile reports: forward, backward, the optimiser's step and the Polyak update in one graph."""
    import speed

    fn, inputs = next((fn, inputs) for update, fn, inputs in updates() if update == name)
    assert speed.graph_breaks(fn, *inputs) == 0


def test_torch_optims_own_step_would_cut_the_update_into_graphs():
    """The control: with the eager optimiser (torch.optim.Adam) and autograd left eager, as torch.compile traces by
    default, the same update is cut into graphs. In a process of its own: dynamo caches its tracing rules per
    function, so once a process has traced backward() (the tests above) it keeps doing so."""
    code = """
import sys, torch, gymnasium as gym
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
import o3f_iql
args = o3f_iql.Args(num_critics=3, expectile=0.7, beta=3.0, sigma=0.2)  # no --compile: torch.optim.Adam
box = lambda n: gym.spaces.Box(-1, 1, (n,))
agent = o3f_iql.Agent(SimpleNamespace(observation_space=box(4), action_space=box(2)), args, torch.device("cpu"))
batch = (torch.randn(8, 4), torch.rand(8, 2), torch.randn(8), torch.randn(8, 4), torch.zeros(8))
print(torch._dynamo.explain(o3f_iql.iql_update)(agent, batch, 0.7, args).graph_break_count)
"""
    result = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 0


def test_each_compiled_function_keeps_a_graph_cache_of_its_own():
    """dynamo caches graphs per code object, at most 8, and under fullgraph=True a 9th is a hard error: maybe_compile()
    gives each function's wrapper a code object of its own, so a process that compiles many functions (speed.py, this
    test suite) compiles each of them."""
    from torch._dynamo.utils import counters

    functions = [eval(f"lambda x: x * {k} + 1") for k in range(12)]  # 12 functions, 12 code objects
    wrapped = [o3f_iql.maybe_compile(fn, SimpleNamespace(compile=True, cudagraphs=False)) for fn in functions]
    before = counters["stats"]["unique_graphs"]
    assert [fn(torch.ones(3))[0].item() for fn in wrapped] == [float(k + 1) for k in range(12)]
    assert counters["stats"]["unique_graphs"] - before == 12


def test_an_update_this_torch_cannot_trace_whole_says_so_once_and_runs_eagerly(capsys):
    """--compile on a torch whose dynamo cannot trace an update as one graph: one line, then the update runs as eager
    code does, from its first call (tracing failed before any of it ran, so nothing ran twice or was half done)."""
    ran = []

    def update(x):
        ran.append(x.sum().item())  # in eager code, once per call
        torch._dynamo.graph_break()  # what this torch "cannot trace" stands for: under fullgraph, an error
        return {"double": 2 * x}

    compiled = o3f_iql.maybe_compile(update, COMPILE)
    outputs = [compiled(torch.full((2,), float(i)))["double"] for i in range(3)]
    assert [o.tolist() for o in outputs] == [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]] and ran == [0.0, 2.0, 4.0]
    message = f"--compile: torch {torch.__version__} cannot trace update whole: it runs eagerly"
    assert capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize("name", ["iql_update", "lapo_critic_update", "lapo_actor_update", "cql_update", "awac_update"])
def test_from_the_third_call_where_cudagraphs_records_it_a_compiled_update_compiles_nothing(name, monkeypatch):
    """block_runner records a compiled update at its third call: dynamo may compile at the first two (the gradients
    are None before the first backward, tensors after it), and a compile while a CUDA graph records fails the capture,
    so from the third call on every call must find its graph (dynamo's guards alone: its eager backend)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    fn, inputs = next((fn, inputs) for update, fn, inputs in updates() if update == name)
    compiled, graphs = o3f_iql.maybe_compile(fn, COMPILE), [counters["stats"]["unique_graphs"]]
    for _ in range(6):
        compiled(*inputs)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] > graphs[0]  # compiled at its first call
    assert graphs[3:] == [graphs[2]] * 4, graphs  # calls 3 to 6: no compile


def test_a_compile_while_a_cuda_graph_records_is_an_error(monkeypatch):
    """block_runner records at a compiled update's third call, after that call's own steps; were dynamo to compile
    while recording (a guard that fails just then), the capture would break, so the recording raises instead of going
    on with a broken graph. A stand-in of torch.cuda's graph API (recording runs the step, and may change what the
    update's guard reads as it starts); dynamo's eager backend compiles."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    mode, at_recording = ["double"], ["double"]

    @contextlib.contextmanager
    def recording(graph, pool):
        mode[0] = at_recording[0]  # what the update's guard reads, as the recording starts
        yield

    stand_in_cuda_graphs(monkeypatch, lambda: SimpleNamespace(), recording)

    def update(x):  # dynamo guards on the string mode[0]: another one, another compile
        return {"y": 2 * x if mode[0] == "double" else 3 * x}

    x = torch.ones(3)
    updates = o3f_iql.block_runner(o3f_iql.maybe_compile(update, COMPILE), SimpleNamespace(cudagraphs=True, block=1))
    assert [updates(1, x)["y"].tolist() for _ in range(3)] == [[2.0] * 3] * 3  # recorded at the third call: no compile
    mode[0], at_recording[0] = "double", "triple"
    updates = o3f_iql.block_runner(o3f_iql.maybe_compile(update, COMPILE), SimpleNamespace(cudagraphs=True, block=1))
    updates(1, x), updates(1, x)  # the warm-up compiles as it likes
    with pytest.raises(RuntimeError, match="recompile"):
        updates(1, x)  # its own step, then the recording: mode[0] is "triple" there, a compile while recording
