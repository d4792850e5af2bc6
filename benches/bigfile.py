#!/usr/bin/env python3
"""Benchmark one big file: `rdist sync` against `rsync -a --delete`, with peak memory.

    bigfile.py [--size-mib N] [--runs N] [--rdist PATH] [--dir DIR] [--keep]

Issue 1's memory bound: syncing a 2 GiB file keeps the peak RSS of each process under
200 MiB. A project holding one file of N MiB (default 2048) of deterministic pseudo-random
bytes is synced into a local destination three ways, each timed RUNS times (medians):

  initial      into an absent destination
  noop         again, nothing changed
  incremental  4 KiB in the middle of the file overwritten (restored, and both
               destinations resynced untimed, after every repetition)

Every command runs under benches/scripts/timecmd.py: wall time, and peak RSS of the
largest single process of the command's tree (GNU time's %M folds in every descendant;
without /usr/bin/time that column is '-'). After each rdist sync the destination file is
compared with the source. Prints a Markdown table on stdout, progress on stderr. Touches
only a temporary directory under --dir (default /dev/shm), removed on exit unless --keep.
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1 << 20
EDIT = 4096
SEED = "rdist-bench/bigfile/1"
TARGET_RSS_MIB = 200


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def generate(path, size_mib):
    rng = random.Random(SEED)
    with open(path, "wb") as f:
        left = size_mib * MiB
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MiB), fb.read(8 * MiB)
            if x != y:
                return False
            if not x:
                return True


class Edit:
    """Overwrites EDIT bytes in the middle of the file, exactly reversibly (bytes and mtime)."""

    def __init__(self, path):
        self.path = path
        self.at = os.path.getsize(path) // 2
        st = os.stat(path)
        self.times = (st.st_atime_ns, st.st_mtime_ns)
        with open(path, "rb") as f:
            f.seek(self.at)
            self.old = f.read(EDIT)

    def apply(self):
        with open(self.path, "r+b") as f:
            f.seek(self.at)
            f.write(bytes(b ^ 0x5A for b in self.old))
        os.utime(self.path, ns=(self.times[0], self.times[1] + 10**9))

    def restore(self):
        with open(self.path, "r+b") as f:
            f.seek(self.at)
            f.write(self.old)
        os.utime(self.path, ns=self.times)


def timed(cmd, work, tag, env=None, cwd=None):
    rec = os.path.join(work, f"{tag}.json")
    out, err = rec + ".out", rec + ".err"
    rc = subprocess.call(
        [sys.executable, os.path.join(HERE, "scripts", "timecmd.py"), "--out", rec,
         "--stdout", out, "--stderr", err] + (["--cwd", cwd] if cwd else []) + ["--"] + cmd,
        env=env,
    )
    if rc != 0:
        sys.exit(f"bigfile.py: `{' '.join(cmd)}` failed (exit {rc}):\n{open(err).read()}")
    with open(rec) as f:
        r = json.load(f)
    r["stdout"] = open(out).read()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rdist", default=os.path.join(REPO, "target", "release", "rdist"))
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not os.access(a.rdist, os.X_OK):
        sys.exit(f"bigfile.py: no rdist binary at {a.rdist} (cargo build --release -p rdist)")
    if not shutil.which("rsync"):
        sys.exit("bigfile.py: rsync is not installed")
    work = tempfile.mkdtemp(prefix="rdist-bigfile-", dir=a.dir)
    try:
        run(a, work)
    finally:
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "data"))
    with open(os.path.join(src, "pyproject.toml"), "w") as f:
        f.write('[project]\nname = "bigfile"\n')
    big = os.path.join(src, "data", "big.bin")
    log(f"generating a {a.size_mib} MiB file")
    generate(big, a.size_mib)
    edit = Edit(big)
    env = dict(os.environ, RDIST_CACHE_DIR=os.path.join(work, "rdist-cache"))
    dests = {"rdist": os.path.join(work, "dst-rdist"), "rsync": os.path.join(work, "dst-rsync")}

    def sync(tool, tag):
        dest = dests[tool]
        if tool == "rdist":
            cmd = [a.rdist, "sync", "--rsyncdir", ".", "--json", "--tx", f"popen//chdir={dest}"]
            r = timed(cmd, work, tag, env=env, cwd=src)
            r["bytes"] = json.loads(r["stdout"])["targets"][0]["wire_bytes"]
            if not same_file(big, os.path.join(dest, "data", "big.bin")):
                sys.exit(f"bigfile.py: rdist's copy differs from the source after {tag}")
        else:
            cmd = ["rsync", "-a", "--delete", "--stats", src + "/", dest + "/"]
            r = timed(cmd, work, tag)
            sent = re.search(r"Total bytes sent: ([\d,]+)", r["stdout"])
            got = re.search(r"Total bytes received: ([\d,]+)", r["stdout"])
            r["bytes"] = sum(int(m.group(1).replace(",", "")) for m in (sent, got) if m)
        return r

    results = {}
    for tool in ("rdist", "rsync"):
        for rep in range(a.runs):
            log(f"{tool}: initial, noop, incremental ({rep + 1}/{a.runs})")
            shutil.rmtree(dests[tool], ignore_errors=True)
            results.setdefault((tool, "initial"), []).append(sync(tool, f"{tool}-initial-{rep}"))
            results.setdefault((tool, "noop"), []).append(sync(tool, f"{tool}-noop-{rep}"))
            edit.apply()
            try:
                results.setdefault((tool, "incremental"), []).append(
                    sync(tool, f"{tool}-incremental-{rep}"))
            finally:
                edit.restore()
            sync(tool, f"{tool}-restore-{rep}")
        shutil.rmtree(dests[tool], ignore_errors=True)

    def med(tool, scen, key):
        vals = [r[key] for r in results[(tool, scen)] if r[key] is not None]
        return statistics.median(vals) if vals else None

    def mib(kib):
        return "-" if kib is None else f"{kib / 1024:.1f} MiB"

    def size(n):
        for unit, div in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
            if n >= div:
                return f"{n / div:.1f} {unit}"
        return f"{n:.0f} B"

    print(f"**One {a.size_mib} MiB file, local destination in {a.dir}** (medians of {a.runs}; "
          f"peak RSS = largest single process; target: each process under {TARGET_RSS_MIB} MiB)\n")
    print("| scenario | rdist s | rsync s | rdist/rsync | rdist bytes | rsync bytes "
          "| rdist peak RSS | rsync peak RSS | rdist under target |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|:-:|")
    for scen in ("initial", "noop", "incremental"):
        rw, sw = med("rdist", scen, "wall"), med("rsync", scen, "wall")
        peak = [r["maxrss_kib"] for r in results[("rdist", scen)] if r["maxrss_kib"] is not None]
        ok = "-" if not peak else ("yes" if max(peak) < TARGET_RSS_MIB * 1024 else "**no**")
        print(f"| {scen} | {rw:.3f} | {sw:.3f} | {rw / sw:.2f}x | {size(med('rdist', scen, 'bytes'))} "
              f"| {size(med('rsync', scen, 'bytes'))} | {mib(max(peak) if peak else None)} "
              f"| {mib(med('rsync', scen, 'maxrss_kib'))} | {ok} |")
    print(f"\nrdist peak RSS is the largest over all runs; rsync's is the median. "
          f"rdist: {a.rdist}; {subprocess.run(['rsync', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}.")


if __name__ == "__main__":
    main()
