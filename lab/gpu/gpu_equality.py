"""The GPU checks of --cudagraphs, read from runs of the scripts themselves (lab/gpu/gpu_session.sh makes them on a
lent GPU: the same script, seed and flags eager, with --cudagraphs, and with --compile --cudagraphs):

    python lab/gpu/gpu_equality.py --compare EAGER_DIR OTHER_DIR ...   # each run against the eager one
    python lab/gpu/gpu_equality.py --pace DIR                          # the pace of every run under DIR

--compare: the final networks' largest difference from the eager run's (absolute, and relative to the eager
weights' largest magnitude), and the losses logged at the same steps (the largest relative difference, and the first
step where it passes 1e-3). The batches are drawn inside each recorded graph, so a graph that froze its random draws
(the same batch at every replay) trains on one batch and its losses part from the eager run's at the first replay;
a faithful graph differs only by the GPU's rounding, which grows slowly. One JSON line per run compared.
"""

import glob
import json
import os
import sys

import torch


def run_dir(root: str) -> str:
    """The one run directory under `root` (a run's --output-dir), or `root` itself if it is one."""
    found = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "summary.json"), recursive=True))
    if len(found) != 1:
        fail(f"{root}: {len(found)} runs there, not one")
    return found[0]


def scalars(directory: str) -> dict:
    """Every `losses/*` scalar of a run's TensorBoard log: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(directory, size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("losses/")]
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags}


def compare(eager_root: str, other_root: str) -> dict:
    """How far the run under `other_root` is from the eager run under `eager_root` (same script, seed and flags)."""
    eager, other = run_dir(eager_root), run_dir(other_root)
    row = {"run": os.path.basename(other), "against": os.path.basename(eager)}
    with open(os.path.join(other, "summary.json")) as f:
        summary = json.load(f)
    flags = {flag: summary["args"].get(flag) for flag in ("cudagraphs", "compile")}
    row.update(complete=summary["complete"], device=summary.get("device"), **flags)
    models = [os.path.join(d, "final.pt") for d in (eager, other)]
    if all(os.path.isfile(m) for m in models):
        a, b = (torch.load(m, map_location="cpu", weights_only=True) for m in models)
        worst_abs, scale = 0.0, 0.0
        for name in (k for k, v in a.items() if isinstance(v, dict) and not k.endswith("_optimizer")):
            for key, value in a[name].items():
                if torch.is_tensor(value) and value.is_floating_point():
                    worst_abs = max(worst_abs, (value - b[name][key]).abs().max().item())
                    scale = max(scale, value.abs().max().item())
        row.update(weights_max_abs_diff=worst_abs, weights_max_rel_diff=worst_abs / max(scale, 1e-12))
    losses_a, losses_b = scalars(eager), scalars(other)
    worst, first = 0.0, None
    for tag in sorted(set(losses_a) & set(losses_b)):
        for step in sorted(set(losses_a[tag]) & set(losses_b[tag])):
            rel = abs(losses_a[tag][step] - losses_b[tag][step]) / max(abs(losses_a[tag][step]), 1e-6)
            worst = max(worst, rel)
            if rel > 1e-3 and (first is None or step < first):
                first = step
    row.update(losses_max_rel_diff=worst, losses_first_step_past_1e3=first)
    return row


def pace(root: str) -> list:
    """Offline updates/s and online env steps/s of each run under `root`, between its log points (compiling and the
    first CUDA-graph recordings excluded: from the second log point of each phase)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for summary_path in sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True)):
        with open(summary_path) as f:
            summary = json.load(f)
        events = EventAccumulator(os.path.dirname(summary_path), size_guidance={"scalars": 0})
        events.Reload()
        tag = next((t for t in events.Tags()["scalars"] if t.startswith("losses/")), None)  # none: too short to log
        points = [(e.step, e.wall_time) for e in events.Scalars(tag)] if tag else []
        offline_steps = summary["args"]["offline_steps"]
        row = {"run": summary["run_name"], "complete": summary["complete"], "wall_s": summary.get("wall_s")}
        for phase, part in (("offline", [p for p in points if p[0] <= offline_steps]),
                            ("online", [p for p in points if p[0] > offline_steps])):  # fmt: skip
            if len(part) >= 3:
                (s0, t0), (s1, t1) = part[1], part[-1]
                row[f"{phase}_steps_per_s"] = (s1 - s0) / (t1 - t0)
        rows.append(row)
    return rows


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pace":
        rows = pace(sys.argv[2])
        if not rows:
            fail(f"--pace {sys.argv[2]}: no run directory with a summary.json there")
        for row in rows:
            print(json.dumps(row))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--compare":
        for other in sys.argv[3:]:
            print(json.dumps(compare(sys.argv[2], other)))
    else:
        fail("usage: python lab/gpu/gpu_equality.py --compare EAGER_DIR OTHER_DIR ... | --pace DIR")
