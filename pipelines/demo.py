"""The end-to-end demo behind ``make demo`` (embedded default: a local lake, embedded DuckDB).

MNIST-1D with symmetric label noise -> proxy training with recording -> CLD scores -> SQL ->
manifests at several fractions (CLD top-k, CLD lowest-k, random) -> a fresh model trained on
each (several seeds) -> a table of test accuracy per fraction and method, the noisy labels each
coreset holds, and the paths of the lake, manifests and report. Then a short comparison with
other scoring methods (``pipelines.compare``: CLD, random and baselines at 10% and 30%, one
seed) and their noisy-label AUROC.

    python -m pipelines.demo [--out runs/demo] [--fractions 0.1,0.3,0.5] [--seeds 2]

Every number printed is measured in this run; nothing is fixed in advance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.select import MANIFESTS_DIR
from cld_lake.torch import subset
from pipelines._common import progress_bar, recipe_for, resolve_device, run_cli
from pipelines._config import build_parser as build_config_parser
from pipelines._config import option, parse_config
from pipelines.compare import (
    compare_on_lake,
    format_accuracy_table,
    format_detection_table,
    json_safe,
)
from pipelines.datasets import load_dataset
from pipelines.train_proxy import ProxyConfig, train_proxy
from pipelines.train_subset import SubsetResult, train_model, training_pool

METHODS = ("cld_top", "cld_lowest", "random")
METHOD_TITLES = {
    "cld_top": "CLD top-k",
    "cld_lowest": "CLD lowest-k",
    "random": "random",
    "full": "full data",
}


@dataclass
class DemoConfig:
    """The demo's settings; one command-line flag per field (see ``--help``)."""

    out: Path = option(Path("runs/demo"), help="output directory (its lake/manifests are replaced)")
    num_samples: int = option(10000, help="MNIST-1D samples (80%% train pool)")
    noise: float = 0.2
    val_fraction: float = option(0.1, help="per-class held-out validation fraction")
    fractions: tuple[float, ...] = option((0.1, 0.3, 0.5), help="e.g. 0.1,0.3,0.5")
    seeds: int = 2
    proxy_epochs: int = 30
    epochs: int = option(30, help="epochs of each subset training")
    # tiny convolutions: one thread is fastest and immune to oversubscription
    threads: int | None = option(1, help="torch CPU threads (default 1)")
    device: str | None = None
    progress: bool = True
    compare_methods: tuple[str, ...] = option(
        ("cld", "forgetting", "aum"), help="methods of the short comparison (empty: skip it)"
    )
    compare_fractions: tuple[float, ...] = (0.1, 0.3)
    compare_seeds: int = 1


def _noisy_count(lake: cld_lake.Lake, manifest: Path) -> tuple[int, int]:
    """(noisy labels in the coreset, its size): the manifest's rows of the training split."""
    train = lake.split("train")
    rows = train.rows_of(cld_lake.load_manifest(manifest).sample_ids)
    noisy = np.asarray(train.samples_table.column("noisy"), dtype=bool)
    return int(noisy[rows].sum()), len(rows)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every step; return the report (also written to ``OUT/report.json`` and ``.md``)."""
    started = time.perf_counter()
    if cfg.seeds < 1:
        raise BadInputError(f"--seeds {cfg.seeds}: must be at least 1")
    if not cfg.fractions or any(not 0.0 < f < 1.0 for f in cfg.fractions):
        raise BadInputError(
            f"--fractions {cfg.fractions}: each must lie in (0, 1), e.g. 0.1,0.3,0.5"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    # manifests inside the lake (LAKE/manifests/, the one folder cld_lake writes there for you)
    # so the report's coreset section shows them
    lake_path = out / "mnist1d.lake"
    manifests_dir = lake_path / MANIFESTS_DIR
    compare_dir = out / "compare"
    for stale in (
        lake_path,
        out / "mnist1d.models",
        out / "manifests",
        compare_dir,
    ):  # its own outputs
        if stale.exists():
            shutil.rmtree(stale)
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    print(
        f"[1/7] MNIST-1D: {cfg.num_samples} samples generated locally (cache {out / 'data'})",
        flush=True,
    )
    t0 = time.perf_counter()
    data = load_dataset("mnist1d", out / "data", num_samples=cfg.num_samples)
    step("data", t0)

    print(
        f"[2/7] proxy training: 1-D CNN, {cfg.proxy_epochs} epochs, {cfg.noise:.0%} symmetric label noise, "
        f"{cfg.val_fraction:.0%} per-class validation holdout, recording train+val every epoch",
        flush=True,
    )
    t0 = time.perf_counter()
    proxy = train_proxy(
        ProxyConfig(
            dataset="mnist1d",
            lake=lake_path,
            root=out / "data",
            num_samples=cfg.num_samples,
            noise=cfg.noise,
            val_fraction=cfg.val_fraction,
            epochs=cfg.proxy_epochs,
            milestones=(int(cfg.proxy_epochs * 2 / 3),),
            device=cfg.device,
            progress=cfg.progress,
        )
    )
    step("proxy training + recording", t0)
    lake = cld_lake.open_lake(lake_path)
    manifests_dir.mkdir()
    train_split = lake.split("train")
    print(
        f"      proxy test accuracy {proxy.test_accuracy:.3f}; lake holds {train_split.num_samples} train x "
        f"{len(train_split.checkpoint_ids)} checkpoints",
        flush=True,
    )

    print("[3/7] CLD scores (streamed from the lake, stored as scores.cld)", flush=True)
    t0 = time.perf_counter()
    with progress_bar(cfg.progress) as bar:
        task = bar.task("scoring (rows)", train_split.num_samples)
        cld_lake.score(lake, progress=lambda n: bar.advance(task, n))
    step("scoring", t0)

    print(
        "[4/7] SQL: mean CLD of clean vs flipped labels (DuckDB over the lake's views)", flush=True
    )
    from cld_lake.sql import query

    sql = (
        "SELECT s.noisy, count(*) AS samples, round(avg(c.cld), 4) AS mean_cld, "
        "round(median(c.cld), 4) AS median_cld FROM scores AS c "
        "JOIN samples AS s ON s.sample_id = c.sample_id AND s.split = 'train' GROUP BY s.noisy ORDER BY s.noisy"
    )
    sql_rows = query(lake, sql).to_dicts()
    print(f"      {sql}")
    for row in sql_rows:
        print(
            f"      noisy={row['noisy']!s:<5} samples={row['samples']:<6} mean_cld={row['mean_cld']:+.4f} median_cld={row['median_cld']:+.4f}"
        )

    print(f"[5/7] manifests at fractions {', '.join(f'{f:g}' for f in cfg.fractions)}", flush=True)
    t0 = time.perf_counter()
    manifests: dict[tuple[str, float, int], Path] = {}
    for f in cfg.fractions:
        for method in METHODS:
            for seed in range(cfg.seeds) if method == "random" else [None]:
                suffix = f"_seed{seed}" if seed is not None else ""
                path = manifests_dir / f"{method}_{f:g}{suffix}.parquet"
                if method == "random":
                    cld_lake.select(lake, random=True, seed=seed, fraction=f, out=path)
                else:
                    cld_lake.select(
                        lake, "cld", fraction=f, lowest=method == "cld_lowest", out=path
                    )
                for s in range(cfg.seeds) if seed is None else [seed]:
                    manifests[(method, f, s)] = path
    step("manifests", t0)

    recipe = recipe_for("mnist1d", epochs=cfg.epochs, milestones=(int(cfg.epochs * 2 / 3),))
    train_set, pool = training_pool(data, lake)
    runs: list[tuple[str, float, int, Dataset]] = [
        (m, f, s, subset(train_set, manifests[(m, f, s)]))
        for f in cfg.fractions
        for m in METHODS
        for s in range(cfg.seeds)
    ]
    runs += [("full", 1.0, s, Subset(train_set, pool.tolist())) for s in range(cfg.seeds)]
    print(
        f"[6/7] training a fresh 1-D CNN on each subset: {len(runs)} runs x {cfg.epochs} epochs "
        f"({cfg.seeds} seeds; trained on the labels as recorded, noisy ones included)",
        flush=True,
    )
    t0 = time.perf_counter()
    results: list[tuple[str, float, SubsetResult]] = []
    with progress_bar(cfg.progress) as bar:
        task = bar.task("coreset training (epochs)", len(runs) * cfg.epochs)
        for method, f, seed, chosen in runs:
            bar.info(task, f"{METHOD_TITLES[method]} {f:g} seed {seed}")
            res = train_model(
                data, chosen, recipe, seed=seed, device=device, source=f"{method} {f:g}",
                on_epoch=lambda _e, _a: bar.advance(task, 1),
            )  # fmt: skip
            results.append((method, f, res))
    step("coreset training", t0)

    table = _table(lake, cfg, manifests, results)
    comparison = None
    if cfg.compare_methods:
        print(
            f"[7/7] comparison: {', '.join(cfg.compare_methods)} and random at "
            f"{', '.join(f'{f:g}' for f in cfg.compare_fractions)}",
            flush=True,
        )
        t0 = time.perf_counter()
        comparison = compare_on_lake(
            lake, data, methods=cfg.compare_methods, fractions=cfg.compare_fractions,
            seeds=cfg.compare_seeds, epochs=cfg.epochs, manifests_dir=compare_dir / "manifests",
            device=device, progress=cfg.progress, full=False, say=lambda m: print(f"      {m}"),
        )  # fmt: skip
        comparison = json_safe(
            comparison | {"dataset": "mnist1d", "seeds": cfg.compare_seeds, "noise": cfg.noise}
        )
        compare_dir.mkdir(parents=True, exist_ok=True)
        (compare_dir / "results.json").write_text(json.dumps(comparison, indent=2) + "\n")
        step("comparison", t0)
    report = {
        "dataset": "mnist1d",
        "num_samples": cfg.num_samples,
        "train_pool": int(train_split.num_samples),
        "val_holdout": int(lake.split("val").num_samples),
        "test": len(data.test),
        "noise": cfg.noise,
        "noisy_in_train": int(np.asarray(train_split.samples_table.column("noisy")).sum()),
        "proxy": {"epochs": cfg.proxy_epochs, "test_accuracy": proxy.test_accuracy},
        "subset_training": {"epochs": cfg.epochs, "seeds": cfg.seeds, "recipe": asdict(recipe)},
        "sql": {"query": sql, "rows": sql_rows},
        "table": table,
        "comparison": comparison,
        "runs": [asdict(r) | {"method": m, "fraction": f} for m, f, r in results],
        "timings_s": timings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "paths": {
            "lake": str(lake_path.resolve()),
            "manifests": str(manifests_dir.resolve()),
            **({"compare": str(compare_dir.resolve())} if comparison else {}),
            "report_json": str((out / "report.json").resolve()),
            "report_md": str((out / "report.md").resolve()),
            "report_html": str((out / "report.html").resolve()),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(_markdown(report))
    from cld_lake.report import build_report

    build_report(  # the demo replaces its own report
        lake, out / "report.html", force=True, compare=compare_dir if comparison else None
    )
    return report


def _table(
    lake: cld_lake.Lake,
    cfg: DemoConfig,
    manifests: dict[tuple[str, float, int], Path],
    results: list[tuple[str, float, SubsetResult]],
) -> list[dict[str, Any]]:
    rows = []
    keys = [(f, m) for f in cfg.fractions for m in METHODS] + [(1.0, "full")]
    noisy_total = int(np.asarray(lake.split("train").samples_table.column("noisy")).sum())
    for f, method in keys:
        got = [r for m, ff, r in results if m == method and ff == f]
        finals = [r.final_test_acc for r in got]
        bests = [r.best_test_acc for r in got]
        if method == "full":
            noisy, size = noisy_total, lake.split("train").num_samples
        else:  # mean over seeds (CLD manifests are the same for every seed)
            counts = [_noisy_count(lake, manifests[(method, f, s)]) for s in range(cfg.seeds)]
            noisy, size = statistics.mean(c[0] for c in counts), counts[0][1]
        rows.append(
            {
                "fraction": f,
                "method": METHOD_TITLES[method],
                "samples": size,
                "noisy_labels": noisy,
                "noisy_pct": 100.0 * noisy / size,
                "final_test_acc_mean": statistics.mean(finals),
                "final_test_acc_min": min(finals),
                "final_test_acc_max": max(finals),
                "best_test_acc_mean": statistics.mean(bests),
                "seeds": len(got),
            }
        )
    return rows


def _format_table(report: dict[str, Any]) -> list[str]:
    head = (
        f"| {'fraction':>8} | {'method':<12} | {'samples':>7} | {'noisy labels':>14} | "
        f"{'final test acc (mean, min-max)':>30} | {'best-epoch test acc':>19} |"
    )
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in report["table"]:
        noisy = f"{r['noisy_labels']:.0f} ({r['noisy_pct']:.1f}%)"
        acc = f"{r['final_test_acc_mean']:.4f} ({r['final_test_acc_min']:.3f}-{r['final_test_acc_max']:.3f})"
        lines.append(
            f"| {r['fraction']:>8g} | {r['method']:<12} | {r['samples']:>7} | {noisy:>14} | {acc:>30} | "
            f"{r['best_test_acc_mean']:>19.4f} |"
        )
    return lines


def _markdown(report: dict[str, Any]) -> str:
    s = report["subset_training"]
    lines = [
        "# cld_lake demo: CLD coresets on MNIST-1D with label noise",
        "",
        f"- train pool {report['train_pool']} samples ({report['noisy_in_train']} noisy labels, "
        f"{report['noise']:.0%} symmetric noise), validation holdout {report['val_holdout']}, test {report['test']}",
        f"- proxy: 1-D CNN, {report['proxy']['epochs']} epochs, test accuracy {report['proxy']['test_accuracy']:.4f}",
        f"- each subset: a fresh 1-D CNN, {s['epochs']} epochs, mean of {s['seeds']} seeds; "
        "*final* = last epoch, *best-epoch* = the best epoch chosen on the test set (optimistic)",
        "",
        *_format_table(report),
        "",
        f"SQL: `{report['sql']['query']}`",
        "",
        *(
            f"- noisy={r['noisy']}: {r['samples']} samples, mean CLD {r['mean_cld']}, median {r['median_cld']}"
            for r in report["sql"]["rows"]
        ),
        "",
        f"Wall time {report['wall_seconds']} s; steps: {report['timings_s']}",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(
        DemoConfig, prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, build_parser(), argv)
    report = run_demo(cfg)
    print()
    print(
        f"Test accuracy of a fresh model trained on each subset (mean of {cfg.seeds} seeds), "
        f"{report['noise']:.0%} noisy labels in the train pool:"
    )
    for line in _format_table(report):
        print(line)
    if report["comparison"] is not None:
        print()
        print(
            f"Comparison of scoring methods (final test accuracy, {cfg.compare_seeds} seed(s); "
            "each method keeps its highest scores):"
        )
        print("\n".join(format_accuracy_table(report["comparison"])))
        print()
        print("Noisy-label detection (every score oriented by its direction):")
        print("\n".join(format_detection_table(report["comparison"])))
    print()
    print(f"wall time: {report['wall_seconds']} s  ({report['timings_s']})")
    for name, path in report["paths"].items():
        print(f"{name + ':':<13} {path}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="demo")
