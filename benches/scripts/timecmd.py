#!/usr/bin/env python3
"""Run one command, measure it, write a JSON record.

    timecmd.py --out REC.json --stdout OUT --stderr ERR [--cwd DIR] -- CMD [ARG...]

Exits with the command's exit status (128+N if killed by signal N).

REC.json keys:
  wall           seconds from just before fork to the command's exit
                 (time.perf_counter)
  rc             exit status
  maxrss_kib     peak RSS in KiB of the largest single process of the command's
                 process tree, or null if GNU time is not available. Measured
                 by running the command under GNU `/usr/bin/time -f %M` (wait4
                 rusage of the command, which folds in the maxrss of every
                 descendant the command waited for). This helper is also a
                 child subreaper (PR_SET_CHILD_SUBREAPER), so descendants the
                 command did not wait for are reaped here and their maxrss is
                 folded in as well. (Python's own RUSAGE_CHILDREN is not used:
                 a child forked from python carries python's ~15 MiB hiwater
                 mark across exec.)
  tree_rss_kib   peak of the SUM of RSS over the whole process tree, sampled
                 every --sample-ms (default 10) ms from /proc; a lower bound
                 (short spikes and commands < 1 sample are missed, 0 then).
  user, sys      CPU seconds of the whole tree (rusage, reaped descendants)
  lingering      descendants still alive when the command exited (they are
                 waited for up to 30 s, then killed, and counted here)
"""

import argparse
import ctypes
import json
import shutil
import os
import resource
import subprocess
import sys
import threading
import time

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PR_SET_CHILD_SUBREAPER = 36


def descendants(root_pid):
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


class Sampler(threading.Thread):
    def __init__(self, interval):
        super().__init__(daemon=True)
        self.interval = interval
        self.skip = set()  # the GNU time shim
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        me = os.getpid()
        while not self.stop.is_set():
            total = sum(rss_kib(p) for p in descendants(me) if p not in self.skip)
            self.peak = max(self.peak, total)
            self.stop.wait(self.interval)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stdout", required=True)
    ap.add_argument("--stderr", required=True)
    ap.add_argument("--cwd")
    ap.add_argument("--sample-ms", type=float, default=10.0)
    ap.add_argument("--gnu-time", default="/usr/bin/time",
                    help="GNU time binary for maxrss_kib ('' to disable)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    orig_cmd = list(cmd)

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not fatal: only un-waited grandchildren would be missed

    shim = None
    if a.gnu_time and shutil.which(a.gnu_time):
        probe = subprocess.run([a.gnu_time, "--version"], capture_output=True, text=True)
        if "GNU" in probe.stdout + probe.stderr:
            shim = a.gnu_time
    rss_file = a.out + ".maxrss"
    if shim:
        cmd = [shim, "-q", "-f", "%M", "-o", rss_file, "--"] + cmd

    sampler = Sampler(a.sample_ms / 1000.0)
    with open(a.stdout, "wb") as out, open(a.stderr, "wb") as err:
        sampler.start()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=a.cwd)
        if shim:
            sampler.skip.add(p.pid)
        _, status, _ = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc < 0:
            rc = 128 - rc

        # reap orphans re-parented to us; give them a grace period
        lingering = len(descendants(os.getpid()))
        orphan_rss = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                pid, _, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                orphan_rss = max(orphan_rss, ru.ru_maxrss)
            if pid == 0:
                if time.monotonic() > deadline:
                    for q in descendants(os.getpid()):
                        try:
                            os.kill(q, 9)
                        except OSError:
                            pass
                    deadline = float("inf")
                time.sleep(0.01)
        sampler.stop.set()
        sampler.join()

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss = None
    if shim:
        try:
            with open(rss_file) as f:
                maxrss = max(int(f.read().split()[-1]), orphan_rss)
            os.unlink(rss_file)
        except (OSError, ValueError, IndexError):
            maxrss = None
    rec = dict(cmd=orig_cmd, gnu_time=bool(shim), wall=wall, rc=rc, maxrss_kib=maxrss, tree_rss_kib=sampler.peak,
               user=ru.ru_utime, sys=ru.ru_stime, lingering=lingering)
    with open(a.out, "w") as f:
        json.dump(rec, f)
        f.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
