#!/usr/bin/env python3
"""`compare.sh --pytest`: time `rdist run` against pytest-xdist and serial pytest.

    pytestbench.py --rdist PATH --python PY --run-dir DIR --suites LIST --runs N
                   --results OUT.tsv [--load-start L] [--timeout SECS]

Prints a Markdown report on stdout, progress on stderr. Exit status 0, or 1
when a command failed, timed out or reported other pass counts than the
others (the command and the end of its output are printed).

For each suite (generated fresh by benches/gensuite.py into DIR/suites/NAME)
it runs these variants from the suite's directory, two workers each:

  serial    PY -m pytest
  xdist     PY -m pytest -n 2
  rdist     rdist run -n 2
  xdist-tx  PY -m pytest -d --tx 2*popen//chdir=DIR/dest/NAME-xdist --rsyncdir SUITE SUITE
  rdist-tx  rdist run --tx 2*popen//chdir=DIR/dest/NAME-rdist

(the legacy xdist form needs absolute paths: xdist maps its arguments onto the
rsync roots and refuses relative ones). Every variant runs once untimed first,
so rdist's durations cache (RDIST_CACHE_DIR=DIR/cache) exists and every
directory has its __pycache__, as on a developer's machine; the --tx variants
then resync an unchanged tree in the timed runs. (Serial pytest is not warmed
up separately: it runs in place, where the warm-ups of `-n 2` have already
written __pycache__ and .pytest_cache.) Then --runs timed rounds, the
variant order rotating from round to round; medians are reported.

PY is resolved to the real interpreter (sys.executable), and its directory is
put first on PATH, so the `python3` that rdist starts for its workers is the
same interpreter that xdist's workers run (no pyenv shim in between).

Measurements, per run:
  wall          time.perf_counter from just before the fork until the command
                (the controller) exits
  controller    user+sys CPU of the controller process alone (all its
                threads), read from /proc/PID/stat (utime, stime) after it has
                exited but before it is reaped (waitid WNOWAIT keeps the
                zombie), so nothing it does is missed
  total         user+sys CPU of the controller and every descendant: the
                growth of this process's RUSAGE_CHILDREN after the controller
                and any orphaned descendants are reaped (this process is a
                child subreaper)
  workers       total - controller (pytest workers, and for rdist-tx the local
                sync agent; for xdist-tx the execnet rsync is in the
                controller)
"""

import argparse
import ctypes
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time

# Process-tree helpers shared with the sync benchmark (same directory).
from timecmd import PR_SET_CHILD_SUBREAPER, descendants

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS = ["serial", "xdist", "rdist", "xdist-tx", "rdist-tx"]
LABEL = {
    "serial": "pytest",
    "xdist": "pytest -n 2",
    "rdist": "rdist run -n 2",
    "xdist-tx": "pytest -d --tx 2*popen//chdir --rsyncdir",
    "rdist-tx": "rdist run --tx 2*popen//chdir",
}
COLUMNS = ["suite", "variant", "rep", "wall", "controller_cpu", "total_cpu", "passed", "failed",
           "errors", "lingering"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def cpu_of_zombie(pid):
    """utime+stime (seconds) of an exited, not yet reaped process."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_one(cmd, cwd, env, out_path, timeout):
    """Runs cmd; returns dict(wall, rc, controller_cpu, total_cpu, lingering)."""
    before = children_cpu()
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            for q in [p.pid] + descendants(os.getpid()):
                try:
                    os.kill(q, signal.SIGKILL)
                except OSError:
                    pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
            wall = time.perf_counter() - t0
            controller = cpu_of_zombie(p.pid)
            _, status, _ = os.wait4(p.pid, 0)
        except BaseException:
            kill()
            raise
        finally:
            timer.cancel()
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        # reap descendants that outlived the controller (we are their subreaper)
        lingering = len(descendants(os.getpid()))
        deadline = time.monotonic() + 30
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > deadline:
                    for q in descendants(os.getpid()):
                        try:
                            os.kill(q, signal.SIGKILL)
                        except OSError:
                            pass
                    deadline = float("inf")
                time.sleep(0.01)
    total = children_cpu() - before
    if timed_out.is_set():
        rc = "timeout"
    return dict(wall=wall, rc=rc, controller_cpu=controller, total_cpu=total, lingering=lingering)


SUMMARY = re.compile(r"^=*\s*(?P<body>(?:\d+ \w+(?:, )?)+)(?: in [\d.]+s)?(?: \([^)]*\))?\s*=*\s*$")


def counts(text):
    """pytest's final summary line -> {passed, failed, errors}."""
    for line in reversed(text.splitlines()):
        m = SUMMARY.match(line.strip())
        if m and re.search(r"\d+ (passed|failed|errors?|skipped|no tests ran)", m.group("body")):
            found = dict((w, int(n)) for n, w in re.findall(r"(\d+) (\w+)", m.group("body")))
            return dict(passed=found.get("passed", 0), failed=found.get("failed", 0),
                        errors=found.get("errors", found.get("error", 0)))
    return None


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rdist", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--suites", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--load-start", default="?")
    ap.add_argument("--rdist-desc", help="how to describe the rdist binary in the notes")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    a = ap.parse_args()

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log("warning: cannot become a child subreaper; CPU of orphaned processes is missed")

    probe = subprocess.run(
        [a.python, "-c", "import sys, pytest, xdist; print(sys.executable); "
         "print(sys.version.split()[0]); print(pytest.__version__); print(xdist.__version__)"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"pytestbench: {a.python} cannot import pytest and xdist:\n{probe.stderr}", file=sys.stderr)
        return 2
    py, py_version, pytest_version, xdist_version = probe.stdout.split()
    pybin = os.path.dirname(py)
    run_dir = os.path.abspath(a.run_dir)
    cache = os.path.join(run_dir, "cache")
    logs = os.path.join(run_dir, "log")
    os.makedirs(logs, exist_ok=True)
    # execnet's chdir= creates only the last path component
    os.makedirs(os.path.join(run_dir, "dest"), exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RDIST_")) and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["PATH"] = pybin + os.pathsep + env.get("PATH", "")
    env["RDIST_CACHE_DIR"] = cache
    rdist_version = subprocess.run([a.rdist, "--version"], capture_output=True, text=True).stdout.strip()

    suites = a.suites.split(",")
    results = []
    infos = {}
    res_f = open(a.results, "w")
    res_f.write("\t".join(COLUMNS) + "\n")

    def command(variant, suite_dir, name):
        dest = os.path.join(run_dir, "dest", f"{name}-{variant.split('-')[0]}")
        return {
            "serial": [py, "-m", "pytest"],
            "xdist": [py, "-m", "pytest", "-n", "2"],
            "rdist": [a.rdist, "run", "-n", "2"],
            "xdist-tx": [py, "-m", "pytest", "-d", "--tx", f"2*popen//chdir={dest}",
                         "--rsyncdir", suite_dir, suite_dir],
            "rdist-tx": [a.rdist, "run", "--tx", f"2*popen//chdir={dest}"],
        }[variant]

    def one(name, suite_dir, variant, tag):
        cmd = command(variant, suite_dir, name)
        out_path = os.path.join(logs, f"{name}-{variant}-{tag}.out")
        r = run_one(cmd, suite_dir, env, out_path, a.timeout)
        with open(out_path, errors="replace") as f:
            text = f.read()
        c = counts(text)
        want = infos[name]["tests"]
        problem = None
        if r["rc"] != 0:
            problem = f"exit status {r['rc']}"
        elif c is None:
            problem = "no pytest summary line in its output"
        elif (c["passed"], c["failed"], c["errors"]) != (want, 0, 0):
            problem = f"reported {c}, expected {want} passed"
        if problem:
            tail = "\n".join(text.splitlines()[-40:])
            raise Failed(f"{LABEL[variant]} on suite {name} ({tag}): {problem}\n"
                         f"  command: (cd {suite_dir} && RDIST_CACHE_DIR={cache} PATH={pybin}:$PATH "
                         f"{' '.join(cmd)})\n--- last 40 lines of output ({out_path}):\n{tail}")
        if r["lingering"]:
            log(f"warning: {LABEL[variant]} ({name} {tag}) left {r['lingering']} process(es) running after it exited")
        return dict(r, **c)

    try:
        for name in suites:
            suite_dir = os.path.join(run_dir, "suites", name)
            gen = subprocess.run([a.python, os.path.join(BENCHES, "gensuite.py"), name, suite_dir],
                                 capture_output=True, text=True)
            if gen.returncode != 0:
                raise Failed(f"gensuite.py {name} failed:\n{gen.stderr}")
            with open(os.path.join(suite_dir, "suite.json")) as f:
                infos[name] = json.load(f)
            log(f"{name}: {infos[name]['tests']} tests; warm-up (one untimed run per variant but serial)")
            dur_dir = os.path.join(cache, "durations")

            def durations_state():
                try:
                    return {n: os.stat(os.path.join(dur_dir, n)).st_mtime_ns for n in os.listdir(dur_dir)}
                except OSError:
                    return {}
            dur_before = durations_state()
            for v in VARIANTS:
                if v != "serial":  # it shares the in-place __pycache__ with xdist and rdist
                    one(name, suite_dir, v, "warmup")
            if durations_state() == dur_before:
                log(f"warning: {name}: rdist's warm-up wrote no durations file under {dur_dir}")
            log(f"{name}: {a.runs} timed round(s)")
            for rep in range(1, a.runs + 1):
                k = (rep - 1) % len(VARIANTS)
                for v in VARIANTS[k:] + VARIANTS[:k]:
                    r = one(name, suite_dir, v, f"run{rep}")
                    row = dict(suite=name, variant=v, rep=rep, wall=f"{r['wall']:.6f}",
                               controller_cpu=f"{r['controller_cpu']:.3f}", total_cpu=f"{r['total_cpu']:.3f}",
                               passed=r["passed"], failed=r["failed"], errors=r["errors"],
                               lingering=r["lingering"])
                    results.append(row)
                    res_f.write("\t".join(str(row[c]) for c in COLUMNS) + "\n")
                    res_f.flush()
    except Failed as e:
        print(f"\npytestbench: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"pytestbench: interrupted ({e or 'SIGINT'}); the running command was killed", file=sys.stderr)
        return 130
    finally:
        res_f.close()

    print(report(results, suites, infos, a, dict(
        py=py, py_version=py_version, pytest=pytest_version, xdist=xdist_version, rdist=rdist_version)))
    return 0


def report(results, suites, infos, a, v):
    def rows(suite, variant):
        return [r for r in results if r["suite"] == suite and r["variant"] == variant]

    def med(suite, variant, key):
        vals = [float(r[key]) for r in rows(suite, variant)]
        return statistics.median(vals) if vals else None

    def ratio(x, y):
        return f"{x / y:.2f}×" if x is not None and y else "-"

    out = ["| suite | tests | serial s | pytest -n 2 s | rdist run -n 2 s | rdist/xdist "
           "| rdist ÷ (serial/2) | xdist --tx s | rdist --tx s | rdist/xdist (--tx) |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for s in suites:
        w = {v_: med(s, v_, "wall") for v_ in VARIANTS}
        half = w["serial"] / 2 if w["serial"] else None
        out.append(f"| {s} | {infos[s]['tests']:,} | {fmt_s(w['serial'])} | {fmt_s(w['xdist'])} "
                   f"| {fmt_s(w['rdist'])} | {ratio(w['rdist'], w['xdist'])} | {ratio(w['rdist'], half)} "
                   f"| {fmt_s(w['xdist-tx'])} | {fmt_s(w['rdist-tx'])} | {ratio(w['rdist-tx'], w['xdist-tx'])} |")
    out += ["", "Controller CPU (medians; controller = the process you started, alone; "
            "workers = all its descendants; see benches/README.md):", "",
            "| suite | variant | wall s min-max | controller CPU s | workers CPU s "
            "| controller / workers | passed |",
            "|---|---|--:|--:|--:|--:|--:|"]
    for s in suites:
        for v_ in VARIANTS:
            rs = rows(s, v_)
            if not rs:
                continue
            walls = [float(r["wall"]) for r in rs]
            ctrl = med(s, v_, "controller_cpu")
            workers = statistics.median(float(r["total_cpu"]) - float(r["controller_cpu"]) for r in rs)
            share = "-" if v_ == "serial" or workers <= 0 else f"{100 * ctrl / workers:.1f}%"
            passed = sorted({r["passed"] for r in rs})
            out.append(f"| {s} | {LABEL[v_]} | {fmt_s(min(walls))}-{fmt_s(max(walls))} | {fmt_s(ctrl)} "
                       f"| {'-' if v_ == 'serial' else fmt_s(workers)} | {share} | {','.join(map(str, passed))} |")
    try:
        load_end = open("/proc/loadavg").read().split()[0]
    except OSError:
        load_end = "?"
    ninfo = []
    for s in suites:
        i = infos[s]
        extra = ""
        if "serial_sleep_ms" in i and i["serial_sleep_ms"]:
            extra = f", {i['serial_sleep_ms'] / 1000:.2f} s of sleep in total"
        if "slow_test" in i:
            extra += f", slow test `{i['slow_test']}` ({i['slow_ms']} ms)"
        ninfo.append(f"{s}: {i['tests']} tests in {i['modules']} modules{extra}")
    notes = [
        "",
        f"Medians of {a.runs} run(s) per variant, after one untimed run of every parallel variant per suite "
        "(rdist's durations cache in RDIST_CACHE_DIR exists, as on a developer's machine; "
        "the --tx variants resync an unchanged tree). All runs reported the same pass counts "
        "(every test passed). rdist ÷ (serial/2) compares with a perfect split over 2 workers.",
        "Commands, from the suite's directory: `pytest` = `python -m pytest`; `xdist --tx` = "
        "`python -m pytest -d --tx 2*popen//chdir=DIR --rsyncdir $PWD $PWD`; "
        "`rdist --tx` = `rdist run --tx 2*popen//chdir=DIR`; sync destinations on tmpfs.",
        "Controller CPU = utime+stime from /proc/PID/stat of the exited, not yet reaped controller; "
        "workers = CPU of all descendants (rusage after reaping) minus that.",
        "Suites (benches/gensuite.py): " + "; ".join(ninfo) + ".",
        f"Python {v['py_version']} ({v['py']}), pytest {v['pytest']}, pytest-xdist {v['xdist']}; "
        + (a.rdist_desc or f"{v['rdist']} ({a.rdist}, built "
         f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(a.rdist)))})") + ".",
        f"Machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}. "
        f"1-min load average: {a.load_start} at start, {load_end} at end.",
    ]
    return "\n".join(out + notes)


if __name__ == "__main__":
    sys.exit(main())
