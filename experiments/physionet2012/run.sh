#!/bin/bash
# Every run of experiments/physionet2012/README.md's table, one after the other, with each run's
# wall time in $RUNS/times.txt:
#   bash experiments/physionet2012/run.sh [DATA_DIR] [RUNS]
# Protocol 1: train on set A (15% of it for validation), test on the whole of set B; 3 training
# seeds of mtan (the recipe, configs/ehr_physionet.py) and of GRU-D (its :gru_d variant), each
# model's ensemble of its seeds, the paired comparisons, and the tabular baselines. Protocol 2:
# 5-fold cross-validation by stay over sets A and B together, the same models on the same folds.
set -euo pipefail
DATA=${1:-../shared/data/physionet2012}
RUNS=${2:-runs/p12}
CONFIG=configs/ehr_physionet.py
mkdir -p "$RUNS"

config() {  # config MODEL: the config of mtan (the recipe) or of grud
  if [[ $1 == grud ]]; then echo "$CONFIG:gru_d"; else echo "$CONFIG"; fi
}

timed() {  # timed NAME COMMAND...: runs it, appends "NAME seconds" to times.txt
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "$name $((SECONDS - start))" >>"$RUNS/times.txt"
}

for seed in 0 1 2; do
  for model in mtan grud; do
    timed "p1_${model}_s$seed" python -m medjax.main --config="$(config $model)" \
      --workdir="$RUNS/p1_${model}_s$seed" --config.data.dir="$DATA" --config.data.test_set=b \
      --config.seed=$seed
  done
done
for model in mtan grud; do
  members=$(echo "$RUNS"/p1_${model}_s{0,1,2} | tr ' ' ',')
  timed "p1_${model}_ensemble" python -m medjax.main --mode=ensemble --config="$(config $model)" \
    --workdir="$RUNS/p1_${model}_ensemble" --members="$members" --config.data.dir="$DATA" \
    --config.data.test_set=b
done
for run in s0 ensemble; do
  python experiments/compare.py --a="$RUNS/p1_mtan_$run" --b="$RUNS/p1_grud_$run" \
    | tee "$RUNS/p1_compare_$run.txt"
done
timed p1_baselines python experiments/physionet2012/baselines.py --data_dir="$DATA" \
  --test_set=b --seeds=0 | tee "$RUNS/p1_baselines.txt"

for model in mtan grud; do
  timed "p2_$model" python experiments/crossval.py --config="$(config $model)" \
    --workdir="$RUNS/p2_$model" --folds=5 --config.data.dir="$DATA" --config.data.train_sets=a,b
done
timed p2_baselines python experiments/physionet2012/baselines.py --data_dir="$DATA" \
  --train_sets=a,b --folds=5 --seeds=0 | tee "$RUNS/p2_baselines.txt"
