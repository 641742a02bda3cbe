#!/usr/bin/env bash
# The lab's studies, one entry each: the lab/run.py flags of the study's command; its folder is its --output-dir.
# Each runs in the background, resumably (finished runs are skipped, stopped ones resume from their checkpoints),
# one torch thread per run.
#
#   bash lab/studies.sh start [STUDY ...]    # start the named studies (all, if none is named) not running yet
#   bash lab/studies.sh status [STUDY ...]   # where each run stands and the hours left (lab/run.py --status)
#   bash lab/studies.sh stop                 # stop every study of this checkout; each run saves its checkpoint
#   bash lab/studies.sh figures              # every study's figures and tables, from its summaries
#
# A study whose folder holds a gate.md starts only once that record says "Decision: pass": the gate is read and
# written down before any of its runs. Adding a study: an array below and its name in STUDIES (lab/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=logs/studies
export OMP_NUM_THREADS=1

D4RL_1M=embedded-halfcheetah-medium-1m
PRE=(--extra="--eval-episodes 5 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")

decide=(--variants o3f_iql iql_noise o3f_iql_omega1 --env-ids $D4RL_1M --seeds 1 2 3 4 5 --offline-steps 300000
  --online-steps 100000 --output-dir lab/studies/decide --workers 2 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 25000 --eval-episodes 5" --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
lapo_utd20=(--variants o3f_lapo lapo_noise --env-ids $D4RL_1M --seeds 1 2 3 --offline-steps 100000 --online-steps 5000
  --output-dir lab/studies/lapo_utd20 --workers 1 --extra="--eval-episodes 10 --checkpoint-every 1000"
  --finetune-extra="--eval-freq 1000 --snapshot-every 2500")
premise_iql_100k=(--variants o3f_iql --env-ids embedded-halfcheetah-medium --seeds 1 --offline-steps 300000
  --pretrain-only --output-dir lab/studies/premise --workers 1 "${PRE[@]}")
premise_lapo=(--variants o3f_lapo --env-ids $D4RL_1M --seeds 1 --offline-steps 300000 --pretrain-only
  --output-dir lab/studies/premise --workers 1 "${PRE[@]}")
premise_iql_1m=(--variants o3f_iql iql_noise --env-ids $D4RL_1M --seeds 1 --offline-steps 1000000 --online-steps 20000
  --output-dir lab/studies/premise --workers 1 --extra="--eval-episodes 5 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000 300000"
  --finetune-extra="--eval-freq 2000 --snapshot-every 5000")
online_fraction=(--variants o3f_iql_f05 iql_noise_f05 --env-ids $D4RL_1M --seeds 1 2 3 4 5 --offline-steps 300000
  --online-steps 100000 --output-dir lab/studies/online_fraction --pretrained-dir lab/studies/decide/pretrained --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000" --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
premise_random=(--variants o3f_iql --env-ids embedded-halfcheetah-random-1m --seeds 1 --offline-steps 300000
  --pretrain-only --output-dir lab/studies/premise --workers 1 "${PRE[@]}")
maze_models=(--variants o3f_iql --env-ids embedded-pointmaze-large-20k --seeds 1 2 3 4 5 --offline-steps 300000
  --pretrain-only --output-dir lab/studies/evidence_maze --workers 1 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")
evidence_maze=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-20k --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir lab/studies/evidence_maze --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
evidence_maze_any=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-20k-any-start --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir lab/studies/evidence_maze_any
  --pretrained-dir lab/studies/evidence_maze/pretrained --pretrained-on embedded-pointmaze-large-20k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
maze10k_models=(--variants o3f_iql --env-ids embedded-pointmaze-large-10k-any-start --seeds 1 2 3 4 5 --offline-steps 300000
  --pretrain-only --output-dir lab/studies/evidence_maze_10k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")
evidence_maze_10k=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-10k-any-start --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir lab/studies/evidence_maze_10k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
evidence_random=(--variants o3f_iql iql_noise --env-ids embedded-halfcheetah-random-1m --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir lab/studies/evidence_random
  --pretrained-dir lab/studies/premise/pretrained --workers 2 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 25000 --eval-episodes 5 --snapshot-steps 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
# Figure 5's LAPO claim, pre-registered (lab/studies/lapo_figure5/README.md): seed 1 is the shipped model
lapo_figure5=(--variants o3f_lapo lapo_noise --env-ids $D4RL_1M --seeds 1 2 3 4 5 --offline-steps 100000
  --online-steps 10000 --output-dir lab/studies/lapo_figure5 --workers 1 --threads 2 --code-at a6e1521
  --pretrain-extra="--eval-freq 10000 --eval-episodes 5 --checkpoint-every 5000"
  --finetune-extra="--eval-freq 1000 --eval-episodes 10 --checkpoint-every 1000 --compile")

STUDIES=(premise_iql_100k premise_lapo premise_iql_1m premise_random decide lapo_utd20 online_fraction evidence_random
  maze_models evidence_maze evidence_maze_any maze10k_models evidence_maze_10k lapo_figure5)

prepare_lapo_figure5() {  # its seed-1 model: the shipped one, linked under the name lab/run.py looks for
  mkdir -p lab/studies/lapo_figure5/pretrained
  ln -sfn ../../lapo_utd20/pretrained/lapo__${D4RL_1M}__seed1.pt lab/studies/lapo_figure5/pretrained/
}

folder() {  # folder STUDY: the study's --output-dir
  local -n flags=$1
  local i
  for ((i = 0; i < ${#flags[@]}; i++)); do [[ ${flags[i]} == --output-dir ]] && echo "${flags[i + 1]}"; done
}

gate_passed() {  # gate_passed FOLDER: no gate.md, or one that says "Decision: pass"
  [[ ! -f $1/gate.md ]] || grep -qs "^Decision: pass" "$1/gate.md"
}

complete_runs() {  # how many of a study's fine-tuning runs are complete (its models' pretraining runs do not count)
  grep -rl --include=summary.json --exclude-dir=pretrain-runs '"complete": true' "$1" 2>/dev/null | wc -l
}

has_runs() {  # whether a study's folder holds a complete fine-tuning run (a study that only pretrained has none)
  (( $(complete_runs "$1") > 0 ))
}

has_models() {  # whether a study's folder holds a finished pretraining run (plot.py draws the models' curves)
  grep -rqs --include=summary.json '"complete": true' "$1/pretrain-runs"
}

runners() {  # the lab/run.py processes working in an output folder of this checkout, whoever started them
  for pid in $(pgrep -f "lab/run.py .*--output-dir $1 " || true); do
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$PWD" ]] && echo "$pid"
  done
  return 0
}

chosen() {  # chosen [STUDY ...]: the named studies (all, if none), each checked to be one
  local study
  for study in "${@:-${STUDIES[@]}}"; do
    if [[ " ${STUDIES[*]} " != *" $study "* ]]; then
      echo "error: unknown study $study; known: ${STUDIES[*]}" >&2
      exit 2
    fi
  done
  echo "${@:-${STUDIES[@]}}"
}

launch() {  # launch STUDY: in the background, unless its last launch still runs
  local name=$1 pidfile=$LOGS/$1.pid
  local -n flags=$1
  if [[ -f $pidfile ]] && ps -o args= -p "$(cat "$pidfile")" 2>/dev/null | grep -q lab/run.py; then
    echo "$name: already running (pid $(cat "$pidfile"))"
    return
  fi
  if ! gate_passed "$(folder "$name")"; then
    echo "$name: not started: its gate ($(folder "$name")/gate.md) has not passed"
    return
  fi
  if declare -F "prepare_$name" >/dev/null; then "prepare_$name"; fi
  mkdir -p "$LOGS"
  nohup nice -n 5 python lab/run.py "${flags[@]}" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$pidfile"
  echo "$name: started, log $LOGS/$name.log"
}

case "${1:-}" in
  start)
    studies=$(chosen "${@:2}") || exit 2
    for study in $studies; do launch "$study"; done
    ;;
  status)
    studies=$(chosen "${@:2}") || exit 2
    for study in $studies; do
      declare -n flags=$study
      echo "## $study"
      if gate_passed "$(folder "$study")"; then
        python lab/run.py "${flags[@]}" --status
      else
        echo "not started: its gate ($(folder "$study")/gate.md) has not passed"
      fi
    done
    ;;
  stop)  # lab/run.py first (so that it starts nothing more), then the runs, which save their checkpoints: found by
    # their own --output-dir (absolute, below the study's), not as lab/run.py's children, which a killed one orphans
    for dir in $(for study in "${STUDIES[@]}"; do folder "$study"; done | sort -u); do
      for pid in $(runners "$dir"); do
        kill -TERM "$pid" 2>/dev/null || true
      done
      if pkill -TERM -f -- "--output-dir $PWD/$dir/"; then  # waited for: a start right after finds them ended
        for _ in $(seq 120); do pgrep -f -- "--output-dir $PWD/$dir/" >/dev/null || break; sleep 1; done
        echo "stopped the runs in $dir"
      fi
    done
    ;;
  figures)  # each study's figures and tables (its models' pretraining curves, also before it has fine-tuned), the
    # premise's, and the three tasks side by side
    declare -A shares=([lab/studies/decide]=lab/studies/online_fraction [lab/studies/online_fraction]=lab/studies/decide)
    for dir in lab/studies/reduced_scale $(for study in "${STUDIES[@]}"; do folder "$study"; done | sort -u); do
      if has_runs "$dir" || has_models "$dir"; then  # the switch checked against the studies sharing its models
        python lab/plot.py --results-dir "$dir" ${shares[$dir]:+--shared-models ${shares[$dir]}} >/dev/null &&
          echo "$dir/figures"
      fi
    done
    python lab/premise.py plot --results lab/studies/premise/diagnostic.jsonl >/dev/null && echo "lab/studies/premise"
    python lab/plot.py --results-dir lab/studies/decide lab/studies/evidence_random lab/studies/evidence_maze_10k \
      --out-dir lab/studies/across_tasks >/dev/null && echo "lab/studies/across_tasks"
    ;;
  *)
    echo "usage: bash lab/studies.sh start|status [STUDY ...] | stop | figures" >&2
    exit 2
    ;;
esac
