#!/usr/bin/env bash
# benches/compare.sh - benchmark `rdist sync` against `rsync -a --delete` on
# generated Python-project trees. See benches/README.md.
#
# Prints a Markdown table to stdout; progress goes to stderr. Installs nothing
# and uses no network; only touches $BENCH_DIR (generated trees, results) and
# one temporary run directory under $DEST_BASE (destinations, rdist cache,
# logs), removed on exit.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
usage: benches/compare.sh [options]

  --trees LIST     comma-separated trees: small,medium,large (default: all)
  --runs N         timed repetitions per scenario, medians reported (default 5)
  --quick          small,medium with 3 runs (explicit --trees/--runs win)
  --rdist PATH     rdist binary (default: <repo>/target/release/rdist)
  --disk           put destinations on the working disk (<repo>/target/bench-dest)
                   instead of tmpfs /dev/shm (DEST_BASE=DIR overrides both)
  --rsync-only     time only rsync (to test the harness without an rdist build)
  --keep           keep the run directory (dests, logs, raw results)
  -h, --help       this help

environment:
  BENCH_DIR   work dir for generated trees and results (default /dev/shm/rdist-bench)
  DEST_BASE   parent dir for the per-run temp dir holding the destinations
  PYTHON      python interpreter (default python3)

Scenarios per tree and tool: initial sync into an absent destination, no-op
resync, incremental (1% of text files get a line appended, 4 KiB changed in
the middle of the 20 MiB blob if the tree has one; the source is restored and
both destinations resynced, untimed, after every repetition). One untimed
warm-up sync per tool and tree. rdist gets a fresh RDIST_CACHE_DIR per tree,
kept across that tree's rounds. After every rdist sync the destination is
compared with rsync's (diff -r, file types and permission bits); any
difference aborts the run.
EOF
}

die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
trap 'printf "compare.sh: failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
PY=${PYTHON:-python3}

TREES="" RUNS="" QUICK=0 DISK=0 RSYNC_ONLY=0 KEEP=0
RDIST=$REPO/target/release/rdist
while (($#)); do
    case $1 in
        --trees) [[ $# -ge 2 ]] || die "--trees needs a value"; TREES=$2; shift 2 ;;
        --trees=*) TREES=${1#*=}; shift ;;
        --runs) [[ $# -ge 2 ]] || die "--runs needs a value"; RUNS=$2; shift 2 ;;
        --runs=*) RUNS=${1#*=}; shift ;;
        --rdist) [[ $# -ge 2 ]] || die "--rdist needs a value"; RDIST=$2; shift 2 ;;
        --rdist=*) RDIST=${1#*=}; shift ;;
        --quick) QUICK=1; shift ;;
        --disk) DISK=1; shift ;;
        --rsync-only) RSYNC_ONLY=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if ((QUICK)); then
    : "${TREES:=small,medium}" "${RUNS:=3}"
fi
: "${TREES:=small,medium,large}" "${RUNS:=5}"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$RUNS'"

# ---------------------------------------------------------------- tool checks
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1  (Debian: apt-get install $2)"); }
need "$PY" python3
need rsync rsync
need diff diffutils
need find findutils
need sha256sum coreutils
need mktemp coreutils
if command -v "$PY" >/dev/null 2>&1 &&
    ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    missing+=("python >= 3.9 ($PY is $("$PY" -V 2>&1))")
fi
if ((!RSYNC_ONLY)) && [[ ! -x $RDIST ]]; then
    missing+=("rdist binary at $RDIST  (build: cargo build --release -p rdist; or pass --rdist PATH; or --rsync-only)")
fi
if ((${#missing[@]})); then
    printf 'compare.sh: missing prerequisites:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi
if ! /usr/bin/time --version 2>&1 | grep -q GNU; then
    log "warning: GNU /usr/bin/time not found (apt-get install time): peak RSS columns will be '-'"
fi
((RSYNC_ONLY)) || RDIST=$(cd -- "$(dirname -- "$RDIST")" && pwd)/$(basename -- "$RDIST")

mapfile -t KNOWN_TREES < <("$PY" "$HERE/gentree.py" --list)
IFS=, read -r -a TREE_LIST <<<"$TREES"
((${#TREE_LIST[@]})) || die "--trees is empty"
for t in "${TREE_LIST[@]}"; do
    [[ " ${KNOWN_TREES[*]} " == *" $t "* ]] || die "unknown tree '$t' (known: ${KNOWN_TREES[*]})"
done

# ---------------------------------------------------------------- work dirs
BENCH_DIR=${BENCH_DIR:-/dev/shm/rdist-bench}
MARKER=.rdist-bench-workdir
mkdir -p -- "$BENCH_DIR"
BENCH_DIR=$(cd -- "$BENCH_DIR" && pwd)
if [[ ! -e $BENCH_DIR/$MARKER ]]; then
    [[ -z $(ls -A -- "$BENCH_DIR") ]] ||
        die "BENCH_DIR=$BENCH_DIR is not empty and has no $MARKER file; refusing to use it"
    : >"$BENCH_DIR/$MARKER"
fi
mkdir -p -- "$BENCH_DIR/trees" "$BENCH_DIR/results"

CREATED_DEST_BASE=""
if [[ -z ${DEST_BASE:-} ]]; then
    if ((DISK)); then
        DEST_BASE=$REPO/target/bench-dest
        [[ -d $DEST_BASE ]] || CREATED_DEST_BASE=$DEST_BASE
        mkdir -p -- "$DEST_BASE"
    else
        DEST_BASE=/dev/shm
    fi
fi
[[ -d $DEST_BASE ]] || die "DEST_BASE=$DEST_BASE is not a directory"
DEST_BASE=$(cd -- "$DEST_BASE" && pwd)
RUN=$(mktemp -d -- "$DEST_BASE/rdist-bench-run.XXXXXX")
RESULTS=$RUN/results.tsv
mkdir -p -- "$RUN/log"
: >"$RESULTS"

MUTATED=""      # tree currently mutated (restored by the exit trap)
MUTATE_STATE=$RUN/mutate-state.json
cleanup() {
    local rc=$?
    trap - ERR
    ((rc == 0)) || log "aborted (exit $rc); cleaning up"
    if [[ -n $MUTATED ]]; then
        if "$PY" "$HERE/mutate.py" restore "$BENCH_DIR/trees/$MUTATED" "$MUTATE_STATE"; then
            mv -f -- "$BENCH_DIR/trees/$MUTATED.stamp.mutating" "$BENCH_DIR/trees/$MUTATED.stamp"
        else
            log "could not restore tree $MUTATED; it will be regenerated next time"
        fi
    fi
    if ((KEEP)); then
        log "kept run directory $RUN"
    elif [[ $RUN == "$DEST_BASE"/rdist-bench-run.* ]]; then
        rm -rf -- "$RUN"
    fi
    [[ -z $CREATED_DEST_BASE ]] || rmdir -- "$CREATED_DEST_BASE" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
GEN_ID=$(sha256sum "$HERE/gentree.py" | cut -c1-16)
EXCLUDES=(--exclude='.*' --exclude='*.pyc' --exclude='*.pyo' --exclude='*~')

ensure_tree() {
    local name=$1 dir=$BENCH_DIR/trees/$1 stamp=$BENCH_DIR/trees/$1.stamp
    if [[ -d $dir && -f $stamp && $(<"$stamp") == "$GEN_ID" ]]; then
        log "tree $name: reusing $dir"
        return
    fi
    log "tree $name: generating into $dir"
    rm -rf -- "$dir" "$dir.manifest.json" "$stamp" "$stamp.mutating"
    "$PY" "$HERE/gentree.py" "$name" "$dir"
    printf '%s\n' "$GEN_ID" >"$stamp"
}

manifest() { # manifest TREE KEY
    "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
        "$BENCH_DIR/trees/$1.manifest.json" "$2"
}

mutate_apply() {
    mv -- "$BENCH_DIR/trees/$1.stamp" "$BENCH_DIR/trees/$1.stamp.mutating"
    MUTATED=$1
    "$PY" "$HERE/mutate.py" apply "$BENCH_DIR/trees/$1" "$MUTATE_STATE" 2>>"$RUN/log/mutate.log"
}

mutate_restore() {
    "$PY" "$HERE/mutate.py" restore "$BENCH_DIR/trees/$1" "$MUTATE_STATE"
    mv -- "$BENCH_DIR/trees/$1.stamp.mutating" "$BENCH_DIR/trees/$1.stamp"
    MUTATED=""
}

# do_sync TOOL DEST TAG: run one sync of $SRC into DEST under timecmd.py; the
# record is left in $RUN/log/TAG.TOOL.{json,out,err}
do_sync() {
    local tool=$1 dest=$2 p=$RUN/log/$3.$1 cwd
    local -a cmd env=()
    case $tool in
        rsync)
            cwd=$RUN
            cmd=(rsync -a --delete "${EXCLUDES[@]}" --stats "$SRC/" "$dest/")
            ;;
        rdist)
            cwd=$SRC
            env=("RDIST_CACHE_DIR=$CACHE")
            cmd=("$RDIST" sync --rsyncdir . --tx "popen//chdir=$dest" --json)
            ;;
    esac
    if ! env "${env[@]}" "$PY" "$HERE/scripts/timecmd.py" --out "$p.json" \
        --stdout "$p.out" --stderr "$p.err" --cwd "$cwd" -- "${cmd[@]}"; then
        {
            printf '\ncompare.sh: %s failed (tree %s, %s):\n  (cd %q && %s' "$tool" "$TREE" "$3" "$cwd" "${env[*]}"
            printf ' %q' "${cmd[@]}"
            printf ')\n--- exit status: %s\n--- stderr (last 40 lines):\n' \
                "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["rc"])' "$p.json" 2>/dev/null || echo '?')"
            tail -n 40 -- "$p.err"
            printf -- '--- stdout (last 20 lines):\n'
            tail -n 20 -- "$p.out"
        } >&2
        exit 1
    fi
    local lingering
    lingering=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["lingering"])' "$p.json")
    if [[ $lingering != 0 ]]; then
        log "warning: $tool ($TREE $3) left $lingering process(es) running after it exited"
    fi
}

record() { # record TOOL SCENARIO REP TAG
    "$PY" "$HERE/scripts/report.py" record --tree "$TREE" --scenario "$2" --tool "$1" --rep "$3" \
        --timing "$RUN/log/$4.$1.json" --stdout "$RUN/log/$4.$1.out" >>"$RESULTS"
}

listing() { # file types + permission bits, rdist's state dir left out
    (cd -- "$1" && find . -mindepth 1 \( -path ./.rdist -prune \) -o -printf '%P %y %m\n' | LC_ALL=C sort)
}

mtimes() { # regular-file and directory mtimes, rdist's state dir left out
    (cd -- "$1" && find . -mindepth 1 \( -path ./.rdist -prune \) -o \( -type f -o -type d \) -printf '%y %T@ %P\n' | LC_ALL=C sort -k3)
}

verify() { # verify LABEL: rdist's destination must equal rsync's
    ((!RSYNC_ONLY)) || return 0
    local out=$RUN/log/verify.out
    if ! diff -r --no-dereference -x .rdist -- "$D_RSYNC" "$D_RDIST" >"$out" 2>&1; then
        {
            printf '\ncompare.sh: VERIFY FAILED (tree %s, %s): rdist destination differs from rsync'"'"'s\n' "$TREE" "$1"
            printf '  diff -r -x .rdist %q %q   (first 40 lines):\n' "$D_RSYNC" "$D_RDIST"
            head -n 40 -- "$out"
        } >&2
        KEEP=1
        exit 1
    fi
    if ! diff <(listing "$D_RSYNC") <(listing "$D_RDIST") >"$out" 2>&1; then
        {
            printf '\ncompare.sh: VERIFY FAILED (tree %s, %s): file types/permissions differ (< rsync, > rdist; first 40 lines):\n' "$TREE" "$1"
            head -n 40 -- "$out"
        } >&2
        KEEP=1
        exit 1
    fi
    # mtimes: reported, not fatal (rsync -a preserves them, rdist need not)
    # (logged when the counts change, so the log stays short)
    local nf nd
    diff <(mtimes "$D_RSYNC") <(mtimes "$D_RDIST") >"$out" 2>&1 || true
    nf=$(grep -c '^> f ' "$out" || true)
    nd=$(grep -c '^> d ' "$out" || true)
    if [[ ${MTIME_WARNED[$TREE]:-0 0} != "$nf $nd" ]]; then
        log "note: $TREE ($1): mtimes differ from rsync's for $nf files and $nd directories (not fatal)$( ((nf + nd)) && printf '; e.g. %s' "$(grep -m1 '^> ' "$out" | cut -d' ' -f4-)")"
        MTIME_WARNED[$TREE]="$nf $nd"
    fi
}
declare -A MTIME_WARNED=()

# tool order alternates between repetitions so neither always goes first
tools_for_rep() {
    if ((RSYNC_ONLY)); then echo rsync
    elif (($1 % 2)); then echo rdist rsync
    else echo rsync rdist
    fi
}

dest_of() { if [[ $1 == rsync ]]; then echo "$D_RSYNC"; else echo "$D_RDIST"; fi; }

# ---------------------------------------------------------------- main loop
load_check() { # warn when something else is using the CPUs
    local load
    read -r load _ </proc/loadavg
    if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
        log "warning: 1-min load average is $load on $(nproc) CPUs: other work is running, timings will be noisy"
    fi
    printf '%s' "$load"
}
LOAD_START=$(load_check)
log "trees: ${TREE_LIST[*]}; runs: $RUNS; destinations under $RUN"
((RSYNC_ONLY)) && log "rsync only (--rsync-only): no rdist runs, no verification"
for TREE in "${TREE_LIST[@]}"; do
    ensure_tree "$TREE"
    SRC=$BENCH_DIR/trees/$TREE
    CACHE=$RUN/cache-$TREE
    D_RSYNC=$RUN/dest-$TREE-rsync
    D_RDIST=$RUN/dest-$TREE-rdist
    mkdir -p -- "$CACHE"

    log "$TREE: warm-up"
    for tool in $(tools_for_rep 1); do do_sync "$tool" "$(dest_of "$tool")" "$TREE-warmup"; done
    want=$(manifest "$TREE" files_synced)
    got=$(find "$D_RSYNC" -type f | wc -l)
    [[ $got == "$want" ]] || die "$TREE: rsync copied $got files, generator says $want are not excluded"
    verify "warm-up initial sync"

    log "$TREE: initial sync x$RUNS"
    for ((rep = 1; rep <= RUNS; rep++)); do
        for tool in $(tools_for_rep "$rep"); do
            d=$(dest_of "$tool")
            rm -rf -- "$d"
            do_sync "$tool" "$d" "$TREE-initial-$rep"
            record "$tool" initial "$rep" "$TREE-initial-$rep"
        done
        verify "initial sync, run $rep"
    done

    log "$TREE: no-op resync x$RUNS"
    for ((rep = 1; rep <= RUNS; rep++)); do
        for tool in $(tools_for_rep "$rep"); do
            do_sync "$tool" "$(dest_of "$tool")" "$TREE-noop-$rep"
            record "$tool" noop "$rep" "$TREE-noop-$rep"
        done
    done
    verify "after no-op resyncs"

    log "$TREE: incremental x$RUNS"
    for ((rep = 1; rep <= RUNS; rep++)); do
        mutate_apply "$TREE"
        for tool in $(tools_for_rep "$rep"); do
            do_sync "$tool" "$(dest_of "$tool")" "$TREE-incremental-$rep"
            record "$tool" incremental "$rep" "$TREE-incremental-$rep"
        done
        verify "incremental sync, run $rep"
        mutate_restore "$TREE"
        for tool in $(tools_for_rep "$rep"); do
            do_sync "$tool" "$(dest_of "$tool")" "$TREE-reset-$rep"
        done
    done
    verify "after resetting to the original tree"

    rm -rf -- "$D_RSYNC" "$D_RDIST" "$CACHE"
done

# ---------------------------------------------------------------- report
fstype=$(stat -f -c %T "$RUN" 2>/dev/null || echo '?')
notes=(
    ""
    "Medians of $RUNS run(s) after 1 warm-up; destinations on $fstype ($DEST_BASE), sources on $(stat -f -c %T "$BENCH_DIR" 2>/dev/null || echo '?')."
    "rdist bytes = \`wire_bytes\` (both directions); rsync bytes = total bytes sent + received (--stats). Peak RSS = largest single process (GNU time %M), see benches/README.md."
    "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr); $(rsync --version | sed -n '1{s/  */ /g;p}')."
)
((RSYNC_ONLY)) || notes+=("rdist: $("$RDIST" --version 2>/dev/null | sed -n 1p || echo '?') ($RDIST).")
for t in "${TREE_LIST[@]}"; do
    notes+=("Tree $t: $(manifest "$t" files_synced) files / $(manifest "$t" bytes_synced | awk '{printf "%.1f MiB", $1/1048576}') synced, $(manifest "$t" files_total) files / $(manifest "$t" bytes_total | awk '{printf "%.1f MiB", $1/1048576}') incl. excluded noise.")
done
LOAD_END=$(load_check)
notes+=("1-min load average: $LOAD_START at start, $LOAD_END at end (the end value includes the benchmark's own load).")
stamp=$(date +%Y%m%d-%H%M%S)
cp -- "$RESULTS" "$BENCH_DIR/results/$stamp.tsv"
"$PY" "$HERE/scripts/report.py" table "$RESULTS" "${notes[@]}" | tee "$BENCH_DIR/results/$stamp.md"
log "raw results: $BENCH_DIR/results/$stamp.tsv"
