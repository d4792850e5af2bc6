"""rdist's pytest worker plugin (shipped inside the rdist binary).

Loaded with ``-p rdist_worker`` in a worker started by rdist (``RDIST_WORKER=1``); inert
otherwise. It collects as a plain ``pytest`` run in the synced directory would, reports the
collected node ids, then runs tests by index as the controller sends them and streams one report
per test phase.

Channel: the process's original stdin and stdout, taken over at import time, before pytest's
capture plugin redirects file descriptors 0 and 1. Messages are JSON, one per line. Anything else
written to stdout (the terminal reporter, a stray print) goes to stderr instead.
"""

import json
import os
import platform
import sys
import threading
import time

import pytest

_IN = None
_OUT = None

if os.environ.get("RDIST_WORKER") == "1":
    _IN = os.fdopen(os.dup(0), "r", encoding="utf-8", buffering=1)
    _OUT = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    _null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(_null, 0)
    os.close(_null)


_LOCK = threading.Lock()


def _send(**msg):
    line = json.dumps(msg, separators=(",", ":"), default=str) + "\n"
    with _LOCK:
        _OUT.write(line)
        _OUT.flush()


def _heartbeat():
    # A frozen worker (a test stuck in C code holding the GIL, a stopped process) stops these.
    while True:
        time.sleep(1.0)
        try:
            _send(type="beat")
        except (OSError, ValueError):
            return


if _OUT is not None:
    # From import on, so a slow conftest or a slow collection is not taken for a frozen worker.
    threading.Thread(target=_heartbeat, name="rdist-heartbeat", daemon=True).start()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if _OUT is None:
        return
    # A worker never distributes further, nor stops to debug.
    for name, value in (("dist", "no"), ("usepdb", False), ("looponfail", False), ("numprocesses", None)):
        if hasattr(config.option, name):
            setattr(config.option, name, value)


def pytest_collectreport(report):
    if _OUT is not None and report.failed:
        _send(type="collect_error", nodeid=report.nodeid, longrepr=str(report.longrepr))


def pytest_collection_finish(session):
    if _OUT is None:
        return
    groups = []
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        group = None
        if mark is not None:
            group = mark.kwargs.get("name") or (mark.args[0] if mark.args else None)
        groups.append(group)
    _send(
        type="collected",
        ids=[item.nodeid for item in session.items],
        groups=groups,
        platform=sys.platform,
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        executable=sys.executable,
        rootdir=str(session.config.rootpath),
    )


def _report(report):
    longrepr = report.longrepr
    skip_reason = None
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        skip_reason = str(longrepr[2])
        longrepr_text = ""
    elif longrepr is None:
        longrepr_text = ""
    else:
        # As `report.longreprtext`, without stripping the first line's indentation.
        import io

        from _pytest._io import TerminalWriter

        buf = io.StringIO()
        tw = TerminalWriter(file=buf)
        tw.hasmarkup = False
        report.toterminal(tw)
        longrepr_text = buf.getvalue().rstrip()
    crash = getattr(longrepr, "reprcrash", None)
    crash_message = crash.message.splitlines()[0] if crash is not None and crash.message else None
    return dict(
        type="report",
        crash_message=crash_message,
        nodeid=report.nodeid,
        when=report.when,
        outcome=report.outcome,
        duration=report.duration,
        location=list(report.location) if report.location else None,
        longrepr=longrepr_text,
        sections=[[name, text] for name, text in report.sections],
        skip_reason=skip_reason,
        wasxfail=getattr(report, "wasxfail", None),
    )


def pytest_runtest_logreport(report):
    if _OUT is not None:
        _send(**_report(report))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Run tests by index until told to stop. An index runs once the next one is known (or on
    shutdown), so that fixtures scoped to a module or class are torn down at the right time."""
    if _OUT is None:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        _send(type="done", reason="collection errors")
        return True
    items = session.items
    queue = []
    shutdown = False
    for line in _IN:
        msg = json.loads(line)
        if "run" in msg:
            queue.extend(msg["run"])
        if msg.get("shutdown"):
            shutdown = True
        while len(queue) >= 2 or (shutdown and queue):
            index = queue.pop(0)
            nextitem = items[queue[0]] if queue else None
            start = time.time()
            items[index].config.hook.pytest_runtest_protocol(item=items[index], nextitem=nextitem)
            _send(type="ran", index=index, seconds=time.time() - start)
            if session.shouldfail or session.shouldstop:
                shutdown = True
                queue.clear()
        if shutdown:
            break
    _send(type="done", reason="shutdown")
    return True
