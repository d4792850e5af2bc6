"""rdist's pytest worker plugin (shipped inside the rdist binary).

Loaded with ``-p rdist_worker`` in a worker started by rdist (``RDIST_WORKER=1``); inert
otherwise. It collects as a plain ``pytest`` run in the synced directory would, reports the
collected node ids, then runs tests by index as the controller sends them and sends one message
per test when it has run: its index, its time, and the reports of the phases that carry something
(the call phase, and any phase that did not pass; a passed setup or teardown carries nothing).

Channel: the process's original stdin and stdout, taken over at import time, before pytest's
capture plugin redirects file descriptors 0 and 1. Messages are JSON, one per line. Anything else
written to stdout (the terminal reporter, a stray print) goes to stderr instead.
"""

import collections
import json
import os
import platform
import queue as _queue
import sys
import threading
import time
import warnings

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
        cache_dir=_cache_dir(session.config),
    )


def _cache_dir(config):
    """pytest's cache directory relative to the rootdir (None: no cache, or elsewhere): the
    controller keeps `cache/lastfailed` there up to date from every worker's results."""
    cachedir = getattr(getattr(config, "cache", None), "_cachedir", None)
    if cachedir is None:
        return None
    try:
        return str(cachedir.relative_to(config.rootpath))
    except ValueError:
        return None


def _report(report, nodeid):
    """The fields the controller uses, those with their default value left out."""
    msg = dict(when=report.when, outcome=report.outcome, duration=report.duration)
    if report.nodeid != nodeid:
        msg["nodeid"] = report.nodeid
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        msg["skip_reason"] = str(longrepr[2])
    elif longrepr is not None:
        # As `report.longreprtext`, without stripping the first line's indentation.
        import io

        from _pytest._io import TerminalWriter

        buf = io.StringIO()
        tw = TerminalWriter(file=buf)
        tw.hasmarkup = False
        report.toterminal(tw)
        msg["longrepr"] = buf.getvalue().rstrip()
        crash = getattr(longrepr, "reprcrash", None)
        if crash is not None and crash.message:
            msg["crash_message"] = crash.message.splitlines()[0]
    if report.sections and not report.passed:
        msg["sections"] = [[name, text] for name, text in report.sections]
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        msg["wasxfail"] = wasxfail
    return msg


# The running test's node id, and the reports of its phases that carry something.
_RUNNING = [None]
_PHASES = []


def pytest_warning_recorded(warning_message, when, nodeid, location):
    """Warnings go to the controller, which counts them and prints pytest's summary of them."""
    if _OUT is None:
        return
    text = warnings.formatwarning(
        str(warning_message.message),
        warning_message.category,
        warning_message.filename,
        warning_message.lineno,
        warning_message.line,
    )
    _send(type="warning", when=when, nodeid=nodeid, text=text)


def pytest_runtest_logreport(report):
    if _OUT is None or (report.passed and report.when != "call"):
        return
    _PHASES.append(_report(report, _RUNNING[0]))


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    """The worker's own terminal report is never shown (only the tail of its stderr, to explain a
    crash): its per-test progress is turned off, which saves a hook call and a write per phase."""
    if _OUT is None:
        return
    pm = session.config.pluginmanager
    reporter = pm.getplugin("terminalreporter")
    if reporter is not None:
        pm.unregister(reporter)
        for name in ("pytest_runtest_logreport", "pytest_runtest_logstart", "pytest_runtest_logfinish"):
            if hasattr(reporter, name):
                setattr(reporter, name, _quiet)
        pm.register(reporter, "terminalreporter")
    # Each worker sees only its share of the results: were it to write `cache/lastfailed`, the
    # last worker to finish would drop the others' failures. The controller writes it.
    lastfailed = pm.getplugin("lfplugin")
    if lastfailed is not None and hasattr(lastfailed, "pytest_sessionfinish"):
        pm.unregister(lastfailed)
        lastfailed.pytest_sessionfinish = _quiet
        pm.register(lastfailed, "lfplugin")


def _quiet(*args, **kwargs):
    return None


def _read_inbox(inbox):
    # The controller's messages are read as they come, so that a `stop` is seen between two tests
    # even while many are queued.
    for line in _IN:
        inbox.put(json.loads(line))
    # The controller is gone: nobody takes results any more.
    inbox.put({"stop": True, "shutdown": True})


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Run tests by index until told to shut down. An index runs once the next one is known (or
    on shutdown), so that fixtures scoped to a module or class are torn down at the right time.
    `stop` drops the queued tests (`-x` on another worker); pytest tears their fixtures down at
    the end of the session."""
    if _OUT is None:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        _send(type="done", reason="collection errors")
        return True
    items = session.items
    queue = collections.deque()
    shutdown = False
    inbox = _queue.SimpleQueue()
    threading.Thread(target=_read_inbox, args=(inbox,), name="rdist-inbox", daemon=True).start()
    while True:
        runnable = len(queue) >= 2 or (shutdown and queue)
        if not runnable and shutdown:
            break
        try:
            msg = inbox.get(block=not runnable)
        except _queue.Empty:
            msg = None
        if msg is not None:
            if msg.get("stop"):
                queue.clear()
            queue.extend(msg.get("run", ()))
            shutdown = shutdown or bool(msg.get("shutdown"))
            continue
        index = queue.popleft()
        nextitem = items[queue[0]] if queue else None
        item = items[index]
        _RUNNING[0] = item.nodeid
        start = time.perf_counter()
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        seconds = time.perf_counter() - start
        # One write per test, as soon as it has run: a crash loses nothing already reported.
        _send(type="ran", index=index, seconds=seconds, reports=_PHASES[:])
        _PHASES.clear()
        if session.shouldfail or session.shouldstop:
            shutdown = True
            queue.clear()
    _send(type="done", reason="shutdown")
    return True
