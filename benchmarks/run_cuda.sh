#!/usr/bin/env bash
# The CUDA tests and benchmarks, each under its own time limit.
#
# Quick mode: the headline figures in one table, within 8 minutes on one H100 (the mode to run
# when a GPU is lent for a few minutes), from the repository root:
#
#     bash benchmarks/run_cuda.sh --quick OUTDIR [PART ...]
#
# runs the parts of benchmarks/cuda_quick.py (tests arcface largest_c all_pairs eer training;
# all of them without PARTs), each in its own process under its own time limit, and writes
#
#     OUTDIR/results.md     one markdown table: device, torch/CUDA versions and date on top,
#                           then every part's rows, appended as each one is measured; a part
#                           that fails or reaches its limit gets a row saying so, and the run
#                           goes on with the next part
#     OUTDIR/<part>.log     each part's own output; OUTDIR/setup.log the package check and
#                           nvidia-smi (8 files in all)
#
# Limits in seconds: tests 60, arcface 45, largest_c 75, all_pairs 45, eer 110, training 240,
# and all of them together (start-up included) at most --budget, 450 by default: a part gets
# what is left of it when that is less than its own limit, and a part that would get under 5 s
# is skipped (with a row saying so). So the run ends within --budget + 10 s.
#
# Packages: the source tree is used in place (PYTHONPATH=src); no install of metricface is
# needed. If torchvision, scipy, scikit-learn, pytorch-metric-learning, pytest or hypothesis
# cannot be imported, they are installed with pip (from the wheels in --wheels DIR, default
# benchmarks/wheels when it exists, without an index; otherwise from the package index; 90 s
# at most). What still cannot be imported is named in the table's header, and the peer rows that
# need it say "not installed" instead of failing the run.
#
# Options (quick mode):
#   --dry-run          run every part on the CPU at tiny sizes: checks the script (arguments,
#                      table, time limits) without a GPU, measures nothing; installs nothing
#   --budget S         total seconds for the run (default 450)
#   --limit PART=S     another time limit for one part (repeatable)
#   --wheels DIR       a folder of wheels to install missing packages from, offline
#   --stall PART       testing the limits: PART writes one row, then waits until it is stopped
#
# Full mode: every CUDA benchmark command recorded in benchmarks/RESULTS.md (26.8 minutes at
# most, after `pip install -e ".[dev]"`):
#
#     bash benchmarks/run_cuda.sh OUTDIR [STEP ...]
#
# Each step's output goes to OUTDIR/<step>.log (and then to the terminal); OUTDIR/summary.txt
# lists every step's exit status and duration ("TIMEOUT" when its limit was hit; what a script
# printed before that, table rows or progress lines, is kept in the log). The STEPs, with their
# limits in seconds:
#
#     tests 100  metrics 110  search 80  margin 150                  (group 1: at most 7.4 min)
#     backbones 160  backbones_compile 220  miners 190                 (group 2: at most 9.5 min)
#     partial_fc_1m 120  partial_fc_10m 210  training 180  align 90    (group 3: at most 10 min)
#
# so a runner that allows 10 minutes per command can run the three groups one after another:
#
#     bash benchmarks/run_cuda.sh out tests metrics search margin
#     bash benchmarks/run_cuda.sh out backbones backbones_compile miners
#     bash benchmarks/run_cuda.sh out partial_fc_1m partial_fc_10m training align
#
# torch.compile costs a minute or more per network and batch size, so the backbones run eager
# for all three networks and compiled only for the MFU target (iresnet50, batch 256).
#
# Both modes: PYTHON chooses the interpreter (default: python3, else python) and SCALE
# multiplies every limit (a positive number such as 1.5, e.g. on a slower GPU; in quick mode
# the --budget still caps the total). Exit status: 0 when every part or step succeeded, 1 when
# one failed, timed out or was skipped, 2 for a usage error (nothing is run then).
set -u -o pipefail

usage="usage: $0 [--quick [--dry-run] [--budget S] [--limit PART=S] [--wheels DIR] [--stall PART]] OUTDIR [PART|STEP ...]"
die() {
    echo "error: $*" >&2
    exit 2
}
is_number() { [[ $1 =~ ^[0-9]+([.][0-9]*)?$ ]] && awk -v x="$1" 'BEGIN { exit !(x > 0) }'; }
# seconds * SCALE, rounded, at least 1
scaled() { awk -v a="$1" -v s="$SCALE" 'BEGIN { v = int(a * s + 0.5); print (v < 1 ? 1 : v) }'; }

CMDLINE="bash benchmarks/run_cuda.sh $*" # for the table's header
[ "${SCALE:-1}" = 1 ] || CMDLINE="SCALE=$SCALE $CMDLINE"
QUICK=0 DRY=0 BUDGET=450 WHEELS="" STALL=""
declare -A OVERRIDE=()
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --dry-run) DRY=1 ;;
        --budget | --limit | --wheels | --stall)
            [ $# -ge 2 ] || die "$1 needs a value"
            case $1 in
                --budget) BUDGET=$2 ;;
                --wheels) WHEELS=$2 ;;
                --stall) STALL=$2 ;;
                --limit)
                    [[ $2 == *=* ]] || die "--limit takes PART=SECONDS, got '$2'"
                    OVERRIDE[${2%%=*}]=${2#*=}
                    ;;
            esac
            shift
            ;;
        -h | --help)
            echo "$usage"
            exit 0
            ;;
        --) shift; break ;;
        -*) die "unknown option '$1' ($usage)" ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || die "OUTDIR is missing ($usage)"
OUT=$1
shift
SCALE=${SCALE:-1}
is_number "$SCALE" || die "SCALE must be a positive number, got '$SCALE'"
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif command -v python3 >/dev/null; then
    PY=python3
else
    PY=python
fi
command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON)"
export PYTHONUNBUFFERED=1 # a part stopped at its limit keeps everything it printed
REPO=$(cd "$(dirname "$0")/.." && pwd)

# ----------------------------------------------------------------------------- quick mode
if [ "$QUICK" = 1 ]; then
    PARTS_ALL=(tests arcface largest_c all_pairs eer training)
    declare -A LIMIT=([tests]=60 [arcface]=45 [largest_c]=75 [all_pairs]=45 [eer]=110
        [training]=240)
    is_number "$BUDGET" || die "--budget must be a positive number of seconds, got '$BUDGET'"
    for part in "${!OVERRIDE[@]}"; do
        [ -n "${LIMIT[$part]+x}" ] || die "--limit: unknown part '$part'; parts: ${PARTS_ALL[*]}"
        is_number "${OVERRIDE[$part]}" ||
            die "--limit $part: seconds must be a positive number, got '${OVERRIDE[$part]}'"
        LIMIT[$part]=${OVERRIDE[$part]}
    done
    if [ -n "$STALL" ] && [ -z "${LIMIT[$STALL]+x}" ]; then
        die "--stall: unknown part '$STALL'; parts: ${PARTS_ALL[*]}"
    fi
    PARTS=("$@")
    [ ${#PARTS[@]} -gt 0 ] || PARTS=("${PARTS_ALL[@]}")
    for part in "${PARTS[@]}"; do
        [ -n "${LIMIT[$part]+x}" ] || die "unknown part '$part'; parts: ${PARTS_ALL[*]}"
    done
    [ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels: '$WHEELS' is not a folder"
    [ -n "$WHEELS" ] || [ ! -d "$REPO/benchmarks/wheels" ] || WHEELS=$REPO/benchmarks/wheels
    [ -z "$WHEELS" ] || WHEELS=$(cd "$WHEELS" && pwd)
    mkdir -p "$OUT" || die "cannot create '$OUT'"
    OUT=$(cd "$OUT" && pwd)
    TABLE=$OUT/results.md
    [ ! -e "$TABLE" ] || die "$TABLE exists: choose a new OUTDIR (an earlier run is never overwritten)"

    START=$SECONDS
    BUDGET_S=$(awk -v b="$BUDGET" 'BEGIN { print int(b) }')
    cd "$REPO" || exit 2
    export PYTHONPATH="$REPO/src:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
    DRYFLAG=()
    [ "$DRY" = 0 ] || DRYFLAG=(--dry-run)
    [ "$DRY" = 0 ] || export OMP_NUM_THREADS=1 # tiny sizes: one thread each

    # packages: import what the parts need; install what is missing (not in a dry run, whose
    # header still names the versions found)
    NOTE=""
    echo "== packages" | tee "$OUT/setup.log"
    if [ "$DRY" = 0 ]; then
        MISSING=$(timeout 60 "$PY" benchmarks/cuda_quick.py missing 2>>"$OUT/setup.log")
        if [ -n "$MISSING" ]; then
            to_install=${MISSING//metricface/}
            pip_args=(--disable-pip-version-check --retries 0 --timeout 10)
            [ -z "$WHEELS" ] || pip_args+=(--no-index --find-links "$WHEELS")
            echo "missing: $MISSING; installing: $to_install" | tee -a "$OUT/setup.log"
            deadline=$((SECONDS + 90))
            for dist in $to_install; do # one by one: one that cannot be had stops no other
                [ $SECONDS -lt $deadline ] || break
                timeout $((deadline - SECONDS)) "$PY" -m pip install "${pip_args[@]}" "$dist" \
                    >>"$OUT/setup.log" 2>&1 || echo "pip could not install $dist" | tee -a "$OUT/setup.log"
            done
            NOTE="packages: tried to install $to_install with pip; "
            MISSING=$(timeout 60 "$PY" benchmarks/cuda_quick.py missing 2>>"$OUT/setup.log")
            NOTE="${NOTE}not importable: ${MISSING:-none} (rows that need them say so)"
            echo "$NOTE" | tee -a "$OUT/setup.log"
        fi
    fi

    # the table's header: device, versions, date
    COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    {
        echo "== nvidia-smi"
        timeout 10 nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    } >>"$OUT/setup.log"
    timeout 60 "$PY" benchmarks/cuda_quick.py header --table "$TABLE" "${DRYFLAG[@]}" \
        --command "$CMDLINE" --commit "$COMMIT" --note "$NOTE" >>"$OUT/setup.log" 2>&1
    rc=$?
    if [ $rc = 2 ]; then
        tail -n 1 "$OUT/setup.log" >&2
        exit 2
    elif [ $rc != 0 ] || [ ! -s "$TABLE" ]; then
        rm -f "$TABLE"
        {
            echo "## quick CUDA run — $(date -u +%Y-%m-%d) (the device header failed: see setup.log)"
            echo "command: \`$CMDLINE\` (commit $COMMIT)"
            echo
            echo "| part | figure | metricface | peer | ratio | notes |"
            echo "|---|---|---|---|---|---|"
        } >"$TABLE"
    fi

    status=0 times=""
    for part in "${PARTS[@]}"; do
        left=$((BUDGET_S - (SECONDS - START)))
        limit=$(scaled "${LIMIT[$part]}") why="its limit"
        [ "$limit" -le "$left" ] || limit=$left why="what was left of the run's budget"
        log=$OUT/$part.log
        if [ "$left" -lt 5 ]; then
            echo "| $part | - | SKIPPED | - | - | the run's budget of ${BUDGET} s was used up |" >>"$TABLE"
            echo "== $part: skipped (budget used up)"
            times+="$part skipped; "
            status=1
            continue
        fi
        stall=()
        [ "$part" != "$STALL" ] || stall=(--stall)
        echo "== $part (limit ${limit} s)"
        t0=$SECONDS
        timeout --kill-after=5 "$limit" "$PY" benchmarks/cuda_quick.py "$part" --table "$TABLE" \
            --limit "$limit" "${DRYFLAG[@]}" "${stall[@]}" >"$log" 2>&1
        rc=$?
        took=$((SECONDS - t0))
        case $rc in
            0) verdict=ok ;;
            124 | 137)
                verdict=TIMEOUT
                echo "| $part | - | TIMEOUT | - | - | stopped after ${limit} s, ${why}; the rows it wrote above (if any) were measured before that; log: $part.log |" >>"$TABLE"
                ;;
            *)
                verdict="FAILED (exit $rc)"
                last=$(grep -v '^\s*$' "$log" | tail -n 1 | tr '|' '/' | cut -c1-300)
                echo "| $part | - | FAILED (exit $rc) | - | - | after ${took} s: ${last:-no output}; log: $part.log |" >>"$TABLE"
                ;;
        esac
        [ "$rc" = 0 ] || status=1
        echo "   $part: $verdict after ${took} s"
        times+="$part $verdict ${took} s (limit ${limit} s); "
    done
    {
        echo
        echo "Parts: ${times%; }. Total $((SECONDS - START)) s (budget ${BUDGET} s)."
    } >>"$TABLE"
    echo
    cat "$TABLE"
    exit $status
fi

# ----------------------------------------------------------------------------- full mode
[ "$DRY" = 0 ] || die "--dry-run needs --quick"
if [ -n "$STALL$WHEELS" ] || [ ${#OVERRIDE[@]} != 0 ]; then
    die "--limit, --stall and --wheels need --quick"
fi
declare -A LIMIT CMD
ORDER=(tests metrics search margin backbones backbones_compile miners partial_fc_1m partial_fc_10m
    training align)
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
LIMIT[align]=90
CMD[align]="$PY benchmarks/bench_align.py --device cuda --images 4096 --batch 512 --csv-rows 0"

if [ $# -gt 0 ]; then
    STEPS=("$@")
else
    STEPS=("${ORDER[@]}")
fi
for step in "${STEPS[@]}"; do
    [ -n "${CMD[$step]+x}" ] || die "unknown step '$step'; steps: ${ORDER[*]}"
done
mkdir -p "$OUT" || die "cannot create '$OUT'"
OUT=$(cd "$OUT" && pwd) # absolute: the steps run from the repository root
cd "$REPO" || exit 2

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$OUT/summary.txt"

status=0
for step in "${STEPS[@]}"; do
    limit=$(scaled "${LIMIT[$step]}")
    echo "== $step (limit ${limit}s): ${CMD[$step]}" | tee "$OUT/$step.log"
    start=$SECONDS
    # The output goes to the log file, not through a pipe: a compile worker that outlives its
    # step must not hold the next command up. The log is shown once the step has ended.
    # shellcheck disable=SC2086  # the command is a word list on purpose
    timeout --kill-after=15 "$limit" ${CMD[$step]} >>"$OUT/$step.log" 2>&1
    rc=$?
    tail -n +2 "$OUT/$step.log"
    took=$((SECONDS - start))
    case $rc in
        0) verdict=ok ;;
        124 | 137) verdict=TIMEOUT; status=1 ;;
        *) verdict="FAILED (exit $rc)"; status=1 ;;
    esac
    echo "$step: $verdict after ${took}s (limit ${limit}s): ${CMD[$step]}" | tee -a "$OUT/summary.txt"
done
exit $status
