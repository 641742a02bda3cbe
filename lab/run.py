"""Run a grid of experiments: variants x tasks x seeds, each run its own process.

    python lab/run.py --variants o3f_iql iql_noise --env-ids embedded-halfcheetah-medium --seeds 1 2 3
    python lab/run.py ... --extra="--eval-freq 2000"   # flags for every run
    python lab/run.py ... --ray-address auto           # the same runs, on a Ray cluster

Every base algorithm is pretrained once per task and seed (`--save-offline`), and each of its variants
fine-tunes that one model (`--load-offline`), as in the paper's Figures 5 and 6. Results go to
`{output_dir}/{variant}/{env_id}/seed{seed}/`; a run whose summary.json says complete is skipped and
one that was stopped is resumed from its checkpoint, so a second invocation finishes what the first left.
Runs go seed by seed (every variant of seed 1, then of seed 2, ...), fine-tuning runs whose model exists first,
each seed's as soon as its pretraining ends: a study stopped part-way leaves whole seeds to compare.
A run that another process on this machine already works on (or whose model it is pretraining) is left to it, so
two invocations never resume one checkpoint twice. `--status` prints where each run stands and the hours left,
running nothing.
On a Ray cluster, `output_dir` must be on a file
system every node sees.
"""

import glob
import io
import itertools
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# variant -> (script, the base algorithm whose pretrained model it fine-tunes, its own flags)
VARIANTS = {
    "o3f_iql": ("o3f_iql.py", "iql", []),
    "iql_noise": ("iql_noise.py", "iql", []),
    "o3f_iql_omega1": ("o3f_iql.py", "iql", ["--omega", "1"]),
    # an extension beyond the paper: half of each online batch from the online transitions (RLPD's symmetric sampling)
    "o3f_iql_f05": ("o3f_iql.py", "iql", ["--online-fraction", "0.5"]),
    "iql_noise_f05": ("iql_noise.py", "iql", ["--online-fraction", "0.5"]),
    "o3f_iql_n10": (
        "o3f_iql.py",
        "iql",
        ["--n-candidates", "10"],
    ),  # ablation: where the premise diagnostic gained most
    "o3f_lapo": ("o3f_lapo.py", "lapo", []),
    "lapo_noise": ("o3f_lapo.py", "lapo", ["--n-candidates", "1"]),
    "o3f_lapo_omega1": ("o3f_lapo.py", "lapo", ["--omega", "1"]),
    "cql_to_sac": ("cql_to_sac.py", "cql", []),
    "cql_same_objective": ("cql_to_sac.py", "cql", ["--online-objective", "cql"]),
    "cql_linear": (
        "cql_to_sac.py",
        "cql",
        ["--online-objective", "cql", "--online-target-gap", "0.5", "--schedule", "linear"],
    ),
    "cql_abrupt": ("cql_to_sac.py", "cql", ["--online-objective", "cql", "--online-target-gap", "0.5"]),
    # Figure 3's IQL panel: IQL fine-tuned as its paper does (a ~ pi, no added noise), expectile 0.7 kept or loosened
    "iql_same_objective": ("iql_noise.py", "iql", ["--sigma", "0"]),
    "iql_expectile_abrupt": ("iql_noise.py", "iql", ["--sigma", "0", "--online-expectile", "0.85"]),
    "iql_expectile_linear": (
        "iql_noise.py",
        "iql",
        ["--sigma", "0", "--online-expectile", "0.85", "--schedule", "linear"],
    ),
    # AWAC (Figure 4's third baseline) and Figure 3's AWAC panel: lambda 1 kept or loosened to 0.1
    "awac": ("awac.py", "awac", []),
    "awac_lambda_abrupt": ("awac.py", "awac", ["--online-lambda", "0.1"]),
    "awac_lambda_linear": ("awac.py", "awac", ["--online-lambda", "0.1", "--schedule", "linear"]),
    # a diagnostic, not the paper's: AWAC with no entropy term in the critic's target (as CORL's AWAC)
    "awac_temperature0": ("awac.py", "awac", ["--temperature", "0"]),
}
PRETRAIN_SCRIPT = {"iql": "o3f_iql.py", "lapo": "o3f_lapo.py", "cql": "cql_to_sac.py", "awac": "awac.py"}


@dataclass
class Args:
    variants: list[str] = field(default_factory=lambda: ["o3f_iql", "iql_noise"])
    """variants to run (known: o3f_iql, iql_noise, o3f_iql_omega1, o3f_iql_n10, o3f_iql_f05, iql_noise_f05, o3f_lapo,
    lapo_noise, o3f_lapo_omega1, cql_to_sac, cql_same_objective, cql_linear, cql_abrupt, iql_same_objective,
    iql_expectile_abrupt, iql_expectile_linear, awac, awac_lambda_abrupt, awac_lambda_linear, awac_temperature0)"""
    env_ids: list[str] = field(default_factory=lambda: ["embedded-halfcheetah-medium"])
    """tasks, as the scripts' --env-id"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds; each seed has its own pretrained model"""
    offline_steps: int = 20_000
    """pretraining updates (once per base algorithm, task and seed)"""
    online_steps: int = 10_000
    """fine-tuning env steps of every variant"""
    output_dir: str = "runs/grid"
    """where runs and pretrained models go"""
    pretrained_dir: str | None = None
    """where the pretrained models are (or go): default `{output_dir}/pretrained`; another study's folder to fine-tune
    its models"""
    pretrained_on: str | None = None
    """fine-tune the models pretrained on this task, one with the same data (the 20k maze's models on its any-start
    task); default: each task of --env-ids its own"""
    pretrain_only: bool = False
    """if toggled, only pretrain (each variant's base algorithm), fine-tuning nothing"""
    workers: int = 2
    """runs at once on this machine (each gets --threads torch threads)"""
    threads: int = 1
    """torch threads per run: more runs than cores, each with several threads, slow everything to a crawl"""
    ray_address: str | None = None
    """submit the runs to Ray instead of local processes: `auto`, a cluster address, or `local` for a fresh local Ray"""
    extra: str = ""
    """flags passed to every run, in one string, e.g. --extra "--eval-freq 2000 --utd 5" """
    pretrain_extra: str = ""
    """flags passed to the pretraining runs only, e.g. --pretrain-extra "--snapshot-steps 10000 100000" """
    finetune_extra: str = ""
    """flags passed to the fine-tuning runs only, e.g. --finetune-extra "--snapshot-every 5000" """
    code_at: str | None = None
    """run the scripts as they are at this git commit (extracted once into `{output_dir}/code-{commit}/`), not as they
    are in the checkout: a study fixes the code of its runs with its rule, and the scripts can change while it runs"""
    status: bool = False
    """if toggled, run nothing: print where each run of the study stands (complete, running or stopped at a step,
    not started), its wall-clock and an estimate of the hours left, from the runs' own checkpoints and summaries"""


ELSEWHERE = "left to another process on this machine"  # the outcome of a run another process took up first


def scripts_folder(args: Args) -> str:
    """Where the scripts run from: the checkout, or with --code-at the commit's top-level files and datasets/ (what a
    script and make_datasets.py read beside them), extracted once; a commit this checkout lacks is one line, exit 2."""
    if not args.code_at:
        return ROOT

    def git(*command) -> bytes:
        try:
            done = subprocess.run(["git", "-C", ROOT, *command], capture_output=True)
        except OSError as e:  # no git on this machine
            done = subprocess.CompletedProcess(command, 1, b"", str(e).encode())
        if done.returncode != 0:
            why = (done.stderr.decode().strip().splitlines() or ["no such commit"])[-1]
            print(f"error: --code-at {args.code_at}: {why} (git fetch, or name another commit)", file=sys.stderr)
            sys.exit(2)
        return done.stdout

    commit = git("rev-parse", "--verify", "--quiet", f"{args.code_at}^{{commit}}").decode().strip()
    folder = os.path.join(os.path.abspath(args.output_dir), f"code-{commit[:12]}")
    if not os.path.isdir(folder):  # extracted beside, then renamed: a killed extraction leaves no half folder
        names = git("ls-tree", "--name-only", commit).decode().split()
        archive = git("archive", commit, *(name for name in names if name.endswith(".py") or name == "datasets"))
        partial = f"{folder}.part{os.getpid()}"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        os.replace(partial, folder)
    return folder


def run_command(command: list[str], threads: int) -> int | str:
    """Run one planned job; its exit code. The plan may be hours old when a job's turn comes, so the job is looked at
    again first: one another process now works on is left to it (ELSEWHERE), one that ended meanwhile is done (0),
    and one that was started and stopped meanwhile is resumed from its checkpoint rather than started afresh."""
    run_dir = command[command.index("--output-dir") + 1]
    if running(run_dir):
        return ELSEWHERE
    model = command[command.index("--save-offline") + 1] if "--save-offline" in command else None  # a pretraining's
    if os.path.isfile(model) if model else complete(run_dir):
        return 0
    stopped = resumable(run_dir)
    if stopped and "--resume" not in command:
        command = [*command[:2], "--resume", stopped[-1], "--output-dir", run_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = run_dir + ".log"
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a") as f:  # a resumed run appends to its log
        return subprocess.call(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def run_after(command: list[str], threads: int, pretraining_code: int | str) -> int | str:
    """A fine-tuning run, once its pretraining has ended (it is skipped if that failed)."""
    return pretraining_code or run_command(command, threads)


def finished(run: str) -> bool:
    """Whether one run (the folder a script made, with its summary.json) reached its last step."""
    path = os.path.join(run, "summary.json")
    return os.path.isfile(path) and bool(json.load(open(path)).get("complete"))


def complete(run_dir: str) -> bool:
    """Whether a run directory of the study (a variant, task and seed) holds a run that finished."""
    return any(finished(run) for run in glob.glob(os.path.join(run_dir, "*")))


def resumable(run_dir: str) -> list[str]:
    """The checkpoints of the runs in a run directory that were stopped before their end, oldest first."""
    paths = glob.glob(os.path.join(run_dir, "*", "checkpoint.pt"))
    return sorted(path for path in paths if not finished(os.path.dirname(path)))


def model_path(args: Args, base: str, env_id: str, seed: int) -> str:
    """The pretrained model that every variant of `base` fine-tunes on `env_id` with `seed`."""
    folder = args.pretrained_dir or os.path.join(args.output_dir, "pretrained")
    return os.path.join(os.path.abspath(folder), f"{base}__{env_id}__seed{seed}.pt")


def model_needed(args: Args, base: str, trained: str, seed: int) -> bool:
    """Whether a run left to do needs this model: a fine-tuning not complete of a variant of `base` that loads it, or,
    in a study that only pretrains, its pretraining not finished. A new machine lacks the models of finished studies
    (they are not committed): none of those is made again."""
    out = os.path.abspath(args.output_dir)
    if args.pretrain_only:
        return not complete(os.path.join(out, "pretrain-runs", base, trained, f"seed{seed}"))
    return any(
        not complete(os.path.join(out, variant, env_id, f"seed{seed}"))
        for variant, env_id in itertools.product(args.variants, args.env_ids)
        if VARIANTS[variant][1] == base and (args.pretrained_on or env_id) == trained
    )


def plan(args: Args):
    """Pretraining jobs {model: (name, command)} and fine-tuning jobs [(name, command, model)], minus what is done,
    and the names of the runs left to another process on this machine (one already working in their directory,
    or pretraining their model): two processes resuming one checkpoint would overwrite each other's work."""
    out, code = os.path.abspath(args.output_dir), scripts_folder(args)
    pretrain, finetune, elsewhere = {}, [], []
    # seed by seed (every variant of seed 1, then of seed 2, ...): a study stopped part-way has whole seeds to compare
    for seed, env_id, variant in itertools.product(args.seeds, args.env_ids, args.variants):
        script, base, flags = VARIANTS[variant]
        trained = args.pretrained_on or env_id  # the task the model is pretrained on
        model = model_path(args, base, trained, seed)
        run_dir = os.path.join(out, variant, env_id, f"seed{seed}")
        pretrain_dir = os.path.join(out, "pretrain-runs", base, trained, f"seed{seed}")
        stopped = resumable(pretrain_dir)
        if model in pretrain or os.path.isfile(model) or not model_needed(args, base, trained, seed):
            pass  # nothing to make: it is planned already, it exists, or nothing left to do needs it
        elif running(pretrain_dir):
            pretrain[model] = None  # made by another process: not planned here (dropped below)
            elsewhere.append(f"pretrain {base} {trained} seed {seed}")
        elif stopped:  # a pretraining that was stopped: continue it
            pretrain[model] = (
                f"pretrain {base} {trained} seed {seed} (resumed)",
                [
                    sys.executable,
                    os.path.join(code, PRETRAIN_SCRIPT[base]),
                    "--resume",
                    stopped[-1],
                    "--output-dir",
                    pretrain_dir,
                ],
            )
        else:
            pretrain[model] = (
                f"pretrain {base} {trained} seed {seed}",
                [
                    sys.executable,
                    os.path.join(code, PRETRAIN_SCRIPT[base]),
                    "--env-id",
                    trained,
                    "--seed",
                    str(seed),
                    "--offline-steps",
                    str(args.offline_steps),
                    "--online-steps",
                    "0",
                    "--save-offline",
                    model,
                    "--output-dir",
                    pretrain_dir,
                    *shlex.split(args.extra),
                    *shlex.split(args.pretrain_extra),
                ],
            )
        interrupted = resumable(run_dir)
        if args.pretrain_only or complete(run_dir):
            continue
        if running(run_dir) or pretrain.get(model, ()) is None:  # running, or waiting for a model made elsewhere
            elsewhere.append(f"{variant} {env_id} seed {seed}")
        elif interrupted:  # a run that was stopped: continue it
            finetune.append(
                (
                    f"{variant} {env_id} seed {seed} (resumed)",
                    [
                        sys.executable,
                        os.path.join(code, script),
                        "--resume",
                        interrupted[-1],
                        "--output-dir",
                        run_dir,
                    ],
                    model,
                )
            )
        else:
            finetune.append(
                (
                    f"{variant} {env_id} seed {seed}",
                    [
                        sys.executable,
                        os.path.join(code, script),
                        "--env-id",
                        env_id,
                        "--seed",
                        str(seed),
                        "--load-offline",
                        model,
                        "--online-steps",
                        str(args.online_steps),
                        "--exp-name",
                        variant,
                        "--output-dir",
                        run_dir,
                        *flags,
                        *shlex.split(args.extra),
                        *shlex.split(args.finetune_extra),
                    ],
                    model,
                )
            )
    return {model: job for model, job in pretrain.items() if job is not None}, finetune, elsewhere


PACE_MIN_STEPS = 100  # a pace from fewer steps is mostly the start's (loading data, compiling, the first evaluation)


def pace(summary: dict, step: int) -> dict:
    """Wall-clock seconds and seconds per step of a run, from its summary.json's `wall_s` (counted from step
    `wall_s_since_step`; runs from before it have neither), once it has run PACE_MIN_STEPS steps."""
    wall, since = summary.get("wall_s"), summary.get("wall_s_since_step")
    if wall is None or since is None or step < since + PACE_MIN_STEPS:
        return {"wall_s": wall}
    return {"wall_s": wall, "s_per_step": wall / (step - since)}


PROC = "/proc"  # Linux: what runs here, with its command line
RUNNING_S = 300  # elsewhere: a run whose log (its progress bar writes every 30 s) changed this recently


def running(run_dir: str) -> bool:
    """Whether a process on this machine works in `run_dir` (every run this tool starts has `--output-dir run_dir`
    on its command line); without /proc, whether the run's log next to `run_dir` changed in the last RUNNING_S s."""
    if not os.path.isdir(PROC):
        log = run_dir + ".log"
        return os.path.isfile(log) and time.time() - os.path.getmtime(log) < RUNNING_S
    for pid in filter(str.isdigit, os.listdir(PROC)):
        try:
            argv = open(os.path.join(PROC, pid, "cmdline"), "rb").read().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(a == "--output-dir" and b == run_dir for a, b in zip(argv, argv[1:])):
            return True
    return False


def progress(run_dir: str) -> dict:
    """Where the newest run under `run_dir` (the last written to: a model remade on a new machine is pretrained beside
    the first run) stands: its state (running, see `running`), step, wall-clock, seconds per step and, unless
    complete, the age of its checkpoint."""
    runs = sorted(
        glob.glob(os.path.join(run_dir, "*", "")),
        key=lambda run: max(map(os.path.getmtime, [run, *glob.glob(os.path.join(run, "*"))])),
    )
    if runs and finished(runs[-1]):
        summary = json.load(open(os.path.join(runs[-1], "summary.json")))
        step = summary["args"]["offline_steps"] + summary["args"]["online_steps"]
        return {"state": "complete", "step": step, **pace(summary, step)}
    stopped = os.path.join(runs[-1], "checkpoint.pt") if runs else ""
    if not os.path.isfile(stopped):  # no checkpoint yet: started and running, or not started
        return {"state": "running" if running(run_dir) else "not started", "step": 0}
    import torch  # only here: planning and launching runs needs no torch

    checkpoint = torch.load(stopped, map_location="cpu", weights_only=True)
    age = time.time() - os.path.getmtime(stopped)
    return {
        "state": "running" if running(run_dir) else "stopped",
        "step": checkpoint["step"],
        "age_s": age,
        **pace(checkpoint.get("summary", {}), checkpoint["step"]),
    }


def study_status(args: Args) -> tuple[list[dict], str]:
    """One row per run of the study (pretraining once per base algorithm, task and seed; then each variant) and a
    closing line: what is left, in run-hours at the pace each run kept so far (not started: the median of its kind,
    else of the fine-tuning runs of the same base algorithm)."""
    out = os.path.abspath(args.output_dir)
    rows, seen = [], set()
    for seed, env_id, variant in itertools.product(args.seeds, args.env_ids, args.variants):
        _, base, _ = VARIANTS[variant]
        trained = args.pretrained_on or env_id
        if (base, trained, seed) not in seen:
            seen.add((base, trained, seed))
            model = model_path(args, base, trained, seed)
            row = progress(os.path.join(out, "pretrain-runs", base, trained, f"seed{seed}"))
            if os.path.isfile(model) or not model_needed(args, base, trained, seed):
                row |= {"state": "complete", "step": args.offline_steps}
            elif row["state"] == "complete":  # finished here once, its model since lost (a new machine): to remake
                row |= {"state": "to remake (model missing)", "step": 0}
            rows.append(
                {
                    "run": f"pretrain {base} {trained} seed {seed}",
                    "kind": f"pretrain {base}",
                    "base": f"pretrain {base}",
                    "target": args.offline_steps,
                    **row,
                }
            )
        if not args.pretrain_only:
            row = progress(os.path.join(out, variant, env_id, f"seed{seed}"))
            target = args.offline_steps + args.online_steps
            run = {"run": f"{variant} {env_id} seed {seed}", "kind": variant, "base": f"fine-tune {base}"}
            rows.append({**run, "target": target, **row})
    paces = {}
    for row in rows:
        if "s_per_step" in row:
            paces.setdefault(row["kind"], []).append(row["s_per_step"])
            paces.setdefault(row["base"], []).append(row["s_per_step"])
    left, unknown = 0.0, 0
    for row in rows:
        if row["state"] == "complete":
            row["left_s"] = 0.0
            continue
        # a fine-tuning run starts at the switch (its model's step); a pretraining at 0
        start = 0 if row["kind"].startswith("pretrain") else args.offline_steps
        like = next((paces[key] for key in (row["kind"], row["base"]) if key in paces), None)
        s_per_step = row.get("s_per_step") or (sorted(like)[len(like) // 2] if like else None)
        if s_per_step is None:
            unknown += 1
            continue
        row["left_s"] = (row["target"] - max(row["step"], start)) * s_per_step
        left += row["left_s"]
    to_do = sum(row["state"] != "complete" for row in rows)
    hours = left / 3600 / max(args.workers, 1)
    end = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + hours * 3600))
    closing = (
        f"{to_do} of {len(rows)} runs to finish: {left / 3600:.1f} run-hours left at the pace kept so far, about "
        f"{hours:.1f} hours with --workers {args.workers} (ending about {end} if it runs without a pause)"
        + (f"; {unknown} of them with no pace measured yet, not counted" if unknown else "")
    )
    return rows, closing


def print_status(args: Args):
    rows, closing = study_status(args)
    print("| run | state | step | of | hours so far | hours left (est.) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        state = row["state"] + (f" (checkpoint {row['age_s'] / 60:.0f} min old)" if "age_s" in row else "")
        hours = "-" if row.get("wall_s") is None else f"{row['wall_s'] / 3600:.2f}"
        left = "?" if "left_s" not in row else f"{row['left_s'] / 3600:.2f}"
        step = f"{row['step']:,}" if row["step"] else "-"  # not started, or no checkpoint yet
        print(f"| {row['run']} | {state} | {step} | {row['target']:,} | {hours} | {left} |")
    print(closing)


def execute(pretrain: dict, finetune: list, args: Args):
    """Exit codes of the pretraining and the fine-tuning jobs; a fine-tuning job starts once its own model exists."""
    if args.ray_address:
        import ray

        ray.init(
            address=None if args.ray_address == "local" else args.ray_address,
            ignore_reinit_error=True,
            include_dashboard=False,
            logging_level="ERROR",
        )
        first, then = ray.remote(num_cpus=args.threads)(run_command), ray.remote(num_cpus=args.threads)(run_after)
        models = {model: first.remote(command, args.threads) for model, (_, command) in pretrain.items()}
        tunes = [
            then.remote(command, args.threads, models.get(model, 0)) for _, command, model in finetune
        ]  # Ray waits for the model
        return ray.get(list(models.values())), ray.get(tunes)
    # Seed by seed, in plan()'s order: a free worker takes the first fine-tuning job whose model exists, else the first
    # pretraining job, so each seed's fine-tuning starts as soon as its model does and no job holds a worker waiting.
    pending = [("pretrain", model) for model in pretrain] + [("finetune", i) for i in range(len(finetune))]
    codes, running = {}, {}

    def startable(job) -> bool:
        return job[0] == "pretrain" or ("pretrain", finetune[job[1]][2]) in codes or finetune[job[1]][2] not in pretrain

    with ThreadPoolExecutor(args.workers) as pool:
        while pending or running:
            while len(running) < args.workers and any(startable(job) for job in pending):
                ready = [job for job in pending if startable(job)]
                job = next((job for job in ready if job[0] == "finetune"), ready[0])
                pending.remove(job)
                if job[0] == "pretrain":
                    running[pool.submit(run_command, pretrain[job[1]][1], args.threads)] = job
                elif codes.get(
                    ("pretrain", finetune[job[1]][2]), 0
                ):  # its pretraining failed (or was left): so does it
                    codes[job] = codes[("pretrain", finetune[job[1]][2])]
                else:
                    running[pool.submit(run_command, finetune[job[1]][1], args.threads)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                codes[running.pop(future)] = future.result()
    return [codes[("pretrain", model)] for model in pretrain], [codes[("finetune", i)] for i in range(len(finetune))]


if __name__ == "__main__":
    args = tyro.cli(Args)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant {', '.join(unknown)}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        sys.exit(2)
    if args.status:
        print_status(args)
        sys.exit(0)
    pretrain, finetune, elsewhere = plan(args)
    print(
        f"{len(pretrain)} pretraining and {len(finetune)} fine-tuning runs to do; logs next to each run's directory",
        flush=True,
    )
    if elsewhere:
        print(
            f"left to another process on this machine (running, or waiting for a model it pretrains; run this again "
            f"once it ends): {'; '.join(elsewhere)}",
            flush=True,
        )
    pretrain_codes, finetune_codes = execute(pretrain, finetune, args) if pretrain or finetune else ([], [])
    failed = []
    for stage, names, codes in (
        ("pretraining", [name for name, _ in pretrain.values()], pretrain_codes),
        ("fine-tuning", [name for name, _, _ in finetune], finetune_codes),
    ):
        for name, code in zip(names, codes):
            outcome = "done" if code == 0 else code if code == ELSEWHERE else f"failed (exit {code})"
            print(f"{stage}: {name}: {outcome}", flush=True)
            failed += [name] if code not in (0, ELSEWHERE) else []
    if failed:
        print(
            f"error: {len(failed)} runs failed (a fine-tuning run fails with its pretraining): {'; '.join(failed)}",
            file=sys.stderr,
        )
        sys.exit(1)
