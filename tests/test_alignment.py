"""The scripts are aligned line by line: a diff shows only what differs in the method."""
import difflib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_iql_noise_differs_from_o3f_iql_only_in_the_action_selection():
    o3f, noise = read("o3f_iql.py"), read("iql_noise.py")
    only_o3f, only_noise = changed_lines(o3f, noise)
    assert len(only_o3f) + len(only_noise) <= 40
    allowed = ("n_candidates", "omega", "sigma", "candidates", "select_action", "score", "exp_name", "O3F", "noise",
               "Algorithm 1", "Fine-tuning offline", "Online:", "baseline", '"""', "Line 3", "line 4")
    for line in only_o3f + only_noise:
        assert any(word in line for word in allowed), f"diff outside the action selection: {line!r}"


SHARED = (("DATA_DIR = ", "# Per-domain defaults"), ("def normalized_score", "def reward_transform"),
          ("class ReplayBuffer", "# ----"), ("def write_json", 'if __name__ == "__main__":'))


def section(lines, start, end):
    i = next(k for k, line in enumerate(lines) if line.startswith(start))
    j = next(k for k, line in enumerate(lines) if k > i and line.startswith(end))
    return lines[i:j]


@pytest.mark.parametrize("other", ["o3f_lapo.py", "cql_to_sac.py"])
def test_the_scripts_share_their_data_buffer_and_output_code_verbatim(other):
    iql, lines = read("o3f_iql.py"), read(other)
    for start, end in SHARED:
        assert section(iql, start, end) == section(lines, start, end), start

