"""Benchmark: float16 against float32 storage of the losses (default 10M x 50, one seed).

Plain script (not part of the test suite). Builds the same synthetic lake twice with
:mod:`benchmarks.synth` (same seed: the same float64 curves, rounded to each dtype), scores
CLD on both with ``cld-lake score`` and selects the class-balanced top 10% on both with
``cld-lake select``, each step in its own process (wall time and peak RSS as in
:mod:`benchmarks.bench_scale`). Then reports:

- bytes per value: the train split's value chunks on disk / (N x T), and the whole lake's
  bytes / ((N + val) x T);
- Spearman's rank correlation of the two CLD columns (average ranks for ties, over the
  samples where both are defined; target >= 0.999), the largest and mean absolute CLD
  difference, and how many of the selected samples the two coresets share.

The Spearman step holds both CLD columns, the sample ids and both rank arrays with their
temporaries (1.1 GB peak RSS at 10M, measured 2026-11-29): it is the one step here that is
O(N) in memory, measured and printed like the others (an exact rank correlation needs the
ranks). Scoring and selection are the lake's own bounded paths.

    python -m benchmarks.bench_precision --samples 10000000 --dir DIR
    python -m benchmarks.bench_precision --samples 1000000            # quicker
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._args import ArgumentParser, work_dir
from benchmarks.bench_scale import machine_line, run_wrapped

DTYPES = ("float16", "float32")

COMPARE = """
import json
import numpy as np
import pyarrow.parquet as pq
import cld_lake
from cld_lake.diagnostics import spearman
from cld_lake.lake import iter_scores

def column(path):
    lake = cld_lake.open_lake(path)
    out = np.empty(lake.split("train").num_samples, np.float64)
    ids = np.empty(len(out), np.int64)
    at = 0
    for part in iter_scores(lake, ["cld"]):
        n = part.num_rows
        out[at : at + n] = part.column("cld").to_numpy(zero_copy_only=False)
        ids[at : at + n] = part.column("sample_id").to_numpy()
        at += n
    return ids, out

ids16, a = column(ARGS[0])
ids32, b = column(ARGS[1])
assert np.array_equal(ids16, ids32), "the two lakes' rows differ"
del ids32
rho, pairs = spearman(a, b)
both = np.isfinite(a) & np.isfinite(b)
diff = np.abs(a[both] - b[both])
picked = [pq.read_table(p, columns=["sample_id"]).column(0).to_numpy() for p in ARGS[2:4]]
print(json.dumps({
    "spearman": rho, "pairs": pairs,
    "undefined_float16": int((~np.isfinite(a)).sum()), "undefined_float32": int((~np.isfinite(b)).sum()),
    "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
    "selected": len(picked[0]), "selected_shared": len(np.intersect1d(*picked)),
}))
"""


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(arguments: list[str], work: Path, what: str) -> dict:
    done = run_wrapped(arguments, work)
    if done.code:
        raise SystemExit(f"{what} failed (exit {done.code}): {done.out.strip()[-500:]}")
    print(f"  {what}: {done.wall_s:.1f} s, {done.self_mb:.0f} MB", flush=True)
    return {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "rss_mb": done.self_mb, "out": done.out}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--val", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=work_dir, help="where the lakes go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the lakes afterwards")
    args = parser.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    n, t = args.samples, args.checkpoints
    print(f"# bench_precision: {machine_line()}; {n:,} x {t}, val {args.val:,}\n", flush=True)
    lakes = {d: work / f"precision-{n}x{t}-{d}.lake" for d in DTYPES}
    manifests = {d: work / f"coreset-{n}-{d}.parquet" for d in DTYPES}
    steps: dict[str, dict[str, dict]] = {d: {} for d in DTYPES}
    try:
        for d in DTYPES:
            shutil.rmtree(lakes[d], ignore_errors=True)
            synth = ["module", "benchmarks.synth", str(lakes[d]), "--train", str(n)]
            synth += ["--val", str(args.val), "--checkpoints", str(t), "--dtype", d]
            synth += ["--classes", str(args.classes), "--seed", str(args.seed)]
            steps[d]["synth"] = run(synth, work, f"synth {d}")
            score = ["cli", "score", str(lakes[d]), "--engine", "numpy"]
            steps[d]["score"] = run(score, work, f"score {d}")
            select = ["cli", "select", str(lakes[d]), "--score", "cld", "--fraction", "0.1"]
            select += ["--out", str(manifests[d]), "--force"]
            steps[d]["select"] = run(select, work, f"select {d}")
        arguments = [str(lakes[d]) for d in DTYPES] + [str(manifests[d]) for d in DTYPES]
        compared = run(["code", COMPARE, *arguments], work, "spearman")
        result = json.loads(compared["out"].strip().splitlines()[-1])
        print()
        print(
            f"### float16 vs float32 storage: {n:,} x {t} (val {args.val:,}, "
            f"{args.classes} classes, seed {args.seed}), {time.strftime('%Y-%m-%d', time.gmtime())}"
        )
        print()
        print(
            "| dtype | train values bytes/value | lake bytes/value | lake GB | synth s (CPU s) | "
            "score s (CPU s) | score RSS MB | select s (CPU s) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for d in DTYPES:
            train = lakes[d] / "splits" / "train" / "segments"
            whole = directory_bytes(lakes[d])
            timing = {k: f"{v['wall_s']:.1f} ({v['cpu_s']:.1f})" for k, v in steps[d].items()}
            print(
                f"| {d} | {directory_bytes(train) / (n * t):.3f} | "
                f"{whole / ((n + args.val) * t):.3f} | {whole / 1e9:.2f} | {timing['synth']} | "
                f"{timing['score']} | {steps[d]['score']['rss_mb']:.0f} | {timing['select']} |"
            )
        print()
        shared = result["selected_shared"] / max(result["selected"], 1)
        print(
            f"Spearman(CLD float16, CLD float32) = {result['spearman']:.6f} over "
            f"{result['pairs']:,} samples (target >= 0.999); |delta CLD| max "
            f"{result['max_abs_diff']:.2e}, mean {result['mean_abs_diff']:.2e}; undefined: "
            f"{result['undefined_float16']} (float16), {result['undefined_float32']} (float32); "
            f"top-10% coresets share {result['selected_shared']:,} of {result['selected']:,} "
            f"samples ({shared:.4f}). Spearman step: {compared['wall_s']:.1f} s, "
            f"{compared['rss_mb']:.0f} MB peak RSS (holds both columns and their ranks)."
        )
        print(f"\n(finished {machine_line()})")
    finally:
        if not args.keep:
            for d in DTYPES:
                shutil.rmtree(lakes[d], ignore_errors=True)
                manifests[d].unlink(missing_ok=True)
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
