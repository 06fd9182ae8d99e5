#!/usr/bin/env bash
# The GPU benchmark in one call on a machine that has torch but not coqui-tts (the lent H100/H200):
# installs the wheels carried in .whl/ (see bench/README.md), prints the environment, runs
# bench/synthesis.py on the full-size random-weight checkpoint, and leaves the log and JSON in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 VOXCLONE_FAST_DECODE=${VOXCLONE_FAST_DECODE:-auto}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers, TTS; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
timeout "${BENCH_TIMEOUT:-520}" python3 bench/synthesis.py --size full --device cuda --tokens "${TOKENS:-100}" \
    --concurrency "${LEVELS:-1,4,8,16,32,64,128}" --watermarked-at "${WATERMARKED_AT:-1,32,128}" --serial-at 8 --eager-at 1,32 --stock-at "${STOCK_AT:-1,32}" \
    --threads 8 --out "$OUT/synthesis_full.json" "$@" 2>&1 | grep -v "^\[transformers\]" | tee "$OUT/bench.log"
