#!/usr/bin/env bash
# The README's main job, on the embedded default: set up .venv, start a local Ray head,
# cut Parquet shards from the bundled sample photos, submit a short jobs/train.py run with
# `ray job submit`, compress and decompress the samples with the shipped default model,
# run the RD evaluation against JPEG on them, and print where every output is, ending with
# the evaluation's report page (index.html).
# Outputs go to out/main/ (override with OUT=...). Idempotent: a rerun starts clean.
# A head that cluster/start-local.sh started before is used and left running; one this
# script starts is stopped at the end; any other Ray on the machine is never touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
OUT="$(realpath -m "${OUT:-out/main}")"
SAMPLES="$ROOT/caeadmm/samples"
source cluster/local-head.sh
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$OUT"
mkdir -p "$OUT"

step "1/6 local Ray head (cluster/start-local.sh)"
if head_running; then
    echo "using the Ray head that cluster/start-local.sh started before (127.0.0.1:$GCS_PORT);" \
        "it stays running"
else
    cluster/start-local.sh
    trap 'cluster/stop-local.sh' EXIT
fi
source "$HEAD_DIR/client.env"  # RAY_ADDRESS (the head), RAY_API_SERVER_ADDRESS (its job server)

step "2/6 Parquet patch shards from the bundled samples (jobs/prepare_data.py)"
python jobs/prepare_data.py "$SAMPLES" -o "$OUT/shards" --patch-size 128 --crops 16 \
    --address "127.0.0.1:$GCS_PORT" --quiet

step "3/6 short training run: ray job submit -- python jobs/train.py"
# The job server answers before its agent is ready on a fresh head: retry the submission.
for attempt in $(seq 1 30); do
    if SUBMITTED="$(ray job submit --address "$RAY_API_SERVER_ADDRESS" --no-wait --working-dir . \
        --runtime-env-json '{"excludes": ["out", "runs"]}' -- \
        python jobs/train.py --config configs/main.yaml shards="$OUT/shards" \
        storage_path="$OUT/train" 2>"$OUT/submit.log")"; then break; fi
    sleep 2
done
JOB="$(grep -o 'raysubmit_[A-Za-z0-9]*' <<<"$SUBMITTED" | head -1)"
[ -n "$JOB" ] || { echo "job submission failed, see $OUT/submit.log"; exit 1; }
echo "submitted $JOB; following its log"
ray job logs --address "$RAY_API_SERVER_ADDRESS" --follow "$JOB" 2>&1 | tee "$OUT/train.log" \
    | grep -v -E '^\S+ \S+\s+(INFO|SUCC) cli.py|^\s*$'
grep -q "Job '$JOB' succeeded" "$OUT/train.log" \
    || { echo "training job $JOB did not succeed (log: $OUT/train.log)"; exit 1; }

step "4/6 compress + decompress the samples with the shipped default model"
caeadmm compress "$SAMPLES" -o "$OUT/compressed"
caeadmm decompress "$OUT/compressed" -o "$OUT/decompressed"
caeadmm info "$OUT/compressed"/*.cae

step "5/6 rate-distortion evaluation against JPEG"
# the default model's curve: five of its qualities (a variable-rate model), or its one point
CAE="$(python -c "from caeadmm import zoo; m = next(m for m in zoo.list_models() if m.default)
print(m.name + ('' if m.default_quality is None else '@0,2,4,6,8'))")"
caeadmm eval "$SAMPLES" --codecs "cae:$CAE,jpeg" -o "$OUT/eval" \
    --address "127.0.0.1:$GCS_PORT"

step "6/6 outputs"
cat <<EOM
  shards            $OUT/shards  (manifest: _manifest.json)
  training run      $OUT/train/main-demo  (checkpoints, log.csv)
  compressed        $OUT/compressed/*.cae
  decompressed      $OUT/decompressed/
  RD evaluation     $OUT/eval  (summary, per-image results, JSON, plots)
EOM
# The Ray head this script started stops now, so that the last line is the report page.
if [ -n "$(trap -p EXIT)" ]; then cluster/stop-local.sh; trap - EXIT; fi
echo "Report page (open it in a browser): $OUT/eval/index.html"
