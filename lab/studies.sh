#!/usr/bin/env bash
# The README's long studies, started or resumed in the background in one command, in priority order on a
# small machine: each is a `benchmarks/run.py` command of the README (finished runs are skipped, stopped
# ones resume from their checkpoints), one torch thread per run, the lower priorities niced so that they
# only take what the first leaves.
#
#   bash benchmarks/studies.sh start    # start every study not running yet; logs in logs/studies/
#   bash benchmarks/studies.sh status   # where each run stands and the hours left (benchmarks/run.py --status)
#   bash benchmarks/studies.sh stop     # stop them; each run saves a checkpoint on SIGTERM
#   bash benchmarks/studies.sh figures  # every figure and table of results/, regenerated from the summaries
#
# 1. decide (nice 0, 2 workers): "Figures 5 and 6 at a budget that can decide", IQL, 5 seeds x 3 rules.
# 2. lapo_utd20 (nice 10): the same section's LAPO comparison at UTD 20.
# 3. premise (nice 15, one after the other): "Does O3F's premise hold?": IQL on the 100k-transition data
#    to 300k updates, then LAPO to 300k;
# 4. premise_1m (nice 15), beside it: IQL to 1M updates, then its two 20k-step fine-tunings.
# 5. online_fraction (nice 5, 2 workers): O3F and noise with half of each online batch from the online transitions
#    (--online-fraction 0.5, an extension beyond the paper), fine-tuned from the decide study's five models.
# 6. premise_random (nice 15): the evidence campaign's second task, the paper's random data: IQL on
#    embedded-halfcheetah-random-1m to 300k updates with snapshots, for the premise diagnostic along pretraining
#    (which budget can decide) before any O3F-vs-noise run on it.
# 7. maze_models (nice 5): the third task, a sparse-reward maze: IQL's five models (300k updates, snapshots at 10k,
#    30k and 100k, 10 evaluation episodes every 10k) on embedded-pointmaze-large-20k's data, for a gate (does IQL's
#    offline policy already succeed more than 80% of the time?) and the premise diagnostic, both read before any
#    O3F-vs-noise run on the maze. From the fixed start that maze failed its gate on seeds 1 and 2
#    (results/evidence_maze/gate.md), as the medium maze and the large one with 100k transitions had
#    (results/premise/pretrain-runs/iql/embedded-pointmaze-{medium,large}); the same models, which never see a start
#    cell, are read next on embedded-pointmaze-large-20k-any-start (D4RL's maze2d starts: any free cell).
# 8. evidence_random (nice 5, 2 workers): O3F vs noise on the random data, the deciding study's protocol (5 seeds,
#    300k-update models, 100k online steps, 10 evaluation episodes every 5000), the budget fixed by the premise
#    diagnostic before any of its runs. Its seed-1 model is premise_random's (same script, data, seed and budget),
#    so it starts once that model exists; the models of seeds 2-5 go next to it, with a snapshot at 100k.
# 9. evidence_maze (nice 5, 2 workers): O3F vs noise on the maze's five models, once the gate and the premise read on
#    them are written down in results/evidence_maze/gate.md with the line "Decision: pass" (made before any of its
#    runs, it starts them; the 20k maze's record says "Decision: fail").
# 10. evidence_maze_any (nice 5, 2 workers): O3F vs noise on embedded-pointmaze-large-20k-any-start (the 20k maze
#    from any start cell, D4RL's maze2d resets) from maze_models' five models, once that task's gate, read on them
#    (their success from 100 random starts, the premise diagnostic with --env-id), passes in
#    results/evidence_maze_any/gate.md ("Decision: pass"). If the fixed-start record passes too (read on all five
#    models, the rule as first written), that study runs first and this one once its 10 runs are complete.
# 11. maze10k_models (nice 5, 2 workers once seed 1 is read): if that gate fails ("Decision: fail") and the fixed
#    start's has not passed, the maze's last attempt written in its record:
#    IQL on embedded-pointmaze-large-10k-any-start (the first 10k transitions, any start cell), seed 1 alone until
#    results/evidence_maze_10k/gate.md says "Seed 1: continue" (its 300k model succeeds 80% or less), then seeds 1-5.
# 12. evidence_maze_10k (nice 5, 2 workers): O3F vs noise from those five models, once that record says "Decision:
#    pass" (their mean success 80% or less).
# benchmarks/run.py leaves alone any run another process already works on, so starting twice is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=logs/studies
export OMP_NUM_THREADS=1

D4RL_1M=embedded-halfcheetah-medium-1m
PRE=(--extra="--eval-episodes 5 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")

decide=(--variants o3f_iql iql_noise o3f_iql_omega1 --env-ids $D4RL_1M --seeds 1 2 3 4 5 --offline-steps 300000
  --online-steps 100000 --output-dir results/decide --workers 2 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 25000 --eval-episodes 5" --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
lapo_utd20=(--variants o3f_lapo lapo_noise --env-ids $D4RL_1M --seeds 1 2 3 --offline-steps 100000 --online-steps 5000
  --output-dir results/lapo_utd20 --workers 1 --extra="--eval-episodes 10 --checkpoint-every 1000"
  --finetune-extra="--eval-freq 1000 --snapshot-every 2500")
premise_iql_100k=(--variants o3f_iql --env-ids embedded-halfcheetah-medium --seeds 1 --offline-steps 300000
  --pretrain-only --output-dir results/premise --workers 1 "${PRE[@]}")
premise_lapo=(--variants o3f_lapo --env-ids $D4RL_1M --seeds 1 --offline-steps 300000 --pretrain-only
  --output-dir results/premise --workers 1 "${PRE[@]}")
premise_iql_1m=(--variants o3f_iql iql_noise --env-ids $D4RL_1M --seeds 1 --offline-steps 1000000 --online-steps 20000
  --output-dir results/premise --workers 1 --extra="--eval-episodes 5 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000 300000"
  --finetune-extra="--eval-freq 2000 --snapshot-every 5000")
online_fraction=(--variants o3f_iql_f05 iql_noise_f05 --env-ids $D4RL_1M --seeds 1 2 3 4 5 --offline-steps 300000
  --online-steps 100000 --output-dir results/online_fraction --pretrained-dir results/decide/pretrained --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000" --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
premise_random=(--variants o3f_iql --env-ids embedded-halfcheetah-random-1m --seeds 1 --offline-steps 300000
  --pretrain-only --output-dir results/premise --workers 1 "${PRE[@]}")
maze_models=(--variants o3f_iql --env-ids embedded-pointmaze-large-20k --seeds 1 2 3 4 5 --offline-steps 300000
  --pretrain-only --output-dir results/evidence_maze --workers 1 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")
evidence_maze=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-20k --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir results/evidence_maze --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
evidence_maze_any=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-20k-any-start --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir results/evidence_maze_any
  --pretrained-dir results/evidence_maze/pretrained --pretrained-on embedded-pointmaze-large-20k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
maze10k_models=(--variants o3f_iql --env-ids embedded-pointmaze-large-10k-any-start --offline-steps 300000
  --pretrain-only --output-dir results/evidence_maze_10k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000")
evidence_maze_10k=(--variants o3f_iql iql_noise --env-ids embedded-pointmaze-large-10k-any-start --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir results/evidence_maze_10k --workers 2
  --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 10000 --snapshot-steps 10000 30000 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")
evidence_random=(--variants o3f_iql iql_noise --env-ids embedded-halfcheetah-random-1m --seeds 1 2 3 4 5
  --offline-steps 300000 --online-steps 100000 --output-dir results/evidence_random
  --pretrained-dir results/premise/pretrained --workers 2 --extra="--eval-episodes 10 --checkpoint-every 5000"
  --pretrain-extra="--eval-freq 25000 --eval-episodes 5 --snapshot-steps 100000"
  --finetune-extra="--eval-freq 5000 --snapshot-every 20000")

# the benchmarks/run.py processes working in an output directory of this checkout, whoever started them
runners() {
  for pid in $(pgrep -f "benchmarks/run.py .*--output-dir $1 " || true); do
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$PWD" ]] && echo "$pid"
  done
  return 0
}

launch() {  # launch NAME NICE COMMAND: in the background, unless this study's last launch still runs
  local name=$1 level=$2 pidfile=$LOGS/$1.pid
  if [[ -f $pidfile ]] && ps -o args= -p "$(cat "$pidfile")" 2>/dev/null | grep -q benchmarks/run.py; then
    echo "$name: already running (pid $(cat "$pidfile"))"
    return
  fi
  mkdir -p "$LOGS"
  nohup nice -n "$level" bash -c "$3" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$pidfile"
  echo "$name: started (nice $level), log $LOGS/$name.log"
}

q() { printf '%q ' "$@"; }  # one command line, quoted, for bash -c

complete_runs() {  # how many of a study's fine-tuning runs are complete (its models' pretraining runs do not count)
  grep -rl --include=summary.json --exclude-dir=pretrain-runs '"complete": true' "$1" 2>/dev/null | wc -l
}

has_runs() {  # whether a study's directory holds a complete fine-tuning run (a study that only pretrained has none)
  (( $(complete_runs "$1") > 0 ))
}

has_models() {  # whether a study's directory holds a finished pretraining run (plot.py draws the models' curves)
  grep -rqs --include=summary.json '"complete": true' "$1/pretrain-runs"
}

gate_passed() {  # gate_passed STUDY: whether results/STUDY/gate.md says it passed (only then its runs start)
  grep -qs "^Decision: pass" "results/$1/gate.md"
}

maze10k_seeds() {  # the 10k maze's models to train: none before the 20k any-start gate fails, then seed 1 alone
  if gate_passed evidence_maze || ! grep -qs "^Decision: fail" results/evidence_maze_any/gate.md; then return; fi
  if grep -qs "^Seed 1: continue" results/evidence_maze_10k/gate.md; then echo 1 2 3 4 5; else echo 1; fi
}

random_model_made() {  # whether premise_random made the random data's seed-1 model, which evidence_random shares:
  # the model is there, or its pretraining finished (a new machine lacks the model; run.py remakes it if a run needs it)
  [[ -f results/premise/pretrained/iql__embedded-halfcheetah-random-1m__seed1.pt ]] ||
    grep -qs '"complete": true' results/premise/pretrain-runs/iql/embedded-halfcheetah-random-1m/seed1/*/summary.json
}

maze_waits() {  # maze_waits STUDY: why a maze study whose gate passed waits (nothing when it may start)
  if [[ $1 == evidence_maze_any ]] && gate_passed evidence_maze && (( $(complete_runs results/evidence_maze) < 10 )); then
    echo "waits for evidence_maze's 10 runs (both mazes passed; the fixed-start one, the task the gate was set for, runs first)"
  fi
}

case "${1:-}" in
  start)
    launch decide 0 "$(q python benchmarks/run.py "${decide[@]}")"
    launch lapo_utd20 10 "$(q python benchmarks/run.py "${lapo_utd20[@]}")"
    launch premise 15 "$(q python benchmarks/run.py "${premise_iql_100k[@]}") && $(q python \
      benchmarks/run.py "${premise_lapo[@]}")"
    launch premise_1m 15 "$(q python benchmarks/run.py "${premise_iql_1m[@]}")"
    launch online_fraction 5 "$(q python benchmarks/run.py "${online_fraction[@]}")"
    launch premise_random 15 "$(q python benchmarks/run.py "${premise_random[@]}")"
    launch maze_models 5 "$(q python benchmarks/run.py "${maze_models[@]}")"
    if random_model_made; then
      launch evidence_random 5 "$(q python benchmarks/run.py "${evidence_random[@]}")"
    else
      echo "evidence_random: waits for premise_random's model (its seed 1); run start again once it exists"
    fi
    seeds=$(maze10k_seeds)
    if [[ -n $seeds ]]; then
      launch maze10k_models 5 "$(q python benchmarks/run.py "${maze10k_models[@]}" --seeds $seeds)"
    else
      echo "maze10k_models: not started: the 20k maze's any-start gate has not failed, or the fixed start passed"
    fi
    for study in evidence_maze evidence_maze_any evidence_maze_10k; do
      declare -n flags=$study
      if gate_passed $study && [[ -n $(maze_waits $study) ]]; then
        echo "$study: not started: $(maze_waits $study)"
      elif gate_passed $study; then
        launch $study 5 "$(q python benchmarks/run.py "${flags[@]}")"
      else
        echo "$study: not started: its gate (results/$study/gate.md) has not passed"
      fi
    done
    ;;
  status)
    for study in decide lapo_utd20 premise_iql_100k premise_lapo premise_iql_1m online_fraction premise_random \
      maze_models evidence_random evidence_maze evidence_maze_any maze10k_models evidence_maze_10k; do
      declare -n flags=$study
      echo "## $study"
      if [[ $study == maze10k_models ]]; then
        seeds=$(maze10k_seeds)
        if [[ -z $seeds ]]; then echo "not started: the 20k maze's any-start gate has not failed, or the fixed start passed"; continue; fi
        flags+=(--seeds $seeds)
      fi
      if [[ $study == evidence_maze* ]] && ! gate_passed $study; then
        echo "not started: its gate (results/$study/gate.md) has not passed"
        continue
      fi
      if [[ $study == evidence_maze_any && -n $(maze_waits $study) ]]; then echo "not started: $(maze_waits $study)" && continue; fi
      python benchmarks/run.py "${flags[@]}" --status
    done
    ;;
  stop)  # run.py first (so that it starts nothing more), then the runs, which save their checkpoints: found by
    # their own --output-dir (absolute, below the study's), not as run.py's children, which a killed run.py orphans
    for dir in results/decide results/lapo_utd20 results/premise results/online_fraction results/evidence_random \
      results/evidence_maze results/evidence_maze_any results/evidence_maze_10k; do
      for pid in $(runners "$dir"); do
        kill -TERM "$pid" 2>/dev/null || true
      done
      pkill -TERM -f -- "--output-dir $PWD/$dir/" && echo "stopped the runs in $dir" || true
    done
    ;;
  figures)  # each study's figures and tables (its models' pretraining curves, also before it has fine-tuned), the
    # premise's, and the evidence across tasks once a second task has runs
    for dir in results results/decide results/lapo_utd20 results/online_fraction results/evidence_random \
      results/evidence_maze results/evidence_maze_any results/evidence_maze_10k; do
      if has_runs "$dir" || has_models "$dir"; then
        python benchmarks/plot.py --results-dir "$dir" >/dev/null && echo "$dir/figures"
      fi
    done
    python benchmarks/premise.py plot --results results/premise/diagnostic.jsonl >/dev/null && echo "results/premise"
    tasks=(results/decide)
    if has_runs results/evidence_random; then tasks+=(results/evidence_random); fi
    for dir in results/evidence_maze results/evidence_maze_any results/evidence_maze_10k; do  # one maze: the first run
      if has_runs "$dir"; then tasks+=("$dir") && break; fi
    done
    if (( ${#tasks[@]} > 1 )); then
      python benchmarks/plot.py --results-dir "${tasks[@]}" --out-dir results/across_tasks >/dev/null
      echo "results/across_tasks"
    fi
    ;;
  *)
    echo "usage: bash benchmarks/studies.sh start|status|stop|figures" >&2
    exit 2
    ;;
esac
