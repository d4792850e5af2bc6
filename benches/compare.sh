#!/usr/bin/env bash
# benches/compare.sh - benchmark `rdist sync` against `rsync -a --delete` on
# generated Python-project trees, locally or over ssh on loopback, and (with
# --pytest) `rdist run` against pytest-xdist on generated test suites. See
# benches/README.md.
#
# Prints Markdown tables to stdout; progress goes to stderr. Installs nothing.
# The only network traffic is ssh to its own sshd on 127.0.0.1 (--transport
# ssh). Only touches $BENCH_DIR (generated trees, results) and one temporary
# run directory under $DEST_BASE (destinations, rdist caches, sshd keys and
# config, logs), removed on exit.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
usage: benches/compare.sh [options]

  --trees LIST     comma-separated trees: small,medium,large (default: all)
  --runs N         timed repetitions per scenario, medians reported
                   (default 5; 3 with --pytest)
  --quick          small,medium with 3 runs (explicit --trees/--runs win);
                   with --pytest: 2 runs
  --transport T    local (default), ssh or both: `--tx popen//chdir=DEST` vs
                   plain rsync, and/or `--tx ssh=benchhost//chdir=DEST` vs
                   `rsync -e SSH` through a private sshd on 127.0.0.1 that the
                   script starts (plus rdist to 4 workers on that host, and
                   rsync through an OpenSSH master connection, as rdist's
                   default connection reuse does)
  --ssh            same as --transport ssh
  --pytest         instead of syncs: time `rdist run` against `pytest -n 2`,
                   xdist's `-d --tx 2*popen//chdir=DIR --rsyncdir`, and serial
                   pytest on generated suites (see benches/gensuite.py)
  --suites LIST    with --pytest: quick,sleepy,straggler (default: all)
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

--transport ssh needs OpenSSH (sshd, ssh, ssh-keygen). The sshd runs as the
current user on a free port of 127.0.0.1 with keys made in the run directory
(benches/scripts/sshd.sh) and is killed on exit. rdist uploads its binary into
the run directory's remote cache during the first (untimed) warm-up. rdist
runs with its default ssh connection reuse: a first untimed sync per tree,
outside the timing harness, leaves its master connection, which the timed runs
use. rsync is timed twice: plain (one login per sync) and as `rsync+mux`,
through a master the script starts once (`ssh -N -o ControlMaster=yes -o
ControlPersist=yes`, `-e 'SSH -o ControlMaster=no -o ControlPath=P'`). All
masters are stopped on exit.

--pytest needs pytest and pytest-xdist for $PYTHON. Every parallel variant
runs each suite once untimed first (rdist's durations cache then exists, as on
a developer's machine); all runs must report the same pass counts.
EOF
}

die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
trap 'printf "compare.sh: failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
# shellcheck source=scripts/sshd.sh
. "$HERE/scripts/sshd.sh"
PY=${PYTHON:-python3}

TREES="" RUNS="" QUICK=0 DISK=0 RSYNC_ONLY=0 KEEP=0 TRANSPORT="" PYTEST=0 SUITES=""
RDIST=$REPO/target/release/rdist
while (($#)); do
    case $1 in
        --trees) [[ $# -ge 2 ]] || die "--trees needs a value"; TREES=$2; shift 2 ;;
        --trees=*) TREES=${1#*=}; shift ;;
        --runs) [[ $# -ge 2 ]] || die "--runs needs a value"; RUNS=$2; shift 2 ;;
        --runs=*) RUNS=${1#*=}; shift ;;
        --rdist) [[ $# -ge 2 ]] || die "--rdist needs a value"; RDIST=$2; shift 2 ;;
        --rdist=*) RDIST=${1#*=}; shift ;;
        --transport) [[ $# -ge 2 ]] || die "--transport needs a value"; TRANSPORT=$2; shift 2 ;;
        --transport=*) TRANSPORT=${1#*=}; shift ;;
        --ssh) TRANSPORT=ssh; shift ;;
        --pytest) PYTEST=1; shift ;;
        --suites) [[ $# -ge 2 ]] || die "--suites needs a value"; SUITES=$2; shift 2 ;;
        --suites=*) SUITES=${1#*=}; shift ;;
        --quick) QUICK=1; shift ;;
        --disk) DISK=1; shift ;;
        --rsync-only) RSYNC_ONLY=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if ((PYTEST)); then
    [[ -z $TREES && -z $TRANSPORT ]] || die "--pytest takes no --trees/--transport/--ssh (it runs test suites, see --suites)"
    ((!RSYNC_ONLY)) || die "--pytest and --rsync-only do not go together"
    ((!DISK)) || die "--pytest does not take --disk (set DEST_BASE to move the run directory)"
    ((QUICK)) && : "${RUNS:=2}"
    : "${RUNS:=3}" "${SUITES:=quick,sleepy,straggler}"
else
    [[ -z $SUITES ]] || die "--suites needs --pytest"
fi
if ((QUICK)); then
    : "${TREES:=small,medium}" "${RUNS:=3}"
fi
: "${TREES:=small,medium,large}" "${RUNS:=5}" "${TRANSPORT:=local}"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$RUNS'"
case $TRANSPORT in
    local) TRANSPORTS=(local) ;;
    ssh) TRANSPORTS=(ssh) ;;
    both) TRANSPORTS=(local ssh) ;;
    *) die "--transport must be local, ssh or both, got '$TRANSPORT'" ;;
esac
((PYTEST)) && TRANSPORTS=()
[[ " ${TRANSPORTS[*]} " == *" ssh "* ]] && WANT_SSH=1 || WANT_SSH=0

# ---------------------------------------------------------------- tool checks
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1  (Debian: apt-get install $2)"); }
need "$PY" python3
((PYTEST)) || need rsync rsync
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
SSHD_BIN="" SSH_BIN="" KEYGEN_BIN=""
if ((WANT_SSH)); then
    for d in /usr/sbin /usr/local/sbin /sbin; do [[ -x $d/sshd ]] && { SSHD_BIN=$d/sshd; break; }; done
    SSH_BIN=$(command -v ssh 2>/dev/null || true)
    KEYGEN_BIN=$(command -v ssh-keygen 2>/dev/null || true)
    [[ -n $SSHD_BIN ]] || missing+=("sshd in /usr/sbin  (Debian: apt-get install openssh-server)")
    [[ -n $SSH_BIN ]] || missing+=("ssh  (Debian: apt-get install openssh-client)")
    [[ -n $KEYGEN_BIN ]] || missing+=("ssh-keygen  (Debian: apt-get install openssh-client)")
fi
if ((PYTEST)) && command -v "$PY" >/dev/null 2>&1; then
    if ! pyerr=$("$PY" -c 'import pytest, xdist' 2>&1); then
        missing+=("pytest and pytest-xdist for $PY ($(tail -n 1 <<<"$pyerr"); install: $PY -m pip install pytest pytest-xdist)")
    fi
fi
if ((${#missing[@]})); then
    printf 'compare.sh: missing prerequisites:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi
if ((!PYTEST)) && ! /usr/bin/time --version 2>&1 | grep -q GNU; then
    log "warning: GNU /usr/bin/time not found (apt-get install time): peak RSS columns will be '-'"
fi
((RSYNC_ONLY)) || RDIST=$(cd -- "$(dirname -- "$RDIST")" && pwd)/$(basename -- "$RDIST")

if ((PYTEST)); then
    mapfile -t KNOWN_SUITES < <("$PY" "$HERE/gensuite.py" --list)
    IFS=, read -r -a SUITE_LIST <<<"$SUITES"
    ((${#SUITE_LIST[@]})) || die "--suites is empty"
    for t in "${SUITE_LIST[@]}"; do
        [[ " ${KNOWN_SUITES[*]} " == *" $t "* ]] || die "unknown suite '$t' (known: ${KNOWN_SUITES[*]})"
    done
else
    mapfile -t KNOWN_TREES < <("$PY" "$HERE/gentree.py" --list)
    IFS=, read -r -a TREE_LIST <<<"$TREES"
    ((${#TREE_LIST[@]})) || die "--trees is empty"
    for t in "${TREE_LIST[@]}"; do
        [[ " ${KNOWN_TREES[*]} " == *" $t "* ]] || die "unknown tree '$t' (known: ${KNOWN_TREES[*]})"
    done
fi

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
# Time a copy of the binary: a rebuild of target/release/rdist in the middle of
# a run must not mix two builds (over ssh it would also upload the new build
# during a timed sync).
RDIST_DESC=""
if ((!RSYNC_ONLY)); then
    RDIST_DESC="$("$RDIST" --version 2>/dev/null | sed -n 1p || echo '?') (a copy of $RDIST taken at the start; built $(date -r "$RDIST" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum "$RDIST" | cut -c1-12))"
    cp -- "$RDIST" "$RUN/rdist"
    RDIST=$RUN/rdist
fi

MUTATED=""      # tree currently mutated (restored by the exit trap)
BENCH_PID=""    # the --pytest driver (stopped by the exit trap)
# our sshd (sshd.sh's SSHD_PID) and the ssh master connections: stopped by the exit trap
stop_sshd() {
    local c
    for c in "$RUN"/cache-*/ssh; do ssh_masters_stop "$c"; done
    ssh_masters_stop "$RUN/sshd/mux"
    sshd_stop
}
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
    stop_sshd
    if [[ -n $BENCH_PID ]]; then # --pytest driver still running: it stops its commands on TERM
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
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

# ---------------------------------------------------------------- sshd (--transport ssh)
# A private sshd on 127.0.0.1:<free port> (benches/scripts/sshd.sh). Both tools
# reach it through the same wrapper ($SSH_WRAPPER = `ssh -F $RUN/sshd/ssh_config`),
# whose config defines the alias $SSH_HOST and sets RDIST_CACHE_DIR on the host
# to $RUN/remote-cache, so the binary rdist uploads lands in the run directory.
# rsync+mux goes through the master at $RSYNC_MUX, started here.
SSH_HOST=benchhost
RSYNC_MUX=""
start_sshd() {
    sshd_start "$RUN/sshd" "$RUN/remote-cache" "$SSH_HOST=127.0.0.1" || { KEEP=1; die "sshd did not start (run directory kept)"; }
    local user
    user=$(id -un)
    local got
    got=$("$SSH_WRAPPER" "$SSH_HOST" 'printf "%s|" "$RDIST_CACHE_DIR"; command -v rsync' </dev/null 2>&1) ||
        die "cannot log in through the private sshd: $got (sshd log: $RUN/sshd/sshd.log)"
    [[ $got == "$RUN/remote-cache|"* ]] ||
        die "the private sshd does not pass RDIST_CACHE_DIR through (AcceptEnv/SetEnv): got '$got'"
    [[ $got == *"|/"* ]] || die "rsync is not on the ssh side's PATH: got '$got'"
    log "sshd: pid $SSHD_PID on 127.0.0.1:$SSH_PORT as $user; ssh wrapper $SSH_WRAPPER"
    # what one bare connection costs (plain rsync pays it on every sync)
    SSH_BASELINE=$("$PY" -c '
import statistics, subprocess, sys, time
ts = []
for _ in range(5):
    t = time.perf_counter()
    subprocess.run(sys.argv[1:], check=True, stdin=subprocess.DEVNULL)
    ts.append(time.perf_counter() - t)
print(f"{statistics.median(ts):.3f} s median, {min(ts):.3f} s min")
' "$SSH_WRAPPER" "$SSH_HOST" true)
    log "sshd: a bare \`ssh $SSH_HOST true\` takes $SSH_BASELINE"
    mkdir -m 700 -- "$RUN/sshd/mux"
    RSYNC_MUX=$RUN/sshd/mux/rsync
    "$SSH_WRAPPER" -N -o ControlMaster=yes -o ControlPersist=yes -o "ControlPath=$RSYNC_MUX" "$SSH_HOST" </dev/null >/dev/null 2>"$RUN/sshd/mux.log" ||
        die "cannot start the master connection for rsync+mux: $(cat "$RUN/sshd/mux.log")"
}

# rdist's first sync with a fresh cache starts its ssh master: run it here, outside
# timecmd.py, whose subreaper would adopt the backgrounded master and wait for it.
prime_ssh() {
    ((!RSYNC_ONLY)) || return 0
    (cd -- "$SRC" && env RDIST_CACHE_DIR="$CACHE" RDIST_SSH="$SSH_WRAPPER" \
        "$RDIST" sync --rsyncdir . --tx "ssh=$SSH_HOST//chdir=$D_RDIST") >"$RUN/log/$T-prime.log" 2>&1 ||
        die "rdist's first ssh sync failed: $(tail -n 5 "$RUN/log/$T-prime.log")"
    compgen -G "$CACHE/ssh/*" >/dev/null || log "warning: rdist left no ssh master in $CACHE/ssh: the timed runs log in every time"
}
SSH_BASELINE=""

uploaded_binaries() { # the rdist binaries uploaded into the remote cache: path size mtime
    [[ -d $RUN/remote-cache/bin ]] || return 0
    find "$RUN/remote-cache/bin" -type f -name rdist -printf '%p %s %T@\n' | LC_ALL=C sort
}

# do_sync TOOL DEST TAG: run one sync of $SRC into DEST under timecmd.py; the
# record is left in $RUN/log/TAG.TOOL.{json,out,err}. TOOL is rsync, rdist, or
# rdist4 (rdist to four workers in the same directory of one host; ssh only).
do_sync() {
    local tool=$1 dest=$2 p=$RUN/log/$3.$1 cwd
    local -a cmd env=()
    case $XP/$tool in
        local/rsync)
            cwd=$RUN
            cmd=(rsync -a --delete "${EXCLUDES[@]}" --stats "$SRC/" "$dest/")
            ;;
        local/rdist)
            cwd=$SRC
            env=("RDIST_CACHE_DIR=$CACHE")
            cmd=("$RDIST" sync --rsyncdir . --tx "popen//chdir=$dest" --json)
            ;;
        ssh/rsync)
            cwd=$RUN
            cmd=(rsync -a --delete "${EXCLUDES[@]}" --stats -e "$SSH_WRAPPER" "$SRC/" "$SSH_HOST:$dest/")
            ;;
        ssh/rsyncmux)
            cwd=$RUN
            cmd=(rsync -a --delete "${EXCLUDES[@]}" --stats -e "$SSH_WRAPPER -o ControlMaster=no -o ControlPath=$RSYNC_MUX"
                "$SRC/" "$SSH_HOST:$dest/")
            ;;
        ssh/rdist | ssh/rdist4)
            cwd=$SRC
            env=("RDIST_CACHE_DIR=$CACHE" "RDIST_SSH=$SSH_WRAPPER")
            local n=""
            [[ $tool == rdist4 ]] && n="4*"
            cmd=("$RDIST" sync --rsyncdir . --tx "${n}ssh=$SSH_HOST//chdir=$dest" --json)
            ;;
        *) die "internal: no command for $tool over $XP" ;;
    esac
    if ! env "${env[@]}" "$PY" "$HERE/scripts/timecmd.py" --out "$p.json" \
        --stdout "$p.out" --stderr "$p.err" --cwd "$cwd" -- "${cmd[@]}"; then
        {
            printf '\ncompare.sh: %s failed (%s, tree %s, %s):\n  (cd %q && %s' "$tool" "$XP" "$TREE" "$3" "$cwd" "${env[*]}"
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
        log "warning: $tool ($XP $TREE $3) left $lingering process(es) running after it exited"
    fi
}

record() { # record TOOL SCENARIO REP TAG
    "$PY" "$HERE/scripts/report.py" record --tree "$TREE" --scenario "$2" --tool "$1" --rep "$3" \
        --transport "$XP" --timing "$RUN/log/$4.$1.json" --stdout "$RUN/log/$4.$1.out" >>"$RESULTS"
}

listing() { # file types + permission bits, rdist's state dir left out
    (cd -- "$1" && find . -mindepth 1 \( -path ./.rdist -prune \) -o -printf '%P %y %m\n' | LC_ALL=C sort)
}

mtimes() { # regular-file and directory mtimes, rdist's state dir left out
    (cd -- "$1" && find . -mindepth 1 \( -path ./.rdist -prune \) -o \( -type f -o -type d \) -printf '%y %T@ %P\n' | LC_ALL=C sort -k3)
}

verify() { # verify LABEL: each rdist destination must equal rsync's
    ((!RSYNC_ONLY)) || return 0
    local tool
    for tool in $(rdist_tools); do verify_one "$1" "$tool" "$(dest_of "$tool")"; done
}

verify_one() { # verify_one LABEL TOOL DEST
    local out=$RUN/log/verify.out what="$XP, tree $TREE, $2, $1"
    if ! diff -r --no-dereference -x .rdist -- "$D_RSYNC" "$3" >"$out" 2>&1; then
        {
            printf '\ncompare.sh: VERIFY FAILED (%s): rdist destination differs from rsync'"'"'s\n' "$what"
            printf '  diff -r -x .rdist %q %q   (first 40 lines):\n' "$D_RSYNC" "$3"
            head -n 40 -- "$out"
        } >&2
        KEEP=1
        exit 1
    fi
    if ! diff <(listing "$D_RSYNC") <(listing "$3") >"$out" 2>&1; then
        {
            printf '\ncompare.sh: VERIFY FAILED (%s): file types/permissions differ (< rsync, > rdist; first 40 lines):\n' "$what"
            head -n 40 -- "$out"
        } >&2
        KEEP=1
        exit 1
    fi
    # mtimes: reported, not fatal (rsync -a preserves them, rdist need not)
    # (logged when the counts change, so the log stays short)
    local nf nd k="$XP/$TREE/$2"
    diff <(mtimes "$D_RSYNC") <(mtimes "$3") >"$out" 2>&1 || true
    nf=$(grep -c '^> f ' "$out" || true)
    nd=$(grep -c '^> d ' "$out" || true)
    if [[ ${MTIME_WARNED[$k]:-0 0} != "$nf $nd" ]]; then
        log "note: $TREE ($XP, $2, $1): mtimes differ from rsync's for $nf files and $nd directories (not fatal)$( ((nf + nd)) && printf '; e.g. %s' "$(grep -m1 '^> ' "$out" | cut -d' ' -f4-)")"
        MTIME_WARNED[$k]="$nf $nd"
    fi
}
declare -A MTIME_WARNED=()

rdist_tools() { # the rdist variants of the current transport
    ((RSYNC_ONLY)) && return 0
    if [[ $XP == ssh ]]; then echo rdist rdist4; else echo rdist; fi
}

rsync_tools() { # the rsync variants of the current transport
    if [[ $XP == ssh ]]; then echo rsync rsyncmux; else echo rsync; fi
}

# the tool order rotates between repetitions so none always goes first
tools_for_rep() {
    local -a t
    read -r -a t <<<"$(rdist_tools) $(rsync_tools)"
    local k=$((($1 - 1) % ${#t[@]}))
    echo "${t[@]:k}" "${t[@]:0:k}"
}

dest_of() {
    case $1 in
        rsync) echo "$D_RSYNC" ;;
        rsyncmux) echo "$D_RSYNCMUX" ;;
        rdist) echo "$D_RDIST" ;;
        rdist4) echo "$D_RDIST4" ;;
    esac
}

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

# ---------------------------------------------------------------- --pytest
if ((PYTEST)); then
    log "suites: ${SUITE_LIST[*]}; runs: $RUNS; run directory $RUN"
    stamp=$(date +%Y%m%d-%H%M%S)
    rc=0
    # in the background, so a signal runs the exit trap (which stops it) at once
    "$PY" "$HERE/scripts/pytestbench.py" --rdist "$RDIST" --python "$PY" --run-dir "$RUN" \
        --suites "$SUITES" --runs "$RUNS" --results "$RUN/pytest-results.tsv" \
        --rdist-desc "$RDIST_DESC" --load-start "$LOAD_START" >"$RUN/pytest-report.md" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    if ((rc != 0)); then
        ((rc == 2)) || KEEP=1 # a failed run or check: keep its logs
        exit "$rc"
    fi
    cp -- "$RUN/pytest-results.tsv" "$BENCH_DIR/results/$stamp-pytest.tsv"
    tee "$BENCH_DIR/results/$stamp-pytest.md" <"$RUN/pytest-report.md"
    log "raw results: $BENCH_DIR/results/$stamp-pytest.tsv"
    exit 0
fi

log "trees: ${TREE_LIST[*]}; transports: ${TRANSPORTS[*]}; runs: $RUNS; destinations under $RUN"
((RSYNC_ONLY)) && log "rsync only (--rsync-only): no rdist runs, no verification"
UPLOADED="" # the binaries rdist uploaded in the first ssh warm-up (path size mtime)
if ((WANT_SSH)); then
    start_sshd
fi
for TREE in "${TREE_LIST[@]}"; do
    ensure_tree "$TREE"
    SRC=$BENCH_DIR/trees/$TREE
    for XP in "${TRANSPORTS[@]}"; do
        L="$TREE/$XP" # log label
        T="$XP-$TREE" # file tag
        CACHE=$RUN/cache-$T
        D_RSYNC=$RUN/dest-$T-rsync
        D_RSYNCMUX=$RUN/dest-$T-rsyncmux
        D_RDIST=$RUN/dest-$T-rdist
        D_RDIST4=$RUN/dest-$T-rdist4
        mkdir -p -- "$CACHE"

        [[ $XP == ssh ]] && prime_ssh
        log "$L: warm-up"
        for tool in $(tools_for_rep 1); do do_sync "$tool" "$(dest_of "$tool")" "$T-warmup"; done
        if [[ $XP == ssh ]] && ((!RSYNC_ONLY)) && [[ -z $UPLOADED ]]; then
            UPLOADED=$(uploaded_binaries)
            [[ -n $UPLOADED ]] || die "rdist's first ssh sync uploaded no binary into $RUN/remote-cache/bin (it must have found one elsewhere; the timed runs may not be comparable)"
            log "$L: rdist uploaded its binary during the warm-up: $(awk '{printf "%s (%.1f MiB)", $1, $2/1048576}' <<<"$UPLOADED")"
        fi
        want=$(manifest "$TREE" files_synced)
        got=$(find "$D_RSYNC" -type f | wc -l)
        [[ $got == "$want" ]] || die "$L: rsync copied $got files, generator says $want are not excluded"
        verify "warm-up initial sync"

        log "$L: initial sync x$RUNS"
        for ((rep = 1; rep <= RUNS; rep++)); do
            for tool in $(tools_for_rep "$rep"); do
                d=$(dest_of "$tool")
                rm -rf -- "$d"
                do_sync "$tool" "$d" "$T-initial-$rep"
                record "$tool" initial "$rep" "$T-initial-$rep"
            done
            verify "initial sync, run $rep"
        done

        log "$L: no-op resync x$RUNS"
        for ((rep = 1; rep <= RUNS; rep++)); do
            for tool in $(tools_for_rep "$rep"); do
                do_sync "$tool" "$(dest_of "$tool")" "$T-noop-$rep"
                record "$tool" noop "$rep" "$T-noop-$rep"
            done
        done
        verify "after no-op resyncs"

        log "$L: incremental x$RUNS"
        for ((rep = 1; rep <= RUNS; rep++)); do
            mutate_apply "$TREE"
            for tool in $(tools_for_rep "$rep"); do
                do_sync "$tool" "$(dest_of "$tool")" "$T-incremental-$rep"
                record "$tool" incremental "$rep" "$T-incremental-$rep"
            done
            verify "incremental sync, run $rep"
            mutate_restore "$TREE"
            for tool in $(tools_for_rep "$rep"); do
                do_sync "$tool" "$(dest_of "$tool")" "$T-reset-$rep"
            done
        done
        verify "after resetting to the original tree"

        ssh_masters_stop "$CACHE/ssh"
        rm -rf -- "$D_RSYNC" "$D_RSYNCMUX" "$D_RDIST" "$D_RDIST4" "$CACHE"
    done
done
if [[ -n $UPLOADED ]]; then
    now=$(uploaded_binaries)
    [[ $now == "$UPLOADED" ]] || die "rdist uploaded its binary again after the warm-up (timed runs include an upload): before: $UPLOADED; now: $now"
fi
stop_sshd

# ---------------------------------------------------------------- report
fstype=$(stat -f -c %T "$RUN" 2>/dev/null || echo '?')
notes=(
    ""
    "Medians of $RUNS run(s) after 1 warm-up; destinations on $fstype ($DEST_BASE), sources on $(stat -f -c %T "$BENCH_DIR" 2>/dev/null || echo '?')."
    "rdist bytes = \`wire_bytes\` (both directions; a local worker reads the files it wants whole from the source tree, so locally these are protocol bytes, deltas and changed leaves); rsync bytes = total bytes sent + received (--stats). Peak RSS = largest single process (GNU time %M), see benches/README.md."
)
if ((WANT_SSH)); then
    notes+=(
        "ssh: both tools run the same wrapper, \`$SSH_BIN -F CONFIG\` (alias $SSH_HOST = 127.0.0.1:PORT, ed25519 key, BatchMode, no compression), against a private \`$SSHD_BIN\` started by the script; $("$SSH_BIN" -V 2>&1 | sed -n 1p). rdist's 4-worker column is \`--tx 4*ssh=$SSH_HOST//chdir=DEST\`. Byte counts are the tools' own protocol bytes, without ssh's encryption and framing. CPU and RSS cover the local side only (the tool and its ssh client)."
        "A bare \`ssh $SSH_HOST true\` through the same wrapper takes $SSH_BASELINE (5 connections at the start); plain rsync pays one such login per sync. rdist runs with its default connection reuse (an OpenSSH master per tree's cache, started by an untimed first sync), so its timed syncs do not log in; rsync+mux is rsync through a master the script started (\`-e 'SSH -o ControlMaster=no -o ControlPath=P'\`), the like-for-like comparison."
    )
    ((RSYNC_ONLY)) || notes+=("rdist uploads its binary to a fresh remote cache on its first ssh sync; that happened in the first (untimed) warm-up and the script checked that no timed run uploaded again.")
fi
notes+=("Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr); $(rsync --version | sed -n '1{s/  */ /g;p}').")
((RSYNC_ONLY)) || notes+=("rdist: $RDIST_DESC.")
for t in "${TREE_LIST[@]}"; do
    notes+=("Tree $t: $(manifest "$t" files_synced) files / $(manifest "$t" bytes_synced | awk '{printf "%.1f MiB", $1/1048576}') synced, $(manifest "$t" files_total) files / $(manifest "$t" bytes_total | awk '{printf "%.1f MiB", $1/1048576}') incl. excluded noise.")
done
LOAD_END=$(load_check)
notes+=("1-min load average: $LOAD_START at start, $LOAD_END at end (the end value includes the benchmark's own load).")
stamp=$(date +%Y%m%d-%H%M%S)
cp -- "$RESULTS" "$BENCH_DIR/results/$stamp.tsv"
"$PY" "$HERE/scripts/report.py" table "$RESULTS" "${notes[@]}" | tee "$BENCH_DIR/results/$stamp.md"
log "raw results: $BENCH_DIR/results/$stamp.tsv"
