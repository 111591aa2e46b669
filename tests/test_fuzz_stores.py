"""Fuzz: writers on an object store that loses conditional races and leases taken over
mid-commit, at random points of random commit sequences.

The store is fsspec's in-process memory store behind the real ``Store`` interface, with two
faults it can be told to inject at its N-th conditional write: ``lose`` (the write is refused,
as when a rival's write landed first) and ``takeover`` (another writer's lease lands on the
split's lock, as when ours expired while we were paused, then the write goes on). Whatever the
fault and wherever it lands, after every operation the lake verifies, holds exactly the
checkpoints whose commits returned, with their exact values, and the next writer (once the
rival is gone) can go on.
"""

from __future__ import annotations

import json
import random
import time
import uuid

import numpy as np
import pytest

from cld_lake.errors import LakeChangedError, LakeLockedError
from cld_lake.lake import Lake, SplitWriter
from cld_lake.lake.check import verify_lake
from cld_lake.storage import FsspecStore, StorePath

N, CLASSES = 64, 4
SEQUENCES, COMMITS = 60, 4
pytestmark = pytest.mark.timeout(120)


class FaultyStore(FsspecStore):
    """The memory store, with one fault armed at its ``at``-th conditional write."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.calls = 0
        self.armed: tuple[int, str] | None = None
        self.fired: str | None = None

    def arm(self, at: int, kind: str) -> None:
        self.calls, self.armed, self.fired = 0, (at, kind), None

    def _fault(self) -> str | None:
        self.calls += 1
        if self.armed is not None and self.calls == self.armed[0]:
            kind = self.armed[1]
            self.armed, self.fired = None, kind
            if kind == "takeover":
                for key in self._lease_keys():
                    self.put(key, _rival_lease())
            return kind
        return None

    def _lease_keys(self) -> list[str]:
        return [k for k in self.walk("") if k.endswith(".writer.lock")]

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if self._fault() == "lose":
            return False
        return super().put_if_absent(key, data)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        if self._fault() == "lose":
            return False
        return super().replace_if(key, data, version)


def _rival_lease() -> bytes:
    now = time.time()
    return json.dumps(
        {
            "holder": "rival writer",
            "token": uuid.uuid4().hex,
            "host": "elsewhere",
            "pid": 1,
            "renewed_at": now,
            "expires_at": now + 3600,
        }  # fmt: skip
    ).encode()


def _values(t: int) -> np.ndarray:
    return (np.arange(N) * 0.01 + t).astype(np.float32)


def _commit(root: StorePath, t: int) -> None:
    with SplitWriter(Lake(root), "train") as writer:
        ck = writer.checkpoint(t)
        ck.add(np.arange(N), _values(t), labels=np.arange(N) % CLASSES)
        ck.commit()


def _check(root: StorePath, committed: list[int]) -> None:
    lake = Lake(root)
    report = verify_lake(lake)
    assert report.ok, report.errors
    if not committed:
        assert not lake.has_split("train")
        return
    split = lake.split("train")
    assert split.checkpoint_ids.tolist() == committed
    got = np.concatenate([b.values["loss"] for b in split.blocks()])
    np.testing.assert_array_equal(got, np.stack([_values(t) for t in committed], axis=1))


def test_lost_races_and_leases_taken_over_mid_commit_never_lose_or_corrupt_a_commit():
    rng = random.Random(0)
    counts = {"operations": 0, "committed": 0, "refused": 0, "faults fired": 0}
    for _ in range(SEQUENCES):
        store = FaultyStore()
        root = StorePath(store, f"{uuid.uuid4().hex[:8]}/lake")
        Lake.create(root, num_classes=CLASSES)
        committed: list[int] = []
        for t in range(COMMITS):
            store.arm(rng.randint(1, 6), rng.choice(("lose", "takeover")))
            counts["operations"] += 1
            try:
                _commit(root, t)
            except (LakeChangedError, LakeLockedError):
                counts["refused"] += 1
            else:
                committed.append(t)
                counts["committed"] += 1
            counts["faults fired"] += store.fired is not None
            store.armed = None
            for key in store._lease_keys():  # the rival finishes and lets go of its lease
                store.delete(key)
            _check(root, committed)
        _commit(root, COMMITS)  # no fault: a writer goes on from whatever was left
        _check(root, [*committed, COMMITS])
    print(f"\nstore fuzz: {counts}")
    assert (
        counts["refused"] > 0
        and counts["committed"] > 0
        and counts["faults fired"] > SEQUENCES * COMMITS // 2
    )
