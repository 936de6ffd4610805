#!/usr/bin/env bash
# Issue 18: train the candidates of the bundled model on a GPU machine, with the
# configs unchanged (trainer.accelerator auto picks the GPU; bf16-mixed runs there too;
# the batched augmentation runs on the GPU). Expected: about 10 minutes in all on one
# H200 (the cache decodes ~15,000 tiles once with every core, then each epoch is a few
# seconds). Needs ../shared/data beside the checkout, as the configs say.
#   bash benchmarks/gpu_train_candidates.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
# chain starts from examples/models/aid_efficientnet_lite0 (in the tree), as on a CPU;
# chain176 continues from chain's output, here the one this script just trained.
for candidate in joint chain chain176 aid_only dapt dapt176; do
    start=$(date +%s)
    extra=()
    if [ "$candidate" = chain176 ]; then
        extra=(--set "model.init.path=$out/chain/model.safetensors")
    fi
    .venv/bin/rsscgeo train --config "configs/land_use_33/$candidate.yaml" \
        --out-dir "$out/$candidate" --set trainer.num_workers=0 "${extra[@]}"
    echo "$candidate: $(( $(date +%s) - start )) s"
done
