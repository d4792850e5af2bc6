#!/usr/bin/env bash
# benches/scripts/check3.sh - wall time of `rdist check` on three loopback hosts, and what the
# pre-flight check adds to `rdist run`. A measurement, not a test: prints medians.
#
#   benches/scripts/check3.sh [--runs N] [--suite NAME] [--rdist PATH] [--transport popen|ssh|both]
#
# The project is a generated suite (benches/gensuite.py, default `sleepy`: 200 tests). Three
# destinations: `popen//chdir=` directories, and/or three ssh hosts 127.0.0.1-3 served by a
# private sshd started here (benches/scripts/sshd.sh: keys made here, killed on exit; rdist's
# ssh master connections, its default reuse, are stopped on exit too). Each `rdist check` is run once
# untimed first (the initial sync, the binary upload for ssh), so the timed runs measure the
# whole check after the sync (its own resync is then a no-op). `rdist run` is timed with and
# without `--no-check`: `-n 2` in place, `--tx 2*popen//chdir=`, and `--tx 2*ssh=` to one host.
# Only traffic: ssh to 127.0.0.1-3. Only touches a temporary directory, removed on exit.
set -Eeuo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../.." && pwd)
RUNS=5 SUITE=sleepy RDIST=$REPO/target/release/rdist TRANSPORT=both
while (($#)); do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --suite) SUITE=$2; shift 2 ;;
        --rdist) RDIST=$2; shift 2 ;;
        --transport) TRANSPORT=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 4 ;;
    esac
done
[[ -x $RDIST ]] || { echo "no rdist binary at $RDIST (cargo build --release -p rdist)" >&2; exit 4; }
PY=${PYTHON:-python3}
# shellcheck source=sshd.sh
. "$HERE/sshd.sh"
RUN=$(mktemp -d /tmp/rdist-check3.XXXXXX)
cleanup() {
    ssh_masters_stop "$RUN/cache/ssh"
    sshd_stop
    rm -rf -- "$RUN"
}
trap cleanup EXIT
export RDIST_CACHE_DIR=$RUN/cache
"$PY" "$REPO/benches/gensuite.py" "$SUITE" "$RUN/proj" >/dev/null

# Median wall seconds of N runs of a command (run in the project); every run must exit 0.
median() {
    local n=$1 t ts=()
    shift
    for ((i = 0; i < n; i++)); do
        t=$(cd "$RUN/proj" && "$PY" -c '
import subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
if r.returncode:
    sys.exit(f"exit {r.returncode}: {sys.argv[1:]}\n{r.stderr.decode()[-2000:]}")
print(f"{time.perf_counter() - t:.3f}")' "$@")
        ts+=("$t")
    done
    printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

start_sshd() {
    sshd_start "$RUN/sshd" "$RUN/remote-cache" h1=127.0.0.1 h2=127.0.0.2 h3=127.0.0.3 || exit 3
    export RDIST_SSH=$SSH_WRAPPER
    for ((i = 0; i < 100; i++)); do "$RDIST_SSH" h3 true </dev/null 2>/dev/null && return; sleep 0.1; done
    echo "cannot log in through the private sshd: $(tail -3 "$RUN/sshd/sshd.log")" >&2
    exit 3
}

echo "| what | median s ($RUNS runs) |"
echo "|---|--:|"
if [[ $TRANSPORT != ssh ]]; then
    popen=(--tx "popen//chdir=$RUN/w1" --tx "popen//chdir=$RUN/w2" --tx "popen//chdir=$RUN/w3")
    median 1 "$RDIST" check "${popen[@]}" >/dev/null
    echo "| \`rdist check\`, 3 popen destinations | $(median "$RUNS" "$RDIST" check "${popen[@]}") |"
    for args in "-n 2" "--tx 2*popen//chdir=$RUN/r"; do
        read -ra a <<<"$args"
        median 1 "$RDIST" run "${a[@]}" >/dev/null
        echo "| \`rdist run ${args/$RUN/\$T}\` | $(median "$RUNS" "$RDIST" run "${a[@]}") |"
        echo "| \`rdist run ${args/$RUN/\$T} --no-check\` | $(median "$RUNS" "$RDIST" run --no-check "${a[@]}") |"
    done
fi
if [[ $TRANSPORT != popen ]]; then
    start_sshd
    ssh=(--tx "ssh=h1//chdir=$RUN/s1" --tx "ssh=h2//chdir=$RUN/s2" --tx "ssh=h3//chdir=$RUN/s3")
    median 1 "$RDIST" check "${ssh[@]}" >/dev/null
    echo "| \`rdist check\`, 3 ssh hosts (127.0.0.1-3) | $(median "$RUNS" "$RDIST" check "${ssh[@]}") |"
    echo "| \`rdist check\`, 3 ssh hosts, \`RDIST_SSH_REUSE=0\` (a login each) | $(median "$RUNS" env RDIST_SSH_REUSE=0 "$RDIST" check "${ssh[@]}") |"
    echo "| a bare \`ssh h1 true\` | $(median "$RUNS" "$RDIST_SSH" h1 true) |"
    a=(--tx "2*ssh=h1//chdir=$RUN/rs")
    median 1 "$RDIST" run "${a[@]}" >/dev/null
    echo "| \`rdist run --tx 2*ssh=h1//chdir=\$T\` | $(median "$RUNS" "$RDIST" run "${a[@]}") |"
    echo "| \`rdist run --tx 2*ssh=h1//chdir=\$T --no-check\` | $(median "$RUNS" "$RDIST" run --no-check "${a[@]}") |"
fi
