"""rdist check: facts about a Python interpreter, as one JSON document on stdout.
Runs the same on the controller and on every worker host (sent over rdist's protocol)."""
import json
import platform
import sys


def norm(name):
    return name.lower().replace("_", "-").replace(".", "-")


out = {
    "python": platform.python_version(),
    "implementation": platform.python_implementation(),
    "executable": sys.executable,
    "dists": {},
    "plugins": {},
    "modules": {},
    "pytest": None,
}
try:
    import importlib.metadata as md
except ImportError:
    md = None
if md is not None:
    for dist in md.distributions():
        name = dist.metadata.get("Name")
        if name:
            out["dists"][norm(name)] = dist.version
    try:
        eps = md.entry_points(group="pytest11")
    except TypeError:
        eps = md.entry_points().get("pytest11", [])
    for ep in eps:
        dist = getattr(ep, "dist", None)
        name = norm(dist.metadata["Name"]) if dist is not None else ep.name
        out["plugins"][name] = dist.version if dist is not None else None
    try:
        out["modules"] = {m: sorted({norm(d) for d in ds}) for m, ds in md.packages_distributions().items()}
    except Exception:
        pass
try:
    import pytest

    out["pytest"] = pytest.__version__
except Exception:
    pass
print(json.dumps(out))
