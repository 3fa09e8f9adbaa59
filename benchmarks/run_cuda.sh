#!/usr/bin/env bash
# Run the CUDA test suite and every CUDA benchmark recorded in benchmarks/RESULTS.md.
#
# Usage (from the repository root, after `pip install -e ".[dev]"` on a GPU machine):
#
#     bash benchmarks/run_cuda.sh OUTDIR [STEP ...]
#
# Each step runs under its own time limit and its output is teed to OUTDIR/<step>.log;
# OUTDIR/summary.txt lists every step's exit status and duration ("TIMEOUT" when its limit
# was hit; what a script printed before that, table rows or progress lines, is kept in the
# log). Without STEPs, all of them run: 25.3 minutes at most. The STEPs, with their
# limits in seconds:
#
#     tests 100  metrics 110  search 80  margin 150                  (group 1: at most 7.4 min)
#     backbones 160  backbones_compile 220  miners 190                 (group 2: at most 9.5 min)
#     partial_fc_1m 120  partial_fc_10m 210  training 180              (group 3: at most 8.5 min)
#
# so a runner that allows 10 minutes per command can run the three groups one after another:
#
#     bash benchmarks/run_cuda.sh out tests metrics search margin
#     bash benchmarks/run_cuda.sh out backbones backbones_compile miners
#     bash benchmarks/run_cuda.sh out partial_fc_1m partial_fc_10m training
#
# torch.compile costs a minute or more per network and batch size, so the backbones run eager
# for all three networks and compiled only for the MFU target (iresnet50, batch 256).
#
# Set PYTHON to choose the interpreter (default: python) and SCALE to multiply every limit
# (e.g. SCALE=2 on a slower GPU).
set -u -o pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [STEP ...]" >&2
    exit 2
fi
OUT=$1
shift
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1  # a step stopped at its limit keeps everything it printed
SCALE=${SCALE:-1}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)  # absolute: the steps run from the repository root
cd "$(dirname "$0")/.." || exit 2

declare -A LIMIT CMD
ORDER=(tests metrics search margin backbones backbones_compile miners partial_fc_1m partial_fc_10m
    training)
LIMIT[tests]=100
CMD[tests]="$PY -m pytest -m cuda -q -p no:cacheprovider"
LIMIT[metrics]=110
CMD[metrics]="$PY benchmarks/bench_metrics.py --device cuda --pairs-n 100000"
LIMIT[search]=80
CMD[search]="$PY benchmarks/bench_search.py --device cuda"
LIMIT[margin]=150
CMD[margin]="$PY benchmarks/bench_margin_losses.py --device cuda --cases 512,512,100000 512,512,1000000"
LIMIT[backbones]=160
CMD[backbones]="$PY benchmarks/bench_backbones.py --device cuda --models iresnet50 iresnet100 resnet50 --batch-sizes 128 256"
LIMIT[backbones_compile]=220
CMD[backbones_compile]="$PY benchmarks/bench_backbones.py --device cuda --models iresnet50 --batch-sizes 256 --compile"
LIMIT[miners]=190
CMD[miners]="$PY benchmarks/bench_miners.py --device cuda"
LIMIT[partial_fc_1m]=120
CMD[partial_fc_1m]="$PY benchmarks/bench_partial_fc.py --device cuda --classes 1000000"
LIMIT[partial_fc_10m]=210
CMD[partial_fc_10m]="$PY benchmarks/bench_partial_fc.py --device cuda --classes 10000000"
LIMIT[training]=180
CMD[training]="$PY benchmarks/bench_training.py --device cuda --backbone iresnet50 --width 1 --embedding-dim 512 --image-size 112 --batch-size 256 --workers 8 --amp bf16 --channels-last --steps 100"

if [ $# -gt 0 ]; then
    STEPS=("$@")
else
    STEPS=("${ORDER[@]}")
fi
for step in "${STEPS[@]}"; do
    if [ -z "${CMD[$step]+x}" ]; then
        echo "unknown step '$step'; steps: ${ORDER[*]}" >&2
        exit 2
    fi
done

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$OUT/summary.txt"

status=0
for step in "${STEPS[@]}"; do
    limit=$(( ${LIMIT[$step]} * SCALE ))
    echo "== $step (limit ${limit}s): ${CMD[$step]}" | tee "$OUT/$step.log"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the command is a word list on purpose
    timeout --kill-after=15 "$limit" ${CMD[$step]} 2>&1 | tee -a "$OUT/$step.log"
    rc=$?
    took=$(( $(date +%s) - start ))
    case $rc in
        0) verdict=ok ;;
        124 | 137) verdict=TIMEOUT; status=1 ;;
        *) verdict="FAILED (exit $rc)"; status=1 ;;
    esac
    echo "$step: $verdict after ${took}s (limit ${limit}s): ${CMD[$step]}" | tee -a "$OUT/summary.txt"
done
exit $status
