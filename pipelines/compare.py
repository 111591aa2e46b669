"""Compare scoring methods as coreset selectors on MNIST-1D: one proxy recording, every
method's scores in one pass, top-k coresets per method and fraction next to random subsets
and the full data, fresh models trained on each for several seeds.

    python -m pipelines.compare [--noise 0.2] [--seeds 3] [--fractions 0.1,0.3,0.5]
                                [--methods cld,forgetting,aum] [--epochs 20] [--out runs/compare]
    python -m pipelines.compare --lake runs/x.lake --num-samples N   # reuse a recorded lake

Which end each method keeps (``cld-lake select --score METHOD``, top-k, class-proportional),
the rule of the paper behind each score:

- ``cld`` (higher_keep): the highest correlation with the class's validation loss (the CLD paper);
- ``aum`` (higher_keep): the highest margin (low AUM flags mislabelled samples, Pleiss et al.);
- ``confidence``, ``correctness`` (higher_keep): the highest, the data maps' *easy* selectors;
- ``forgetting`` (higher_harder): the most forgotten (Toneva et al. keep them, drop the
  never-forgotten);
- ``mean_loss``, ``early_loss``, ``el2n`` (higher_harder): the hardest, as Data Diet keeps the
  highest EL2N / GraNd (``mean_loss`` is the plain loss baseline of the same rule);
- ``variability`` (higher_harder): the most variable, the data maps' *ambiguous* selector;
- ``dynunc``, ``dual`` (higher_harder): the most uncertain, as their papers (without
  ``dual``'s Beta sampling).

So every method keeps its highest scores. A short recording (K checkpoints) scores ``dynunc``
and ``dual`` over windows of ``J = min(10, K // 2)`` checkpoints and ``dual`` over an early
window stretched to hold J of them (:func:`score_methods`; recorded in results.json). Each coreset is trained on the labels as recorded
(noisy ones stay noisy) with the MNIST-1D recipe; the accuracy reported is the final epoch's
test accuracy (never an epoch chosen on the test set): mean and min-max over the seeds.
Random subsets use a new draw per seed. ``OUT/results.json`` holds every run, the accuracy
rows (method x fraction, with ranges), the noisy share and mean CLD of each coreset, and the
noisy-label detection rows of :func:`cld_lake.diagnostics.noise_detection`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

import cld_lake
from cld_lake import diagnostics
from cld_lake.errors import BadInputError
from cld_lake.lake import stored_scores
from cld_lake.score import METHODS, compute_scores
from cld_lake.torch import subset
from pipelines._common import Recipe, progress_bar, recipe_for, resolve_device, run_cli
from pipelines._config import build_parser as build_config_parser
from pipelines._config import option, parse_config
from pipelines.datasets import DataBundle, load_dataset
from pipelines.train_proxy import ProxyConfig, train_proxy
from pipelines.train_subset import train_model, training_pool

# every method train_proxy's channels (loss, correct, margin) support; el2n needs its own
DEFAULT_METHODS: tuple[str, ...] = (
    "cld", "mean_loss", "early_loss", "forgetting", "aum", "confidence", "variability",
    "correctness", "dynunc", "dual",
)  # fmt: skip
RANDOM, FULL = "random", "full"


@dataclass
class CompareConfig:
    """The comparison's settings; one command-line flag per field (see ``--help``)."""

    out: Path = option(Path("runs/compare"), help="output directory (results.json, manifests)")
    lake: Path | None = option(
        None, help="reuse a lake recorded by train_proxy on mnist1d (else one is recorded)"
    )
    num_samples: int = option(10000, help="MNIST-1D samples (80%% train pool; must match --lake)")
    noise: float = option(0.0, help="symmetric label noise of the proxy recording, e.g. 0.2")
    val_fraction: float = option(0.1, help="per-class held-out validation fraction")
    methods: tuple[str, ...] = option(DEFAULT_METHODS, help="e.g. cld,forgetting,aum")
    fractions: tuple[float, ...] = option((0.1, 0.3, 0.5), help="e.g. 0.1,0.3,0.5")
    seeds: int = option(3, help="training seeds per coreset (random: one draw per seed)")
    proxy_epochs: int = 30
    epochs: int = option(30, help="epochs of each coreset training")
    threads: int | None = option(1, help="torch CPU threads (default 1)")
    device: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class Run:
    """One fresh model trained on one coreset."""

    method: str
    fraction: float
    seed: int
    samples: int
    final_test_acc: float
    noisy_share: float
    mean_cld: float | None


def subset_recipe(epochs: int) -> Recipe:
    """The MNIST-1D recipe for ``epochs``, the learning rate decayed at 2/3 (as the demo)."""
    return recipe_for("mnist1d", epochs=epochs, milestones=(max(1, int(epochs * 2 / 3)),))


def check_config(cfg: CompareConfig) -> None:
    """Refuse bad settings before anything is trained."""
    known = METHODS
    if not cfg.methods or any(m not in known for m in cfg.methods):
        raise BadInputError(f"--methods {','.join(cfg.methods)}: choose from {','.join(known)}")
    if not cfg.fractions or any(not 0.0 < f < 1.0 for f in cfg.fractions):
        raise BadInputError(f"--fractions {cfg.fractions}: each in (0, 1), e.g. 0.1,0.3,0.5")
    if cfg.seeds < 1 or cfg.epochs < 1 or cfg.proxy_epochs < 2:
        raise BadInputError("--seeds and --epochs must be >= 1, --proxy-epochs >= 2")


def score_methods(
    lake: cld_lake.Lake, methods: Sequence[str], progress: Callable[[int], None] | None = None
) -> dict[str, dict[str, float]]:
    """Store every method's scores: one pass for all but ``dual``, which gets its own pass when
    its early window must be stretched. Returns the parameters given per method.

    A short recording (K checkpoints) gets ``dynunc`` / ``dual`` windows of
    ``J = min(10, K // 2)`` checkpoints (the papers' 10 when K >= 20), and ``dual`` an early
    window of ``max(15%, J / K)`` of the checkpoints (the paper's 15% holds fewer than J here).
    """
    k = len(lake.split("train").checkpoint_ids)
    j = min(10, max(2, k // 2))
    early = max(0.15, min(1.0, (j + 0.5) / k))
    passes = [[m for m in methods if m != "dual"], [m for m in methods if m == "dual"]]
    parameters: dict[str, dict[str, float]] = {}
    for group in (p for p in passes if p):
        kwargs: dict[str, float] = {}
        if {"dynunc", "dual"} & set(group):
            kwargs["window_length"] = j
        if group == ["dual"]:
            kwargs["early"] = early
        # re-scored on purpose: a method stored before (the demo's cld) is recomputed here
        compute_scores(lake, group, progress=progress, force=True, **kwargs)  # type: ignore[arg-type]
        parameters.update({m: dict(kwargs) for m in group if m in ("dynunc", "dual")})
    return parameters


def make_manifests(
    lake: cld_lake.Lake, methods: Sequence[str], fractions: Sequence[float], seeds: int, out: Path
) -> dict[tuple[str, float, int], cld_lake.Manifest]:
    """(method, fraction, seed) -> manifest: each method's top-k (the same for every seed),
    a new random draw per seed."""
    out.mkdir(parents=True, exist_ok=True)
    manifests: dict[tuple[str, float, int], cld_lake.Manifest] = {}
    for f in fractions:
        for method in methods:
            m = cld_lake.select(lake, method, fraction=f, out=out / f"{method}_{f:g}.parquet")
            manifests.update({(method, f, s): m for s in range(seeds)})
        for s in range(seeds):
            path = out / f"{RANDOM}_{f:g}_seed{s}.parquet"
            manifests[(RANDOM, f, s)] = cld_lake.select(
                lake, random=True, seed=s, fraction=f, out=path
            )
    return manifests


def compare_on_lake(
    lake: cld_lake.Lake,
    data: DataBundle,
    *,
    methods: Sequence[str],
    fractions: Sequence[float],
    seeds: int,
    epochs: int,
    manifests_dir: Path,
    device: torch.device,
    progress: bool = True,
    full: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``methods`` in one pass, select, train; returns runs, accuracy rows, detection.

    The lake must come from ``data`` (train_proxy's sample ids index its training set).
    """
    t0 = time.perf_counter()
    train = lake.split("train")
    with progress_bar(progress) as bar:
        task = bar.task("scoring (rows)", train.num_samples)
        parameters = score_methods(lake, methods, progress=lambda n: bar.advance(task, n))
    timings = {"scoring": time.perf_counter() - t0}
    t0 = time.perf_counter()
    manifests = make_manifests(lake, methods, fractions, seeds, manifests_dir)
    timings["manifests"] = time.perf_counter() - t0
    has_noisy = "noisy" in train.samples_table.column_names
    flags = (
        np.asarray(train.samples_table.column("noisy"), dtype=bool)
        if has_noisy
        else np.zeros(train.num_samples, bool)
    )
    has_cld = "cld" in stored_scores(lake)
    train_set, pool = training_pool(data, lake)
    recipe = subset_recipe(epochs)
    jobs = [(m, f, s) for f in fractions for m in (*methods, RANDOM) for s in range(seeds)]
    jobs += [(FULL, 1.0, s) for s in range(seeds)] if full else []
    say(f"training a fresh 1-D CNN on each coreset: {len(jobs)} runs x {epochs} epochs")
    t0 = time.perf_counter()
    runs: list[Run] = []
    with progress_bar(progress) as bar:
        task = bar.task("coreset training (epochs)", len(jobs) * epochs)
        for method, f, seed in jobs:
            bar.info(task, f"{method} {f:g} seed {seed}")
            if method == FULL:
                chosen, rows = Subset(train_set, pool.tolist()), np.arange(train.num_samples)
                first = manifests[(methods[0], fractions[0], 0)]
                mean_cld = (
                    diagnostics.selection_alignment(lake, first)["pool_mean"] if has_cld else None
                )
            else:
                m = manifests[(method, f, seed)]
                chosen, rows = subset(train_set, m), train.rows_of(m.sample_ids)
                mean_cld = diagnostics.selection_alignment(lake, m)["mean"] if has_cld else None
            res = train_model(
                data, chosen, recipe, seed=seed, device=device, source=f"{method} {f:g}",
                on_epoch=lambda _e, _a: bar.advance(task, 1),
            )  # fmt: skip
            runs.append(
                Run(method, f, seed, res.num_samples, res.final_test_acc,
                    float(flags[rows].mean()), mean_cld)
            )  # fmt: skip
    timings["coreset training"] = time.perf_counter() - t0
    return {
        "score_parameters": parameters,
        "runs": [asdict(r) for r in runs],
        "accuracy": accuracy_rows(runs),
        "noise_detection": diagnostics.noise_detection(lake, list(methods)) if has_noisy else [],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def accuracy_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (method, fraction), in run order: final test accuracy over the seeds
    (mean, min, max), coreset size, noisy share and mean CLD (means over the seeds)."""
    keys = list(dict.fromkeys((r.method, r.fraction) for r in runs))
    rows = []
    for method, f in keys:
        got = [r for r in runs if r.method == method and r.fraction == f]
        accs = [r.final_test_acc for r in got]
        clds = [r.mean_cld for r in got if r.mean_cld is not None]
        rows.append(
            {
                "method": method,
                "fraction": f,
                "samples": got[0].samples,
                "seeds": len(got),
                "mean": statistics.mean(accs),
                "min": min(accs),
                "max": max(accs),
                "noisy_share": statistics.mean(r.noisy_share for r in got),
                "mean_cld": statistics.mean(clds) if clds else None,
            }
        )
    return rows


def format_accuracy_table(results: dict[str, Any]) -> list[str]:
    """Markdown: one row per method, one column per fraction, ``mean (min-max)``; random and
    full data last."""
    rows = results["accuracy"]
    fractions = list(dict.fromkeys(r["fraction"] for r in rows if r["method"] != FULL))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["fraction"]): r for r in rows}
    full = cell.get((FULL, 1.0))
    head = ["method", *(f"{f:g}" for f in fractions), *(["full data"] if full else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for method in methods:
        if method == FULL:
            continue
        values = [_acc(cell.get((method, f))) for f in fractions]
        lines.append("| " + " | ".join([method, *values, *([_acc(full)] if full else [])]) + " |")
    return lines


def _acc(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f})"


def format_detection_table(results: dict[str, Any]) -> list[str]:
    """Markdown: noisy-label AUROC and precision at the noise rate per method."""
    rows = results["noise_detection"]
    if not rows or not any(r["noisy"] for r in rows):
        return ["(no flipped labels in this lake: noisy-label detection not measured)"]
    lines = [
        "| method | direction | AUROC | precision at the noise rate |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['score']} | {r['direction']} | {_num(r['auroc'])} | "
            f"{_num(r['precision_at_rate'])} |"
        )
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def json_safe(value: Any) -> Any:
    """NaN -> null, so results.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Record (or reuse) a lake, score, select, train; write and return ``OUT/results.json``."""
    started = time.perf_counter()
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    manifests_dir = out / "manifests"
    if manifests_dir.exists():
        shutil.rmtree(manifests_dir)  # the harness's own output
    device = resolve_device(cfg.device)
    data = load_dataset("mnist1d", out / "data", num_samples=cfg.num_samples)
    proxy_seconds = 0.0
    if cfg.lake is None:
        lake_path = out / "mnist1d.lake"
        for stale in (lake_path, out / "mnist1d.models"):
            if stale.exists():
                shutil.rmtree(stale)
        t0 = time.perf_counter()
        print(f"proxy: {cfg.proxy_epochs} epochs, {cfg.noise:.0%} symmetric noise", flush=True)
        train_proxy(
            ProxyConfig(
                dataset="mnist1d", lake=lake_path, root=out / "data",
                num_samples=cfg.num_samples, noise=cfg.noise, val_fraction=cfg.val_fraction,
                epochs=cfg.proxy_epochs, milestones=(max(1, int(cfg.proxy_epochs * 2 / 3)),),
                device=cfg.device, progress=cfg.progress,
            )
        )  # fmt: skip
        proxy_seconds = time.perf_counter() - t0
    else:
        lake_path = cfg.lake
    lake = cld_lake.open_lake(lake_path)
    results = compare_on_lake(
        lake, data, methods=cfg.methods, fractions=cfg.fractions, seeds=cfg.seeds,
        epochs=cfg.epochs, manifests_dir=manifests_dir, device=device, progress=cfg.progress,
    )  # fmt: skip
    train = lake.split("train")
    results = {
        "dataset": "mnist1d",
        "lake": str(Path(lake_path).resolve()),
        "num_samples": cfg.num_samples,
        "train_pool": train.num_samples,
        "noise": cfg.noise,
        "noisy_in_train": _noisy_count(train),
        "methods": list(cfg.methods),
        "fractions": list(cfg.fractions),
        "seeds": cfg.seeds,
        "epochs": cfg.epochs,
        "proxy_epochs": cfg.proxy_epochs if cfg.lake is None else None,
        "selection": {m: "topk, highest scores kept (see the docstring)" for m in cfg.methods},
        **results,
    }
    results["timings_s"]["proxy training + recording"] = round(proxy_seconds, 1)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    results = json_safe(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _noisy_count(train: cld_lake.Split) -> int:
    table = train.samples_table
    return int(np.asarray(table.column("noisy")).sum()) if "noisy" in table.column_names else 0


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(
        CompareConfig, prog="python -m pipelines.compare", description=__doc__.split("\n\n")[0]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CompareConfig, build_parser(), argv)
    results = run_compare(cfg)
    print()
    print(
        f"Final test accuracy, mean (min-max) over {cfg.seeds} seeds, {cfg.epochs} epochs per "
        f"coreset, {results['noise']:.0%} noisy labels ({results['train_pool']} train samples):"
    )
    print("\n".join(format_accuracy_table(results)))
    print()
    print("Noisy-label detection (every score oriented by its direction):")
    print("\n".join(format_detection_table(results)))
    print()
    print(f"wall time {results['wall_seconds']} s {results['timings_s']}")
    print(f"results: {(Path(cfg.out) / 'results.json').resolve()}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="compare")
