#!/usr/bin/env python3
"""Deterministic generator of the pytest suites for `compare.sh --pytest`.

    gensuite.py NAME DIR     write suite NAME into DIR (absent or empty)
    gensuite.py --list       print the suite names
    gensuite.py --info NAME  print the suite's expected counts as JSON

Suites (pure Python, no third-party imports besides pytest; same name, same bytes):
  quick      2,000 quick tests over 40 modules (plain functions, parametrized
             tests, test classes, a few fixtures), so per-test overhead dominates
  sleepy     200 tests in 10 modules that each sleep a fixed pseudo-random
             10-50 ms (seeded), so ideal 2-worker time is about serial / 2
  straggler  200 tests of 20 ms in 10 modules plus one test 20x slower
             (400 ms), placed late in collection order (last module, three
             tests from the end), so a scheduler that knows earlier durations
             can start it first

Every suite has a `pyproject.toml` with a `[tool.pytest.ini_options]` table
(the project root for pytest and rdist alike), a `tests/` package with a
`conftest.py`, and a `suite.json` with the expected counts.
"""

import json
import os
import random
import sys

SEED = "rdist-bench/gensuite/1"

SUITES = {
    "quick": dict(modules=40, per_module=50, kind="quick"),
    "sleepy": dict(modules=10, per_module=20, kind="sleepy", lo_ms=10, hi_ms=50),
    "straggler": dict(modules=10, per_module=20, kind="straggler", ms=20, slow_factor=20),
}

PYPROJECT = """\
[project]
name = "benchsuite-{name}"
version = "0.0.0"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

CONFTEST = """\
import pytest


@pytest.fixture
def numbers():
    return list(range(10))


@pytest.fixture(scope="module")
def table():
    return {str(i): i * i for i in range(100)}
"""


def quick_module(m, n, rng):
    """n quick tests: a parametrized test, a class, plain functions with fixtures."""
    lines = ["import pytest", "", ""]
    n_param = 10
    n_class = 10
    n_plain = n - n_param - n_class
    vals = [rng.randrange(1000) for _ in range(n_param)]
    lines += [f"@pytest.mark.parametrize('x', {vals!r})",
              f"def test_param_{m}(x):",
              "    assert (x * 2) // 2 == x", "", ""]
    lines += [f"class TestGroup{m}:"]
    for i in range(n_class):
        a, b = rng.randrange(100), rng.randrange(100)
        lines += [f"    def test_method_{i}(self):",
                  f"        assert {a} + {b} == {a + b}", ""]
    lines += [""]
    for i in range(n_plain):
        k = rng.randrange(3)
        if k == 0:
            lines += [f"def test_plain_{i}(numbers):", f"    assert sum(numbers) == 45", "", ""]
        elif k == 1:
            key = rng.randrange(100)
            lines += [f"def test_table_{i}(table):", f"    assert table[{str(key)!r}] == {key * key}", "", ""]
        else:
            s = "".join(rng.choice("abcdefgh") for _ in range(8))
            lines += [f"def test_str_{i}():", f"    assert {s!r}.upper().lower() == {s!r}", "", ""]
    return "\n".join(lines).rstrip() + "\n"


def sleep_module(durations_ms, names):
    lines = ["import time", "", ""]
    for name, ms in zip(names, durations_ms):
        lines += [f"def {name}():", f"    time.sleep({ms / 1000:.3f})", "", ""]
    return "\n".join(lines).rstrip() + "\n"


def plan(name):
    """[(module file, source)], expected counts."""
    cfg = SUITES[name]
    rng = random.Random(f"{SEED}/{name}")
    files = []
    total_ms = 0
    slow = None
    for m in range(cfg["modules"]):
        mod = f"tests/test_{name}_{m:02d}.py"
        n = cfg["per_module"]
        if cfg["kind"] == "quick":
            files.append((mod, quick_module(m, n, rng)))
            continue
        if cfg["kind"] == "sleepy":
            ms = [rng.randint(cfg["lo_ms"], cfg["hi_ms"]) for _ in range(n)]
        else:
            ms = [cfg["ms"]] * n
            if m == cfg["modules"] - 1:
                # one test 20x slower, three from the end of the collection
                ms[n - 3] = cfg["ms"] * cfg["slow_factor"]
        names = [f"test_sleep_{i:02d}" for i in range(n)]
        if cfg["kind"] == "straggler" and m == cfg["modules"] - 1:
            names[n - 3] = "test_straggler"
            slow = f"{mod}::test_straggler"
        total_ms += sum(ms)
        files.append((mod, sleep_module(ms, names)))
    tests = cfg["modules"] * cfg["per_module"]
    info = dict(name=name, tests=tests, modules=cfg["modules"], serial_sleep_ms=total_ms)
    if slow:
        info["slow_test"] = slow
        info["slow_ms"] = cfg["ms"] * cfg["slow_factor"]
    return files, info


def write(name, root):
    files, info = plan(name)
    os.makedirs(os.path.join(root, "tests"), exist_ok=True)
    out = [("pyproject.toml", PYPROJECT.format(name=name)),
           ("tests/__init__.py", ""),
           ("tests/conftest.py", CONFTEST)] + files
    for rel, text in out:
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    with open(os.path.join(root, "suite.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    return info


def main(argv):
    if argv == ["--list"]:
        print("\n".join(SUITES))
        return 0
    if len(argv) == 2 and argv[0] == "--info" and argv[1] in SUITES:
        print(json.dumps(plan(argv[1])[1]))
        return 0
    if len(argv) != 2 or argv[0] not in SUITES:
        print(__doc__, file=sys.stderr)
        return 2
    name, root = argv[0], os.path.abspath(argv[1])
    if os.path.exists(root) and os.listdir(root):
        print(f"gensuite: {root} exists and is not empty", file=sys.stderr)
        return 1
    info = write(name, root)
    print(f"gensuite: {name}: {info['tests']} tests in {info['modules']} modules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
