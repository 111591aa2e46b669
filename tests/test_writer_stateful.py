"""A state machine over the writer of one real split on disk (commit, append several
checkpoints, compact, gc, reopen, kill -9 mid-commit) checked against an in-memory model after
every step: what a new reader sees, and what a reader opened earlier still sees."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cld_lake.lake import Lake, open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.lake.store import Split
from cld_lake.lake.writer import SplitWriter
from tests._writer_hooks import child_values
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # 20-40 s on the shared 2-core machine (a real process per kill)

SPLIT = "train"
NUM_CLASSES = 4
KILL_SEED = 7  # the child writer's values: child_values(n, checkpoint, KILL_SEED)

Model = dict[int, dict[str, np.ndarray]]  # checkpoint -> channel -> column in row order

checkpoint_ids = st.integers(0, 400)


class WriterMachine(RuleBasedStateMachine):
    """One split; the model is ``self.columns`` plus the sample ids and labels in row order."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="cld-stateful-"))
        self.path = self.tmp / "lake"
        self.columns: Model = {}
        self.writer: SplitWriter | None = None
        self.snapshot: tuple[Split, Model] | None = None
        self.kills = 0

    # --- helpers -------------------------------------------------------------------------
    def values(self, n: int, nan_share: float) -> dict[str, np.ndarray]:
        loss = self.rng.normal(1.0, 3.0, n).astype(self.dtype)
        loss[self.rng.random(n) < nan_share] = np.nan
        return {"loss": loss, "correct": self.rng.random(n) < 0.5}

    def fresh(self, wanted: list[int]) -> list[int]:
        """Unused checkpoint ids: each wanted id, or the next free one above it."""
        taken, out = set(self.columns), []
        for c in wanted:
            while c in taken:
                c += 1
            taken.add(c)
            out.append(c)
        return out

    def commit_one(self, ckpt: int, nan_share: float, missing: bool) -> None:
        v = self.values(self.n, nan_share)
        given = self.rng.random(self.n) >= (0.3 if missing else 0.0)  # rows that get a value
        ck = self.writer.checkpoint(ckpt, epoch=ckpt)
        rows = self.rng.permutation(np.flatnonzero(given))
        for part in np.array_split(rows, self.rng.integers(1, 4)):
            ck.add(self.ids[part], v["loss"][part], correct=v["correct"][part])
        ck.commit(allow_missing=missing)
        v["loss"][~given] = np.nan
        v["correct"][~given] = False
        self.columns[ckpt] = v

    def open_writer(self, auto_compact: bool = True) -> None:
        self.writer = SplitWriter(open_lake(self.path), SPLIT, auto_compact=auto_compact)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def check(self, split: Split, model: Model) -> None:
        want = sorted(model)
        assert split.checkpoint_ids.tolist() == want
        np.testing.assert_array_equal(split.sample_ids, self.ids)
        np.testing.assert_array_equal(split.labels, self.labels)
        block_rows = self.rng.integers(1, self.n + 5)
        blocks = list(split.blocks(block_rows=int(block_rows), channels=["loss", "correct"]))
        np.testing.assert_array_equal(np.concatenate([b.sample_ids for b in blocks]), self.ids)
        np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), self.labels)
        for channel in ("loss", "correct"):
            got = np.concatenate([b.values[channel] for b in blocks])
            expected = np.zeros((self.n, 0), got.dtype)
            if want:
                expected = np.stack([model[c][channel] for c in want], axis=1)
            np.testing.assert_array_equal(got, expected)  # NaN == NaN here

    # --- creation ------------------------------------------------------------------------
    @initialize(
        n=st.integers(5, 200),
        row_chunk=st.sampled_from([16, 64]),
        dtype=st.sampled_from(["float32", "float16"]),
        how=st.sampled_from(["declare", "first-commit", "append"]),
        seed=st.integers(0, 2**32 - 1),
        commits=st.integers(0, 9),
    )
    def create(self, n: int, row_chunk: int, dtype: str, how: str, seed: int, commits: int) -> None:
        """A new split, then ``commits`` checkpoints (the 8th one of width 1 merges)."""
        self.rng = np.random.default_rng(seed)
        self.n, self.dtype = n, dtype
        ids = self.rng.choice(10 * n, n, replace=False).astype(np.int64)
        labels = self.rng.integers(0, NUM_CLASSES, n)
        lake = Lake.create(self.path, num_classes=NUM_CLASSES)
        channels = {"loss": dtype, "correct": "bool"}
        self.writer = SplitWriter(lake, SPLIT, channels=channels, row_chunk=row_chunk)
        if how == "declare":
            self.writer.declare_samples(ids, labels)
            self.ids, self.labels = ids, labels
        elif how == "first-commit":  # the first checkpoint defines the samples, sorted by id
            v = self.values(n, 0.1)
            ck = self.writer.checkpoint(0)
            for part in np.array_split(np.arange(n), 2):
                ck.add(ids[part], v["loss"][part], labels=labels[part], correct=v["correct"][part])
            ck.commit()
            order = np.argsort(ids)
            self.ids, self.labels = ids[order], labels[order]
            self.columns[0] = {c: x[order] for c, x in v.items()}
        else:  # bulk import of the first checkpoints, rows in the given order
            cols = {c: self.values(n, 0.1) for c in (5, 2)}
            self.append_checkpoints(cols, new_samples=(ids, labels))
            self.ids, self.labels = ids, labels
        for ckpt in self.fresh(list(range(10, 10 + commits))):
            self.commit_one(ckpt, 0.1, missing=False)

    def append_checkpoints(self, cols: Model, new_samples=None) -> None:
        order = list(cols)
        stacked = {ch: np.stack([cols[c][ch] for c in order], axis=1) for ch in ("loss", "correct")}
        self.writer.append_columns(
            order,
            lambda a, b: {ch: v[a:b] for ch, v in stacked.items()},
            num_rows=self.n,
            channels={"loss": self.dtype, "correct": "bool"},
            new_samples=new_samples,
        )
        self.columns.update(cols)

    # --- rules ---------------------------------------------------------------------------
    @rule(ckpt=checkpoint_ids, nan_share=st.sampled_from([0.0, 0.2, 1.0]), missing=st.booleans())
    def commit(self, ckpt: int, nan_share: float, missing: bool) -> None:
        self.commit_one(self.fresh([ckpt])[0], nan_share, missing)

    @rule(wanted=st.lists(checkpoint_ids, min_size=1, max_size=4))
    def append_several(self, wanted: list[int]) -> None:
        new = self.fresh(wanted)
        self.append_checkpoints({c: self.values(self.n, 0.2) for c in new})

    @rule(full=st.booleans())
    def compact(self, full: bool) -> None:
        merges = self.writer.compact(full=full)
        event(f"compact(full={full}): {'no ' if not merges else ''}merge")
        if full and self.columns:
            assert len(Split(self.writer.lake, SPLIT).segment_names()) == 1

    @rule(grace_zero=st.booleans())
    def gc(self, grace_zero: bool) -> None:
        if grace_zero:
            self.writer.gc(grace_seconds=0)
            self.snapshot = None  # its retired segments may be gone now
        else:
            self.writer.gc()

    @rule(auto_compact=st.booleans())
    def reopen(self, auto_compact: bool) -> None:
        self.close_writer()
        self.open_writer(auto_compact)

    @rule()
    def take_snapshot(self) -> None:
        """A reader opened now keeps reading these checkpoints while the writer goes on."""
        split = open_lake(self.path).split(SPLIT)
        self.snapshot = (split, {c: dict(v) for c, v in self.columns.items()})

    @precondition(lambda self: self.kills < 1)
    @rule(wanted=checkpoint_ids, delay=st.floats(0, 0.1))
    def kill_mid_commit(self, wanted: int, delay: float) -> None:
        """A real writer process, kill -9'd while it commits: all of its checkpoint or none."""
        (ckpt,) = self.fresh([wanted])
        self.kills += 1
        self.close_writer()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests._writer_hooks", str(self.path), SPLIT, str(ckpt),
             str(KILL_SEED)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout.readline().strip() == "commit-start", proc.stderr.read()
            proc.stdout.close()
            time.sleep(delay)  # before, during or after the rename (a commit takes ~50 ms)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stderr.close()
        assert verify_lake(open_lake(self.path)).ok
        committed = ckpt in open_lake(self.path).split(SPLIT).checkpoint_ids
        event(f"kill -9: the checkpoint was {'' if committed else 'not '}committed")
        if committed:
            loss, correct = child_values(self.n, ckpt, KILL_SEED)
            self.columns[ckpt] = {"loss": loss.astype(self.dtype), "correct": correct}
        self.open_writer()

    # --- checks after every step ---------------------------------------------------------
    @invariant()
    def a_new_reader_sees_the_model(self) -> None:
        if hasattr(self, "ids"):
            self.check(open_lake(self.path).split(SPLIT), self.columns)

    @invariant()
    def an_earlier_reader_still_sees_its_snapshot(self) -> None:
        if self.snapshot is not None:
            self.check(*self.snapshot)

    def teardown(self) -> None:
        self.close_writer()
        shutil.rmtree(self.tmp, ignore_errors=True)


WriterMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_writer_state_machine = pytest.mark.timeout(300)(WriterMachine.TestCase)
