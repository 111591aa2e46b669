"""A real writer process for the fault tests: records checkpoints of a deterministic split,
resuming after the last committed one. Prints `commit-start T` / `commit-end T` markers."""

from __future__ import annotations

import sys

import numpy as np

from cld_lake.lake import Lake
from cld_lake.lake.writer import SplitWriter


def values(n: int, t: int) -> np.ndarray:
    return ((np.arange(n) % 97) * 0.01 + t).astype(np.float32)


def main(lake_path: str, n: int, total: int, split: str = "train") -> None:
    lake = Lake.create(lake_path, num_classes=10)
    ids = np.arange(n)
    with SplitWriter(lake, split, row_chunk=4096) as w:
        done = set(w.committed_checkpoints.tolist())
        for t in range(total):
            if t in done:
                continue
            ck = w.checkpoint(t, epoch=t)
            for part in np.array_split(np.random.default_rng(t).permutation(n), 4):
                ck.add(
                    ids[part],
                    values(n, t)[part],
                    labels=ids[part] % 10,
                    correct=(ids[part] % 3 == 0),
                    margin=values(n, t)[part] - 1,
                )
            print(f"commit-start {t}", flush=True)
            ck.commit()
            print(f"commit-end {t}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *(sys.argv[4:5]))
