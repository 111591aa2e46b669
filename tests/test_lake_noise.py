"""What ``verify`` and ``info`` say about retired data (issue 22, "noise that hides signal").

Right after a recording, compaction has retired segments that stay for the grace period:
``verify`` summarises them in one line per split (count, bytes, when they go) instead of one
warning per segment, and ``info``'s "on disk" and bytes/value count only live data (what the
commit records reference), with retired bytes shown apart.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cld_lake.lake import SplitWriter, open_lake
from cld_lake.lake._compact import COMPACT_FANOUT
from cld_lake.lake.check import lake_info
from tests.conftest import import_arrays, make_arrays

N, C = 300, 3


@pytest.fixture
def recorded(tmp_path):
    """Train and val with one checkpoint committed at a time, as a recorder does: the tiered
    compaction has merged the first ``COMPACT_FANOUT`` segments of each and retired them."""
    lake = tmp_path / "lake"
    for split, seed in (("train", 1), ("val", 2)):
        loss, labels, ids = make_arrays(N, 1, C, seed=seed)
        import_arrays(tmp_path, lake, split, loss=loss, labels=labels, sample_ids=ids)
        for t in range(1, COMPACT_FANOUT + 2):
            s = open_lake(lake).split(split)
            with SplitWriter(open_lake(lake), split) as w:
                w.append_columns([t], lambda a, b, t=t: {"loss": np.full((b - a, 1), t, "f4")},
                                 num_rows=s.num_samples, channels=s.channels)  # fmt: skip
    for split in ("train", "val"):
        assert len(open_lake(lake).split(split).meta["retired"]) == COMPACT_FANOUT
    return lake


def test_verify_says_one_line_per_split_for_its_retired_segments(recorded, cli):
    r = cli("verify", recorded)
    assert r.code == 0, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 2, r.err  # one per split, not one per segment
    for line, split in zip(sorted(lines), ("train", "val"), strict=True):
        assert re.fullmatch(
            rf"warning: split '{split}': {COMPACT_FANOUT} segments \(\d+\.\d KiB\) retired by "
            r"compaction, kept for the grace period \(10 min\) so running readers finish; the "
            r"split's next writer deletes them \(all by \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\), "
            r"`cld-lake compact --prune` at once",
            line,
        ), line
    assert cli("compact", recorded, "--prune").code == 0
    assert cli("verify", recorded).err == ""


def test_info_counts_live_bytes_and_shows_retired_bytes_apart(recorded, cli):
    info = json.loads(cli("info", recorded, "--json").out)
    total = open_lake(recorded).root.tree_bytes()
    assert info["bytes_retired"] > 0 and info["bytes_debris"] == 0
    assert info["bytes_on_disk"] + info["bytes_retired"] == total
    for split in info["splits"].values():
        assert split["bytes_retired"] > 0
    text = cli("info", recorded).out
    assert re.search(r"on disk: [\d.]+ KiB \(\+ [\d.]+ KiB retired, deleted after the grace "
                     r"period\)", text), text  # fmt: skip
    for name in ("train", "val"):  # the same live data once the retired segments are gone
        with SplitWriter(open_lake(recorded), name) as w:
            w.gc(grace_seconds=0)
    after = lake_info(open_lake(recorded))
    assert after["bytes_on_disk"] == info["bytes_on_disk"] and after["bytes_retired"] == 0
    for name, split in after["splits"].items():
        before = info["splits"][name]
        assert split["bytes_on_disk"] == before["bytes_on_disk"]
        assert split["bytes_per_value"] == before["bytes_per_value"]
    assert "retired" not in cli("info", recorded).out
