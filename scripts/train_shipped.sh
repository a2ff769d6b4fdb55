#!/usr/bin/env bash
# How the shipped models were trained (docs/history/training-rounds.md). Two stages:
#
# 1. On a GPU machine without Ray (an H100 lent for 15 minutes), the single-process trainer
#    through scripts/gpu_train.py, with the training images in gpu_data/ (BSDS500 and
#    Sun-Hays 80 as published, 25 Urban100 images as JPEG q92 to fit the 64 MiB transfer):
#      python3 scripts/gpu_train.py --images gpu_data -o OUT --budget 540 \
#        small-k3=configs/gpu_small.yaml:pruning_ratio=0.90625 \
#        small-k6=configs/gpu_small.yaml:pruning_ratio=0.8125 \
#        small-k12=configs/gpu_small.yaml:pruning_ratio=0.625 \
#        small-k20=configs/gpu_small.yaml:pruning_ratio=0.375 \
#        small-k12-rho0=configs/gpu_small.yaml:pruning_ratio=0.625:rho=0 \
#        paper-k12=configs/gpu_paper.yaml:pruning_ratio=0.625
#    and the packed runs unpacked into runs/gpu/NAME/. The paper preset got only its warm-up
#    there (it shared the GPU with five runs); a second call continued it alone:
#      python3 scripts/gpu_train.py --images gpu_data -o OUT --budget 200 --probe-steps 40 \
#        paper-k12=configs/gpu_paper.yaml:pruning_ratio=0.625:warmup_steps=0:init_from=INIT
#    with INIT its float32 weights (gpu_train.unpack_model of the packed model_fp16.pt).
# 2. Here (this script): Ray Train on the Parquet shards of the training corpus, from those
#    weights: a further ADMM prune (3 -> 2 channels) for the lowest rate, which ships as
#    small-k2. The masked fine-tunes of k3..k20 below lowered validation PSNR (batch 8 and,
#    then, a too small shuffle buffer; docs/history/training-rounds.md), so their H100 weights ship instead.
# 3. scripts/ship_model.py for each model (the last lines).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SHARDS=${SHARDS:-runs/shards_p128}
[ -d "$SHARDS" ] || $PY jobs/prepare_data.py /work/shared/data/train --out "$SHARDS" \
    --patch-size 128 --crops 16

# Lowest rate: prune the 3-channel model to 2 channels with ADMM, then fine-tune.
$PY jobs/train.py --config configs/continue.yaml shards="$SHARDS" \
    init_from=runs/gpu/small-k3/model.pt run_name=small-k2-ray pruning_ratio=0.9375 \
    rho=100 admm_steps=150 admm_every=25 finetune_steps=150 lr=2.0e-4
for k in 3 6 12 20; do
    $PY jobs/train.py --config configs/continue.yaml shards="$SHARDS" \
        init_from=runs/gpu/small-k$k/model.pt run_name=small-k$k-ray
done

OP="small preset, C=32, %s of 32 latent channels kept (pruning ratio %s); %s"
GPU="~2,300-3,000 steps of batch 32 on an H100 (scripts/gpu_train.py)"
for kr in 3:0.90625 6:0.8125 12:0.625 20:0.375; do
    k=${kr%%:*} r=${kr#*:}
    default=""; [ "$k" = 6 ] && default=--default
    # shellcheck disable=SC2059
    $PY scripts/ship_model.py "small-k$k" "runs/gpu/small-k$k/model.pt" $default \
        --operating-point "$(printf "$OP" "$k" "$r" "$GPU")"
done
# shellcheck disable=SC2059
$PY scripts/ship_model.py small-k2 runs/small-k2-ray/checkpoint_0000300/model.pt \
    --operating-point "$(printf "$OP" 2 0.9375 "small-k3's H100 weights pruned further by ADMM \
on Ray Train (CPU, 150 ADMM + 150 fine-tune steps of batch 8)")"
