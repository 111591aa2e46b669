"""Where a pass writes a method's finalised scores: a column in memory, or spilled to disk.

The CLI spills (``keep_scores=False``), so scoring a split of any size holds no per-sample
array: each chunk's scores are written at their rows of a temporary float64 file, and the
store streams them back a row group at a time.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np


class ScoreColumn:
    """Where finalised scores go, in any row order: memory (``values``) or, with ``spill``, a
    temporary float64 file on disk, so scoring a split holds no per-sample array at all.

    Rows written are tracked as intervals (not a per-row mask); :meth:`check_complete` proves
    they tile ``[0, num_rows)`` exactly once.
    """

    def __init__(self, num_rows: int, spill: bool = False) -> None:
        self.num_rows = num_rows
        self._intervals: list[tuple[int, int]] = []
        self.values: np.ndarray | None = None
        self._file: Any = None
        if spill:
            self._file = tempfile.TemporaryFile(prefix="cld-lake-scores-")
            self._file.truncate(num_rows * 8)
        else:
            self.values = np.full(num_rows, np.nan, dtype=np.float64)

    def write(self, rows: slice | np.ndarray, part: np.ndarray) -> None:
        part = np.ascontiguousarray(part, dtype=np.float64)
        if isinstance(rows, slice):
            self._write_run(rows.start, part)
            return
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        rows, part = rows[order], part[order]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            if hi > lo:
                self._write_run(int(rows[lo]), part[lo:hi])

    def _write_run(self, start: int, part: np.ndarray) -> None:
        stop = start + len(part)
        if start < 0 or stop > self.num_rows:
            raise RuntimeError(f"engine returned rows {start}..{stop} outside 0..{self.num_rows}")
        self._intervals.append((start, stop))
        if self.values is not None:
            self.values[start:stop] = part
            return
        data, offset = memoryview(part.tobytes()), start * 8
        try:
            while data:  # a short write (disk nearly full) is retried and then raises ENOSPC
                written = os.pwrite(self._file.fileno(), data, offset)
                data, offset = data[written:], offset + written
        except OSError as exc:
            raise _spill_error(exc) from exc

    def read(self, start: int, stop: int) -> np.ndarray:
        """Scores of rows ``[start, stop)``."""
        if self.values is not None:
            return self.values[start:stop]
        raw = os.pread(self._file.fileno(), (stop - start) * 8, start * 8)
        return np.frombuffer(raw, dtype=np.float64)

    def check_complete(self) -> None:
        """Every row written exactly once (an engine bug otherwise, never a user error)."""
        covered = 0
        for lo, hi in sorted(self._intervals):
            if lo != covered:
                raise RuntimeError(f"engine rows overlap or leave a gap at row {min(lo, covered)}")
            covered = hi
        if covered != self.num_rows:
            raise RuntimeError(f"engine returned {covered} of {self.num_rows} rows")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _spill_error(exc: OSError) -> OSError:
    """A failed write of the (unnamed) spill file, naming the directory it lives in."""
    if exc.filename is not None:
        return exc
    where = f"{tempfile.gettempdir()} (the temporary directory scoring spills to; set TMPDIR)"
    return OSError(exc.errno, exc.strerror, where)
