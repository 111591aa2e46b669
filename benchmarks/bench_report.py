"""Benchmark: `cld-lake report` on a large synthetic lake (default 10M x 50 float16, ~1 GB).

Plain script (not part of the test suite). Builds the lake with :mod:`benchmarks.synth`
(or reuses ``--lake`` when it exists), stores CLD over all checkpoints and over the first half
(two CLD windows, so the rank-stability table is filled), then runs the whole command in a
fresh process under ``/usr/bin/time`` and prints wall time and peak RSS per run. With
``--noisy SHARE`` the train split gets a ``noisy`` flag (a seeded random share of samples;
the losses are the same synthetic curves), so the detection tables and the noisy/clean
histograms are computed too. With ``--before DIR`` (a checkout of an earlier commit, its C
kernel built in place: ``python setup.py build_ext --inplace``) the same command runs from
that code too (``PYTHONPATH=DIR``), alternating with this checkout, and the table compares
the medians.

    .venv/bin/python -m benchmarks.bench_report [--train 10000000] [--checkpoints 50]
                                                [--lake /tmp/bench10m] [--runs 3] [--noisy 0.1]
                                                [--before /tmp/before]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._args import ArgumentParser, existing_dir, lake_to_build
from benchmarks.synth import RowSource, SynthConfig, labels_for, synth_lake


def synth_noisy_lake(path: Path, config: SynthConfig, share: float) -> None:
    """As :func:`benchmarks.synth.synth_lake`, the train split with a ``noisy`` flag."""
    from cld_lake.lake import Lake, SplitWriter

    lake = Lake.create(path, num_classes=config.classes)
    for split, rows in (("train", config.train), ("val", config.val)):
        labels = labels_for(config, split)
        ids = np.arange(rows, dtype=np.int64)
        channels = {"loss": config.dtype}
        with SplitWriter(lake, split, channels=channels) as writer:
            new = (ids, labels)
            if split == "train":
                noisy = np.random.default_rng([config.seed, 7]).random(rows) < share
                writer.declare_samples(ids, labels, metadata={"noisy": noisy})
                new = None
            writer.append_columns(
                list(range(config.checkpoints)),
                RowSource(config, split, labels),
                num_rows=rows,
                channels=channels,
                new_samples=new,
            )


def prepare(path: Path, config: SynthConfig, noisy: float | None = None) -> None:
    """The lake with scores ``cld`` (all checkpoints) and ``cld_first_half``."""
    import cld_lake
    from cld_lake.lake import open_lake, stored_scores

    if not path.exists():
        t0 = time.perf_counter()
        if noisy is None:
            synth_lake(path, config)
        else:
            synth_noisy_lake(path, config, noisy)
        print(
            f"built {path} ({config.train:,} x {config.checkpoints} {config.dtype}) in {time.perf_counter() - t0:.1f} s"
        )
    stored = stored_scores(open_lake(path))
    if "cld" not in stored:
        cld_lake.score(path)
    if "cld_first_half" not in stored:
        cld_lake.score(path, checkpoints=f"0:{config.checkpoints // 2}", name="cld_first_half")


def run_report(lake: Path, out: Path, code: Path | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system) of one `cld-lake report`
    process (from the package in ``code`` when given)."""
    cli = Path(sys.executable).with_name("cld-lake")
    cmd = [
        "/usr/bin/time",
        "-f",
        "%e %M %U %S",
        str(cli),
        "report",
        str(lake),
        "--out",
        str(out),
        "--force",
    ]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    wall, rss_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), float(rss_kb) / 1024, float(user) + float(system)


def main() -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10_000_000)
    ap.add_argument("--val", type=int, default=100_000)
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument(
        "--lake", type=lake_to_build, help="lake to build or reuse (default: a temp dir)"
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--noisy", type=float, help="share of train samples flagged noisy")
    ap.add_argument("--before", type=existing_dir, help="an earlier checkout to compare with")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("needs /usr/bin/time (Debian: apt-get install time)")
    config = SynthConfig(
        train=args.train,
        val=args.val,
        checkpoints=args.checkpoints,
        classes=args.classes,
        dtype=args.dtype,
    )
    codes: dict[str, Path | None] = {"this checkout": None}
    if args.before is not None:
        codes = {"before": args.before, **codes}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        lake = args.lake or Path(tmp) / "lake"
        prepare(lake, config, args.noisy)
        out = Path(tmp) / "report.html"
        runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in codes}
        for _ in range(args.runs):  # alternating: both see the same machine load
            for label, code in codes.items():
                runs[label].append(run_report(lake, out, code))
        size = out.stat().st_size / 2**20
    header = f"{'code':>14} {'run':>4} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>12}"
    print(f"{args.train:,} train rows x {args.checkpoints} checkpoints {args.dtype}")
    print(header)
    print("-" * len(header))
    for label, measured in runs.items():
        for i, (wall, rss, cpu) in enumerate(measured, 1):
            print(f"{label:>14} {i:>4} {wall:>7.1f} {cpu:>7.1f} {rss:>12.0f}")
    print()
    medians = {
        label: tuple(statistics.median(r[i] for r in m) for i in range(3))
        for label, m in runs.items()
    }
    for label, (wall, rss, cpu) in medians.items():
        print(f"{label}: median {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MB")
    if "before" in medians:
        (wb, rb, cb), (wa, ra, ca) = medians["before"], medians["this checkout"]
        print(
            f"ratio this checkout / before: wall {wa / wb:.2f}x, CPU {ca / cb:.2f}x, "
            f"peak RSS {ra / rb:.2f}x"
        )
    print(
        f"report {size:.2f} MB. Each run is a fresh `cld-lake report` process (interpreter "
        "start and imports included); scores stored: "
        + ", ".join(stored_names(lake if args.lake else None))
        + "; "
        + (f"{args.noisy:.0%} of train flagged noisy." if args.noisy else "no noisy flags.")
    )


def stored_names(lake: Path | None) -> list[str]:
    """The stored scores of ``lake`` (the default two when the lake was a temporary one)."""
    if lake is None:
        return ["cld", "cld_first_half"]
    from cld_lake.lake import open_lake, stored_scores

    return list(stored_scores(open_lake(lake)))


if __name__ == "__main__":
    main()
