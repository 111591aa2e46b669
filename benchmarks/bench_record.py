"""Benchmark: the cost of recording a checkpoint over a bare eval pass of the same model and loader.

For each workload it times, alternately and ``--repeats`` times:

- *bare*: ``model.eval()``, ``torch.no_grad()``, ``model(x)`` for every batch of the loader;
- *record*: ``LossRecorder.record(model, loader, checkpoint)`` (the same pass, plus per-sample
  loss / correct / margin kept on the device, one host move, and the atomic commit to the lake);
- *commit*: the commit alone (host move + lake write), measured after ``update()`` calls;
- *record + el2n*: ``record`` with the optional ``el2n`` channel
  (``channels=("loss", "correct", "margin", "el2n")``): one more pass over the logits on the
  device and a fourth array written.

and prints medians and the overhead ``record / bare - 1`` in wall time and in the process's
CPU time (steadier on a shared machine), and what el2n adds: ``record_el2n / record - 1``. The
target is < 10% for real models.

    python -m benchmarks.bench_record                 # all workloads, 5 repeats
    python -m benchmarks.bench_record --quick         # fewer samples and repeats
    python -m benchmarks.bench_record --threads 1 --device cuda

With ``--ddp`` it measures instead the distributed commit: ``--ranks`` gloo processes on the
CPU each record ``--samples / ranks`` samples (a fake model: random logits, so the time is the
commit's), then commit checkpoint 0 (a new split) and 1 (the split exists); per commit it
prints the wall time and, per rank, the peak resident memory during the commit and its growth
over the memory held just before it (the recorded values). ``--tree LABEL=DIR`` (repeatable)
runs the ranks on another checkout of the package (e.g. the commit before a change), to
compare in one run:

    python -m benchmarks.bench_record --ddp --samples 10000000 --repeats 3 \
        --tree before=/path/to/old/checkout --tree after=.

``--existing`` creates the split first (ids 0..N-1) and measures only the commit into it (the
steady state of a training run, without the first commit's sample set): what fits at 100M.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._args import ArgumentParser, existing_dir, labelled_dir
from cld_lake.torch import LossRecorder, WithIndex


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    samples: int
    batch_size: int


WORKLOADS = (
    Workload("resnet18 / CIFAR 32x32", "resnet18", (3, 32, 32), 100, 512, 128),
    Workload("cnn1d / MNIST-1D", "cnn1d", (1, 40), 10, 20000, 512),
    Workload("mlp / digits 8x8", "mlp", (64,), 10, 100000, 1024),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier measure of the work done; on a GPU the wall time is the one that matters."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c


def bench(
    w: Workload, device: torch.device, repeats: int, scale: float, root: Path
) -> dict[str, float]:
    n = max(int(w.samples * scale), w.batch_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *w.input_shape, generator=g)
    y = torch.randint(0, w.num_classes, (n,), generator=g)
    loader = DataLoader(
        WithIndex(TensorDataset(x, y)), batch_size=w.batch_size, pin_memory=device.type == "cuda"
    )
    from pipelines.models import build_model

    torch.manual_seed(0)
    model = build_model(w.model, w.num_classes, w.input_shape).to(device).eval()
    rec = LossRecorder(root / f"{w.model}.lake", "train", w.num_classes)
    channels = ("loss", "correct", "margin", "el2n")
    rec_el2n = LossRecorder(
        root / f"{w.model}-el2n.lake", "train", w.num_classes, channels=channels
    )
    ckpt = iter(range(10**6))

    def bare() -> None:
        with torch.no_grad():
            for xb, _, _ in loader:
                model(xb.to(device, non_blocking=True))

    def record() -> None:
        rec.record(model, loader, next(ckpt))

    def record_el2n() -> None:
        rec_el2n.record(model, loader, next(ckpt))

    with torch.no_grad():  # the commit alone: values already added
        logits = [model(xb.to(device)) for xb, _, _ in loader]

    def commit() -> None:
        for (_, yb, ib), lb in zip(loader, logits, strict=True):
            rec.update(ib, lb, yb)
        _sync(device)
        t = time.perf_counter()
        rec.commit(next(ckpt))
        commit_times.append(time.perf_counter() - t)

    bare()
    record()  # warm-up (allocator, lazy imports, the split's first commit)
    record_el2n()
    bare_t, record_t, el2n_t, commit_times = [], [], [], []
    for _ in range(repeats):
        bare_t.append(_timed(bare, device))
        record_t.append(_timed(record, device))
        el2n_t.append(_timed(record_el2n, device))
        commit()
    b, r = statistics.median(t[0] for t in bare_t), statistics.median(t[0] for t in record_t)
    bc, rc = statistics.median(t[1] for t in bare_t), statistics.median(t[1] for t in record_t)
    e = statistics.median(t[0] for t in el2n_t)
    return {
        "samples": n,
        "bare_s": b,
        "record_s": r,
        "overhead_pct": 100.0 * (r / b - 1.0),
        "cpu_overhead_pct": 100.0 * (rc / bc - 1.0),
        "commit_ms": 1000 * statistics.median(commit_times),
        "el2n_s": e,
        "el2n_pct": 100.0 * (e / r - 1.0),
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m benchmarks.bench_record", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a quarter of the samples, 3 repeats")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", help="substring of a workload name")
    p.add_argument("--ddp", action="store_true", help="measure the distributed commit instead")
    p.add_argument("--samples", type=int, default=10_000_000, help="--ddp: samples in all")
    p.add_argument("--ranks", type=int, default=2, help="--ddp: gloo processes")
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        type=labelled_dir,
        help="--ddp: LABEL=DIR, a checkout to run",
    )
    p.add_argument(
        "--root", type=existing_dir, help="--ddp: where the lakes go (default: a temp folder)"
    )
    p.add_argument(
        "--existing",
        action="store_true",
        help="--ddp: the split exists before the ranks start (only the steady-state commit)",
    )
    args = p.parse_args(argv)
    if args.ddp:
        trees = [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]
        return ddp_main(args.samples, args.ranks, args.repeats, trees, args.root, args.existing)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats, scale = (3, 0.25) if args.quick else (args.repeats, 1.0)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, medians of {repeats} alternating runs"
    )
    head = (
        f"| {'workload':<24} | {'samples':>7} | {'bare pass s':>11} | {'record s':>9} | {'overhead':>8} "
        f"| {'CPU-time overhead':>17} | {'commit ms':>9} | {'record+el2n s':>13} | {'el2n adds':>9} |"
    )
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for w in WORKLOADS:
            if args.only and args.only not in w.name:
                continue
            r = bench(w, device, repeats, scale, Path(tmp))
            print(
                f"| {w.name:<24} | {r['samples']:>7} | {r['bare_s']:>11.3f} | {r['record_s']:>9.3f} | "
                f"{r['overhead_pct']:>7.1f}% | {r['cpu_overhead_pct']:>16.1f}% | {r['commit_ms']:>9.1f} | "
                f"{r['el2n_s']:>13.3f} | {r['el2n_pct']:>8.1f}% |",
                flush=True,
            )
    return 0


# --- the distributed commit (--ddp) ---------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
DDP_CLASSES = 10
DDP_BATCH = 1 << 16


def ddp_rank(root: str, samples: int, checkpoints: tuple[int, ...] = (0, 1)) -> None:
    """One rank: record this rank's share of a shuffled 0..N-1 with random logits, commit
    each of ``checkpoints``, write the commit times and memory to ``root/rank<r>.json``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = torch.from_numpy(_shuffled(samples)[rank::world].copy())
    labels = mine % DDP_CLASSES
    rec = LossRecorder(Path(root) / "bench.lake", "train", DDP_CLASSES)
    g = torch.Generator().manual_seed(rank)
    out: dict[str, float] = {}
    for ckpt in checkpoints:
        for a in range(0, len(mine), DDP_BATCH):
            ids = mine[a : a + DDP_BATCH]
            rec.update(
                ids, torch.randn(len(ids), DDP_CLASSES, generator=g), labels[a : a + DDP_BATCH]
            )
        rec._to_host()  # the values on the host, as a loader-driven pass leaves them
        out["process_peak_mb"] = max(out.get("process_peak_mb", 0.0), _status_mb("VmHWM"))
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := now (Linux)
        dist.barrier()
        t = time.perf_counter()
        rec.commit(ckpt)
        out[f"commit{ckpt}_s"] = time.perf_counter() - t
        peak = _status_mb("VmHWM")
        out[f"commit{ckpt}_peak_mb"] = peak
        out[f"commit{ckpt}_growth_mb"] = peak - before
        out["process_peak_mb"] = max(out["process_peak_mb"], peak)
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _shuffled(n: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(n)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _declare(root: Path, samples: int) -> None:
    """Create the split (ids 0..N-1, no checkpoints yet), so the ranks commit into a split
    that exists (``--existing``: the steady state, without the first commit's sample set)."""
    from cld_lake.lake import Lake, SplitWriter

    ids = np.arange(samples)
    channels = {"loss": "float32", "correct": "bool", "margin": "float32"}
    lake = Lake.create(root / "bench.lake", num_classes=DDP_CLASSES)
    with SplitWriter(lake, "train", channels=channels, num_classes=DDP_CLASSES) as writer:
        writer.declare_samples(ids, ids % DDP_CLASSES)


def _run_ranks(
    tree: str, root: Path, samples: int, ranks: int, existing: bool = False
) -> list[dict[str, float]]:
    if existing:
        _declare(root, samples)
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(tree).resolve()),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(ranks),
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rank-of", str(root), str(samples)]
    cmd += ["1"] if existing else ["0", "1"]
    procs = [
        subprocess.Popen(cmd, env=dict(env, RANK=str(r)), cwd=root, stderr=subprocess.PIPE)
        for r in range(ranks)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"a rank failed ({p.returncode}): {err.decode()[-2000:]}")
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(ranks)]


def _median(runs: list[list[dict[str, float]]], rank: int, key: str) -> float:
    return statistics.median(run[rank][key] for run in runs)


def ddp_main(
    samples: int,
    ranks: int,
    repeats: int,
    trees: list[list[str]],
    root: str | None,
    existing: bool = False,
) -> int:
    print(f"{ranks} gloo ranks on the CPU, {samples:,} samples in all, medians of {repeats} runs")
    cols = ["commit s", *(f"rank {r} peak MB" for r in range(ranks))]
    cols += [f"rank {r} growth MB" for r in range(ranks)]
    head = f"| {'checkout':<10} | {'commit':<18} | " + " | ".join(cols) + " |"
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    runs: dict[str, list[list[dict[str, float]]]] = {label: [] for label, _ in trees}
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for i in range(repeats):  # checkouts alternate: the machine's noise falls on each alike
            for label, tree in trees:
                run_root = Path(tmp) / f"{label}-{i}"
                run_root.mkdir()
                runs[label].append(_run_ranks(tree, run_root, samples, ranks, existing))
                shutil.rmtree(run_root)
    for label, _ in trees:
        commits = ((0, "0 (new split)"), (1, "1 (split exists)"))[1 if existing else 0 :]
        for ckpt, what in commits:
            done = runs[label]
            cells = [f"{_median(done, 0, f'commit{ckpt}_s'):.2f}"]
            cells += [f"{_median(done, r, f'commit{ckpt}_peak_mb'):.0f}" for r in range(ranks)]
            cells += [f"{_median(done, r, f'commit{ckpt}_growth_mb'):.0f}" for r in range(ranks)]
            row = f"| {label:<10} | {what:<18} | " + " | ".join(
                f"{c:>{len(h)}}" for c, h in zip(cells, cols, strict=True)
            )
            print(row + " |", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--rank-of":
        ddp_rank(sys.argv[2], int(sys.argv[3]), tuple(int(c) for c in sys.argv[4:]))
        raise SystemExit(0)
    raise SystemExit(main())
