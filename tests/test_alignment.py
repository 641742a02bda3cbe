"""The scripts are aligned line by line: a diff shows only what differs in the method."""

import ast
import difflib
import os

import pytest

from conftest import ROOT


def read(name):
    return open(os.path.join(ROOT, name)).read().splitlines()


def changed_lines(a, b):
    """Lines of `a` and of `b` that a diff marks as changed."""
    out_a, out_b = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out_a += a[i1:i2]
            out_b += b[j1:j2]
    return out_a, out_b


def selection_lines(lines) -> set:
    """The lines where the two IQL scripts may differ: the module docstring, the experiment's name, the method's
    flags (from `# O3F` or `# Exploration noise` to the blank line after them), the acting section up to the
    evaluation's `policy_action`, the check of --n-candidates, and the loop's comment on lines 2-4."""
    allowed = set(range(next(k for k, line in enumerate(lines) if k > 0 and line.endswith('"""')) + 1))
    for k, line in enumerate(lines):
        if (
            line.startswith("    exp_name:")
            or '"--n-candidates must be' in line
            or "ALGO LOGIC" in line
            and "lines 2-4" in line
        ):
            allowed.add(k)
    flags = next(k for k, line in enumerate(lines) if line in ("    # O3F", "    # Exploration noise"))
    allowed |= set(range(flags, lines.index("", flags)))
    acting = next(k for k, line in enumerate(lines) if line.startswith("# Acting:"))
    allowed |= set(
        range(acting, lines.index("def policy_action(agent: Agent, obs: torch.Tensor) -> torch.Tensor:") - 1)
    )
    return allowed


def outside_the_selection(a, b) -> list:
    """The changed lines of a diff between two IQL scripts that lie outside either one's selection lines."""
    allowed_a, allowed_b = selection_lines(a), selection_lines(b)
    outside = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            outside += [a[i] for i in range(i1, i2) if i not in allowed_a]
            outside += [b[j] for j in range(j1, j2) if j not in allowed_b]
    return outside


def test_iql_noise_differs_from_o3f_iql_only_in_the_action_selection():
    o3f, noise = read("o3f_iql.py"), read("iql_noise.py")
    only_o3f, only_noise = changed_lines(o3f, noise)
    assert 0 < len(only_o3f) + len(only_noise) <= 40
    assert outside_the_selection(o3f, noise) == []


@pytest.mark.parametrize(
    "old, new",
    [
        (
            "    vf_loss = expectile_loss(target_q - agent.vf(obs), expectile)",
            "    vf_loss = 0.5 * expectile_loss(target_q - agent.vf(obs), expectile)",
        ),
        (
            "        self.rewards[i], self.dones[i] = float(reward), float(done)",
            "        self.rewards[i] = float(reward)",
        ),
        ("    tau: float = 0.005", "    tau: float = 0.01"),
    ],
)
def test_a_change_outside_the_selection_is_caught(old, new):
    """The check can fail: one changed line in the update, the plumbing or a shared flag is outside the selection."""
    o3f, noise = read("o3f_iql.py"), read("iql_noise.py")
    assert noise.count(old) == 1
    changed = [new if line == old else line for line in noise]
    assert outside_the_selection(o3f, changed) == [old, new]  # the line in each script


SCRIPTS = ("o3f_iql.py", "iql_noise.py", "o3f_lapo.py", "cql_to_sac.py", "awac.py")
PLUMBING = "# PLUMBING:"


def plumbing(lines):
    """The marked block at the end of a script: tasks and data, buffer, flags, bookkeeping, checkpoints, guards."""
    start = next(k for k, line in enumerate(lines) if line.startswith(PLUMBING))
    return lines[start - 1 :]


@pytest.mark.parametrize("other", SCRIPTS[1:])
def test_the_scripts_share_their_plumbing_block_verbatim(other):
    iql, lines = plumbing(read("o3f_iql.py")), plumbing(read(other))
    assert len(iql) > 400  # the whole block, to the end of the file
    assert iql == lines


def test_the_plumbing_is_no_larger_than_its_job():
    """Tasks and data, buffer, flags, bookkeeping, checkpoints, guards, the compile machinery and the update blocks in
    at most 645 lines (where a dependency does a job, the block uses it)."""
    assert len(plumbing(read("o3f_iql.py"))) <= 645


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_method_comes_first_and_the_plumbing_last(script):
    """A reader reaches the first network within about 150 lines; nothing but the plumbing follows its marker."""
    lines = read(script)
    first_network = next(k for k, line in enumerate(lines) if line.startswith("def mlp("))
    start = next(k for k, line in enumerate(lines) if line.startswith(PLUMBING))
    train = next(k for k, line in enumerate(lines) if line.startswith("def train("))
    assert first_network < 150
    assert first_network < train < start
    assert lines[-2:] == [
        'if __name__ == "__main__":',
        '    train(tyro.cli(Args, description=__doc__.split("\\n\\n")[0]))',
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_training_loop_records_each_evaluation_in_one_place(script):
    """Evaluation, logging and checkpoints are one call each in the loop (the plumbing's Run), not inline blocks."""
    lines = read(script)
    loop = lines[next(k for k, line in enumerate(lines) if line.startswith("def train(")) :]
    loop = loop[: next(k for k, line in enumerate(loop) if line.startswith(PLUMBING)) - 1]
    text = "\n".join(loop)
    assert (
        text.count("run.evaluate_if_due(step") == 1
        and text.count("run.log(step") == 1
        and text.count("run.save_if_due(step") == 1
    )
    assert 'summary["evaluations"]' not in text and 'writer.add_scalar("eval/' not in text


def plumbing_rooms(lines):
    """Each class and function at the plumbing's top level: {name: its lines, decorators and docstring included}."""
    start = len(lines) - len(plumbing(lines))
    tree = ast.parse("\n".join(lines))
    rooms = [node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.lineno > start]
    return {
        node.name: node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1 for node in rooms
    }


def test_the_plumbing_reads_as_small_rooms():
    """No class or function of the plumbing is longer than 60 lines (about the longest `train`): a reader meets the
    run's records, its schedule and its set-up as rooms of their own, not one class of bookkeeping."""
    rooms = plumbing_rooms(read("o3f_iql.py"))
    assert {"Run", "RunRecords", "RunSchedule", "ReplayBuffer", "setup"} <= set(rooms)
    assert {name: n for name, n in rooms.items() if n > 60} == {}


def test_a_room_longer_than_60_lines_is_caught():
    body = ["    x = 0"] * 59
    lines = [PLUMBING, "@dataclass", "def long_room():", *body, "", "", "def short_room():", "    pass"]
    assert plumbing_rooms(["# ===", *lines]) == {"long_room": 61, "short_room": 2}
