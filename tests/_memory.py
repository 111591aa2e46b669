"""Peak memory of a step run in a child process, for the bounded-memory tests.

The child prints one JSON line last, ``{"before": VmRSS before the step, "peak": VmHWM after
it}`` in bytes (``ru_maxrss`` would not do: a forked child starts with its parent's size).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import REPO

# Paste into a child script: ``status("VmRSS")`` / ``status("VmHWM")`` in bytes.
STATUS = """
def status(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))
"""


def run_child(code: str, *args: object) -> dict[str, Any]:
    """Run ``code`` with ``args`` in a fresh interpreter; return its last line, parsed."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    ).stdout.splitlines()[-1]
    return json.loads(out)


def grown_mb(code: str, *args: object) -> float:
    """How far the child's step raised its peak above its size before the step, in MiB."""
    rss = run_child(code, *args)
    return (rss["peak"] - rss["before"]) / 2**20
