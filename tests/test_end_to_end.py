"""Both IQL scripts as a user runs them: tiny budgets on CPU, outputs, and a shared pretrained model."""

import ast
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, assert_one_line

TINY = [
    "--offline-steps",
    200,
    "--online-steps",
    200,
    "--eval-freq",
    100,
    "--eval-episodes",
    1,
    "--log-freq",
    50,
    "--batch-size",
    64,
]


def run_dir_of(output_dir):
    (run_dir,) = glob.glob(os.path.join(output_dir, "*"))
    return run_dir


@pytest.fixture(scope="module")
def pretrained(run_script, small_dataset, tmp_path_factory):
    """One tiny o3f_iql.py run that also saves its offline model with --save-offline."""
    out = tmp_path_factory.mktemp("o3f_run")
    checkpoint = str(out / "pretrained.pt")
    result = run_script(
        "o3f_iql.py", "--dataset-path", small_dataset, "--output-dir", out / "runs", "--save-offline", checkpoint, *TINY
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir_of(str(out / "runs")), checkpoint


def test_a_run_writes_summary_with_offline_then_online_evaluations(pretrained):
    run_dir, _ = pretrained
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    history = [(e["step"], e["phase"]) for e in summary["evaluations"]]
    assert history == [(100, "offline"), (200, "offline"), (300, "online"), (400, "online")]
    assert summary["complete"] is True
    assert summary["final_normalized_score"] == summary["evaluations"][-1]["normalized_score"]
    assert summary["args"]["sigma"] == 0.2 and summary["args"]["n_candidates"] == 100  # locomotion defaults
    assert all(isinstance(e["return"], float) for e in summary["evaluations"])


@pytest.mark.parametrize("script", ["o3f_iql.py", "o3f_lapo.py", "iql_noise.py", "cql_to_sac.py", "awac.py"])
def test_help_says_what_the_script_is_then_lists_the_methods_flags_before_the_runs(script):
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    what = open(os.path.join(ROOT, script)).read().split('"""')[1].split("\n\n")[0].strip()
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[1] == what  # after the usage line, the module docstring's first paragraph
    flags = [re.search(r"--[a-z-]+", line).group() for line in lines if re.match(r"\W+--[a-z]", line)]
    assert flags[0] == "--batch-size"  # the method's flags (its update, then its action selection), first
    assert flags.index("--env-id") > flags.index("--tau") and flags[-1] == "--output-dir"  # the run's, after


def test_the_bar_counts_the_phase_being_run_and_the_last_lines_give_the_scores_and_the_logs(run_script, small_dataset):
    """Progress over each phase (offline 30 steps, then online 20: its own total and time left), no warning for a short
    budget, and the run's last lines: the score at the switch and at the end, where the logs are."""
    flags = ["--offline-steps", 30, "--online-steps", 20, "--eval-freq", 1000, "--eval-episodes", 1, "--batch-size", 32]
    result = run_script(
        "o3f_iql.py", "--dataset-path", small_dataset, "--checkpoint-every", 0, *flags, "--log-freq", 10
    )
    assert result.returncode == 0, result.stderr[-2000:]
    bars = [line.strip() for line in result.stderr.replace("\r", "\n").splitlines() if "%|" in line]
    assert any(bar.startswith("offline: 100%") and " 30/30 " in bar for bar in bars), bars
    assert any(bar.startswith("online: 100%") and " 20/20 " in bar for bar in bars), bars
    assert not any("/50 " in bar for bar in bars) and "warning" not in result.stderr  # never both phases as one
    end, logs = result.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(r"\S+__o3f_iql__1__\d+__\d+: normalized score -?[\d.]+ at the switch, -?[\d.]+ at the end", end)
    assert logs.startswith("logs in runs/") and logs.endswith("(tensorboard --logdir runs)")


def test_a_phase_too_long_for_the_machine_is_said_once_with_its_hours(small_dataset, tmp_path):
    """A budget of 10^9 offline updates (weeks on a CPU): one warning with the hours, at the phase's first log."""
    flags = ["--offline-steps", 10**9, "--online-steps", 20, "--eval-freq", 10**9, "--log-freq", 100]
    flags += ["--dataset-path", small_dataset, "--batch-size", 32, "--checkpoint-every", 0, "--output-dir", tmp_path]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.join(ROOT, "o3f_iql.py"), "--no-cuda", *map(str, flags)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen, timer = [], threading.Timer(60, proc.send_signal, [signal.SIGINT])  # no warning: stopped all the same
    timer.start()
    for line in proc.stderr:
        seen += [line]
        if "warning" in line:
            break
    timer.cancel()
    proc.send_signal(signal.SIGINT)
    seen += proc.stderr.read().splitlines()
    proc.wait(timeout=120)
    warnings = [line.split("\r")[-1].strip() for line in seen if "warning" in line]
    assert len(warnings) == 1 and re.fullmatch(
        r"warning: offline phase: \d+ hours at this pace \(--offline-steps\)", warnings[0]
    )
    assert int(re.search(r"(\d+) hours", warnings[0]).group(1)) > 12


def test_a_run_writes_tensorboard_events_in_cleanrl_naming(pretrained):
    run_dir, _ = pretrained
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "eval/normalized_score",
        "eval/return",
        "charts/SPS",
        "losses/qf_loss",
        "losses/vf_loss",
        "losses/actor_loss",
    } <= tags
    assert [e.step for e in events.Scalars("eval/normalized_score")] == [100, 200, 300, 400]
    assert len(events.Scalars("losses/qf_loss")) == 8  # every --log-freq 50 steps over 400


def test_the_offline_checkpoint_holds_the_pretrained_model(pretrained):
    run_dir, checkpoint = pretrained
    state = torch.load(checkpoint, weights_only=True)
    assert state["algorithm"] == "iql" and state["step"] == 200
    assert set(state) >= {"actor", "qf", "qf_target", "vf", "actor_optimizer", "q_optimizer", "v_optimizer"}
    assert state["qf"]["layers.0.weight"].shape[0] == 5  # five critics, one batched network
    final = torch.load(os.path.join(run_dir, "final.pt"), weights_only=True)
    assert final["step"] == 400
    # Adam counts its steps: 200 updates offline for every optimiser, then exactly 200 more online (one per env step)
    for name in ("actor_optimizer", "q_optimizer", "v_optimizer"):
        assert [float(s["step"]) for s in state[name]["state"].values()] == [200.0] * len(state[name]["state"])
        assert [float(s["step"]) for s in final[name]["state"].values()] == [400.0] * len(final[name]["state"])


def test_the_noise_baseline_fine_tunes_the_same_pretrained_model(run_script, small_dataset, pretrained, tmp_path):
    run_dir, checkpoint = pretrained
    result = run_script(
        "iql_noise.py", "--dataset-path", small_dataset, "--output-dir", tmp_path, "--load-offline", checkpoint, *TINY
    )
    assert result.returncode == 0, result.stderr[-2000:]
    o3f = json.load(open(os.path.join(run_dir, "summary.json")))["evaluations"]
    noise = json.load(open(os.path.join(run_dir_of(str(tmp_path)), "summary.json")))["evaluations"]
    # No pretraining: the first score is the loaded model's, identical to O3F's at the switch.
    assert noise[0] == {**o3f[1], "phase": "offline"}
    assert [(e["step"], e["phase"]) for e in noise] == [(200, "offline"), (300, "online"), (400, "online")]


def test_a_model_without_optimiser_state_fine_tunes_from_the_same_networks(
    run_script, small_dataset, pretrained, tmp_path
):
    """A model-only file (lab/MODELS.md): its networks load, its optimisers start afresh, and the run says so."""
    run_dir, checkpoint = pretrained
    state = torch.load(checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("_optimizer")}, tmp_path / "model.pt")
    result = run_script(
        "iql_noise.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path / "runs",
        "--load-offline",
        tmp_path / "model.pt",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if "without optimiser state" in x]
    assert "actor_optimizer, q_optimizer, v_optimizer start afresh" in line
    o3f = json.load(open(os.path.join(run_dir, "summary.json")))["evaluations"]
    noise = json.load(open(os.path.join(run_dir_of(str(tmp_path / "runs")), "summary.json")))["evaluations"]
    assert noise[0] == {**o3f[1], "phase": "offline"}  # the same networks at the switch
    final = torch.load(os.path.join(run_dir_of(str(tmp_path / "runs")), "final.pt"), weights_only=True)
    assert {float(s["step"]) for s in final["q_optimizer"]["state"].values()} == {200.0}  # 200 online steps, fresh


def test_o3f_fine_tunes_a_model_pretrained_by_the_noise_baseline(run_script, small_dataset, tmp_path):
    checkpoint = str(tmp_path / "noise.pt")
    first = run_script(
        "iql_noise.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path / "a",
        "--save-offline",
        checkpoint,
        *TINY[:2],
        "--online-steps",
        0,
        *TINY[4:],
    )
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_script(
        "o3f_iql.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path / "b",
        "--load-offline",
        checkpoint,
        *TINY,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    a = json.load(open(os.path.join(run_dir_of(str(tmp_path / "a")), "summary.json")))["evaluations"]
    b = json.load(open(os.path.join(run_dir_of(str(tmp_path / "b")), "summary.json")))["evaluations"]
    assert b[0] == a[-1]


def test_same_seed_gives_the_same_evaluation_history(run_script, small_dataset, pretrained, tmp_path):
    run_dir, _ = pretrained
    again = run_script("o3f_iql.py", "--dataset-path", small_dataset, "--output-dir", tmp_path, *TINY)
    assert again.returncode == 0, again.stderr[-2000:]
    first = json.load(open(os.path.join(run_dir, "summary.json")))["evaluations"]
    second = json.load(open(os.path.join(run_dir_of(str(tmp_path)), "summary.json")))["evaluations"]
    assert first == second


def test_default_task_makes_the_embedded_dataset_once_and_reuses_it(run_script, data_dir, tmp_path):
    flags = [
        "--output-dir",
        tmp_path,
        "--offline-steps",
        20,
        "--online-steps",
        20,
        "--eval-freq",
        20,
        "--eval-episodes",
        1,
    ]
    result = run_script("o3f_iql.py", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    path = os.path.join(data_dir, "embedded", "embedded-halfcheetah-medium.hdf5")
    assert "making the embedded dataset" in result.stderr and os.path.isfile(path)
    made = os.path.getmtime(path)
    again = run_script("iql_noise.py", *flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "making the embedded dataset" not in again.stderr and os.path.getmtime(path) == made


def test_compile_runs_the_whole_loop(run_script, small_dataset, tmp_path):
    """Smoke test of --compile through offline, the switch and online (test_iql checks the compiled numbers)."""
    result = run_script(
        "o3f_iql.py",
        "--dataset-path",
        small_dataset,
        "--output-dir",
        tmp_path,
        "--compile",
        "--offline-steps",
        30,
        "--online-steps",
        30,
        "--eval-freq",
        30,
        "--eval-episodes",
        1,
        "--batch-size",
        64,
    )
    assert result.returncode == 0 and "cannot trace" not in result.stderr, result.stderr[-2000:]
    summary = json.load(open(os.path.join(run_dir_of(str(tmp_path)), "summary.json")))
    assert (
        summary["complete"]
        and summary["args"]["compile"]
        and [e["phase"] for e in summary["evaluations"]] == ["offline", "online"]
    )


def readme_commands(heading, doc="README.md"):
    """The `python ...` lines of the first bash block after `heading` in `doc` (continuations joined)."""
    text = open(os.path.join(ROOT, doc)).read()
    block = text[text.index(heading) :].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split("#")[0].split() for line in lines if line.startswith("python ")]


@pytest.mark.parametrize("which", range(2))
def test_the_readme_commands_for_figure_3_panels_run(run_script, small_dataset, tmp_path, which):
    """The README's IQL and AWAC commands of Figure 3, at a tiny budget (later flags override the README's)."""
    commands = readme_commands("## The paper's other baselines", "lab/studies/reduced_scale/README.md")
    assert len(commands) == 2
    _, script, *flags = commands[which]
    tiny = ["--offline-steps", 20, "--online-steps", 10, "--eval-freq", 10, "--eval-episodes", 1, "--batch-size", 32]
    result = run_script(script, *flags, "--dataset-path", small_dataset, "--output-dir", tmp_path, *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.load(open(os.path.join(run_dir_of(tmp_path), "summary.json")))
    assert summary["complete"] and [e["step"] for e in summary["evaluations"]] == [10, 20, 30]
    moved = {"iql_noise.py": ("online_expectile", 0.85), "awac.py": ("online_lam", 0.1)}[script]
    assert summary["args"][moved[0]] == moved[1]  # the README's loosening reached the run


def test_the_quick_start_fine_tunes_the_shipped_model_with_each_rule_and_measures_its_premise(
    run_script, small_dataset, data_dir, tmp_path
):
    """The README's quick start as written, at a tiny budget (later flags override the README's): both rules
    fine-tune the shipped 300k-update model and report their training episodes; the diagnostic reads it."""
    commands = readme_commands("## Quick start")
    assert [c[1] for c in commands] == ["o3f_iql.py", "iql_noise.py", "lab/premise.py"]
    tiny = ["--online-steps", 1000, "--eval-freq", 1000, "--eval-episodes", 1, "--batch-size", 32]
    for (_, script, *flags), out in zip(commands[:2], ("o3f", "noise")):
        result = run_script(script, *flags, "--dataset-path", small_dataset, "--output-dir", tmp_path / out, *tiny)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.load(open(os.path.join(run_dir_of(tmp_path / out), "summary.json")))
        assert [e["step"] for e in summary["evaluations"]] == [300_000, 301_000]  # the shipped model's switch
        assert len(summary["train_episodes"]) == 1 and "its 1 training episodes scored" in result.stdout
    _, script, *flags = commands[2]
    tiny = ["--episodes", "1", "--states", "2", "--horizon", "2", "--rank-candidates", "2"]
    flags = [str(tmp_path / "premise.jsonl") if f == "runs/premise.jsonl" else f for f in flags]
    env = {**os.environ, "O3F_DATA_DIR": data_dir}  # the model's own data (made here once), not the user's cache
    result = subprocess.run(
        [sys.executable, script, *flags, *tiny], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [json.loads(x) for x in open(tmp_path / "premise.jsonl")]
    assert line["step"] == 300_000 and [r["rule"] for r in line["rules"]] == [
        "policy mean",
        "a ~ pi",
        "noise s0.2",
        "O3F N100 s0.2",
    ]


def test_no_script_imports_another_and_the_dataset_tool_runs_as_a_program_of_its_own():
    """No import circle: a script makes its embedded data by running make_datasets.py (the only script the tool
    imports, to fetch data as the scripts would, is o3f_iql.py), so each reads, runs and copies on its own."""
    scripts = ["o3f_iql", "o3f_lapo", "iql_noise", "cql_to_sac", "awac"]
    for name in [*scripts, "make_datasets"]:
        tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported & {*scripts, "make_datasets"} == ({"o3f_iql"} if name == "make_datasets" else set()), name
        code = f"import sys; import {name}; print(sorted(set(sys.modules) & {set(scripts) | {'make_datasets'}!r}))"
        loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert loaded.stdout.split() == [f"['{name}']"], loaded.stderr[-2000:]  # importing it loads no other


def test_a_failure_of_the_dataset_tool_ends_the_script_in_one_line_with_the_tools_reason(tmp_path):
    """make_datasets.py failing (here a full disk) gives the script's one line, with the tool's last line in it."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(os.path.join(ROOT, "o3f_iql.py"), project)
    (project / "make_datasets.py").write_text(
        "import sys\nprint('Traceback (most recent call last):', file=sys.stderr)\n"
        'sys.exit("OSError: [Errno 28] No space left on device")\n'
    )
    env = {**os.environ, "O3F_DATA_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "o3f_iql.py", "--no-cuda", "--env-id", "embedded-halfcheetah-random"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 2, result.stderr  # "making ...", then the error
    assert result.stderr.splitlines()[-1] == (
        "error: make_datasets.py could not make embedded-halfcheetah-random (OSError: [Errno 28] No space left on "
        "device); fix that, or pass --dataset-path FILE"
    )


@pytest.mark.parametrize("script", ["o3f_iql.py", "o3f_lapo.py", "iql_noise.py", "cql_to_sac.py", "awac.py"])
def test_a_script_copied_alone_into_another_folder_runs(small_dataset, tmp_path, script):
    """The README's promise: copy one file into another project and it runs (its data given with --dataset-path);
    an embedded task, which make_datasets.py makes, then gets one line saying so."""
    project = tmp_path / "another-project"
    project.mkdir()
    shutil.copy(os.path.join(ROOT, script), project)
    env = {**os.environ, "O3F_DATA_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    flags = ["--no-cuda", "--offline-steps", "20", "--online-steps", "20", "--eval-freq", "20", "--eval-episodes", "1"]
    flags += ["--batch-size", "32", "--checkpoint-every", "0"]

    def run(*more):
        command = [sys.executable, script, *flags, *more]
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    done = run("--dataset-path", small_dataset, "--env-id", "halfcheetah-random-v2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "normalized score" in done.stdout and glob.glob(str(project / "runs" / "*" / "final.pt"))
    assert_one_line(run("--env-id", "embedded-halfcheetah-random"), 2, "make_datasets.py", "--dataset-path")
