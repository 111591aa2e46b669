"""Launch a test script as the ranks of a local gloo process group (real processes, one per
rank), the one way the DDP tests start their workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# a rank runs a test file as a script: the repository root on its path lets it import tests.*
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    script: str, *args: str, world: int = 2, timeout: float = 120, **env: str
) -> list[str]:
    """Run ``python script *args`` as ranks 0..world-1 (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    a free ``MASTER_PORT``; ``env`` added); every rank must exit 0. Returns each rank's output."""
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), **env)
    base["WORLD_SIZE"] = str(world)
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, script, *args],
            env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs
