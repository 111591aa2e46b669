"""Lake commands: import, info, verify, compact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cld_lake._cli._common import LAKE, echo_json
from cld_lake.lake import import_file

if TYPE_CHECKING:
    from cld_lake.lake.store import Lake

RUN_HELP = "letters, digits, _ - . (e.g. seed1)"
SPLIT_HELP = (
    "train, val, test or any other split name (e.g. target, heldout_code): letters, digits, "
    "_ - . (not first), at most 64 characters; train is the split scores rank"
)


@click.command("import")
@click.argument("lake", type=LAKE)
@click.option("--split", metavar="NAME", required=True, help=f"Split to import into: {SPLIT_HELP}.")
@click.option(
    "--loss",
    "loss",
    required=True,
    type=click.Path(path_type=Path),
    help="N x T .npy of losses, or a .parquet: long (sample_id, checkpoint, loss[, correct, margin]) or wide (one row per sample, as `cld-lake export` writes).",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="1-D .npy of N labels, class indices 0..C-1 (or, with a .parquet --loss, a .parquet "
    "with sample_id, label).",
)
@click.option(
    "--groups",
    type=click.Path(path_type=Path),
    help="Instead of --labels: a 1-D .npy of N group names (strings) or integers, or a "
    ".parquet with a group column (and sample_id to join on; without it, one row per --loss "
    "row). Names are stored as dense ids: new names sorted, after the lake's existing ones; "
    "a name keeps its id. A long .parquet --loss may carry a group column instead.",
)
@click.option(
    "--sample-ids",
    type=click.Path(path_type=Path),
    help="1-D .npy of N unique sample ids (default 0..N-1).",
)
@click.option(
    "--correct", type=click.Path(path_type=Path), help="N x T .npy of correct flags (bool)."
)
@click.option("--margin", type=click.Path(path_type=Path), help="N x T .npy of logit margins.")
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    help="Number of classes, at most 1,048,576; labels are 0..C-1 (default: max label + 1 of the first import).",
)
@click.option(
    "--checkpoint-ids",
    type=click.Path(path_type=Path),
    help="1-D .npy of T checkpoint ids (default 0..T-1).",
)
@click.option(
    "--loss-dtype",
    type=click.Choice(["float32", "float16", "float64"]),
    default=None,
    help="Stored dtype of the loss channel (default float32).",
)
@click.option(
    "--run",
    metavar="NAME",
    help=f"The proxy run (seed, architecture) these trajectories belong to: {RUN_HELP} "
    "(default: the lake's default run). Several runs are scored together with "
    "`cld-lake score --run A --run B`.",
)
def import_cmd(
    lake,
    split,
    loss,
    labels,
    groups,
    sample_ids,
    correct,
    margin,
    num_classes,
    checkpoint_ids,
    loss_dtype,
    run,
):
    """Import trajectories into LAKE (created if missing). Streams: a file larger than RAM is fine."""
    result = import_file(
        lake,
        split,
        loss=loss,
        labels=labels,
        groups=groups,
        sample_ids=sample_ids,
        correct=correct,
        margin=margin,
        num_classes=num_classes,
        checkpoint_ids=checkpoint_ids,
        dtypes={"loss": loss_dtype} if loss_dtype else None,
        run=run,
    )
    where = split if run is None else f"{split}, run {run}"
    click.echo(
        f"imported {result.num_samples} samples x {len(result.checkpoints)} checkpoints into {lake} [{where}] "
        f"channels={','.join(result.channels)} nonfinite_losses={result.nonfinite}"
    )


@click.command("info")
@click.argument("lake", type=LAKE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(lake, as_json):
    """Splits, samples, classes, checkpoints, channels, bytes on disk, scores."""
    from cld_lake.lake import open_lake
    from cld_lake.lake.check import lake_info

    opened = open_lake(lake)
    info = lake_info(opened)
    shares = _cld_shares(opened, info["scores"])
    if shares is not None:  # NaN (no scored sample in a class) is null in JSON
        nulled = [r | {"share": None if r["share"] != r["share"] else r["share"]} for r in shares]
        info["diagnostics"] = {"cld_nonpositive_share": nulled}
    detection = _noise_detection(opened, info)
    if detection is not None:
        rows = [{k: None if v != v else v for k, v in r.items()} for r in detection]
        info.setdefault("diagnostics", {})["noise_detection"] = rows
    if as_json:
        echo_json(info)
        return
    click.echo(f"lake {info['path']}  id {info['lake_id']}  format v{info['format_version']}")
    if "groups" in info:
        click.echo(f"groups: {_names_line(info['groups'])}   on disk: {_on_disk(info)}")
    else:
        click.echo(f"classes: {info['num_classes']}   on disk: {_on_disk(info)}")
    runs = info.get("runs", {})
    if runs:  # a lake with named runs: the default run's splits, then each run's
        names = (["default"] if info["splits"] else []) + list(runs)
        click.echo(f"runs: {', '.join(names)}")
        if info["splits"]:
            click.echo("run default:")
    _echo_splits(info["splits"])
    for run, of_run in runs.items():
        click.echo(f"run {run}:")
        _echo_splits(of_run["splits"])
    if not info["splits"] and not runs:
        click.echo("  (no splits yet)")
    for name, prov in info["scores"].items():
        settings = info["score_settings"][name]
        shown = {k: v for k, v in settings.items() if v is not None}
        shown |= {
            k: v
            for k, v in prov.items()
            if k in ("engine", "checkpoints", "nan", "degenerate", "fallback", "run")
        }
        detail = ", ".join(f"{k}={v}" for k, v in shown.items())
        if "runs" in prov:
            detail += f", mean of runs {','.join(prov['runs'])}"
        stale = info["stale_scores"].get(name)
        click.echo(f"  score {name}: {detail}" + (f"  STALE: {stale}" if stale else ""))
    if shares is not None:
        click.echo(_share_line(shares, opened.group_names()))
    if detection:
        cells = ", ".join(
            f"{r['score']} {r['auroc']:.3f}/{r['precision_at_rate']:.3f}" for r in detection
        )
        click.echo(f"  noisy-label detection (AUROC/precision at the noise rate): {cells}")
        bound = max((r["auroc_bound"] for r in detection if r.get("streamed")), default=None)
        if bound is not None:  # past diagnostics.EXACT_ROWS: a histogram's AUROC
            click.echo(f"    (streamed: each AUROC within {bound:.1e} of the exact value)")


def _noise_detection(lake: Lake, info: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Each stored score as a finder of the flipped labels (cld_lake.diagnostics), where the
    train samples carry a ``noisy`` flag; None otherwise."""
    train = info["splits"].get("train", {})
    if not info["scores"] or "noisy" not in train.get("metadata_columns", []):
        return None
    from cld_lake.diagnostics import noise_detection

    return noise_detection(lake)


def _cld_shares(lake: Lake, scores: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per-class share of ``cld <= 0`` (cld_lake.diagnostics), None without a ``cld`` score."""
    if "cld" not in scores:
        return None
    from cld_lake.diagnostics import class_nonpositive_share  # streamed: bounded memory

    return class_nonpositive_share(lake, "cld")


def _share_line(rows: list[dict[str, Any]], names: tuple[str, ...] | None = None) -> str:
    """One line: the overall share of ``cld <= 0`` and the 3 classes (groups, by name when
    the lake names them) with the highest share."""
    scored = sum(r["samples"] - r["null"] for r in rows)
    nonpos = sum(r["nonpositive"] for r in rows)
    overall = f"{nonpos / scored:.1%}" if scored else "n/a"
    finite = [r for r in rows if r["share"] == r["share"]]  # NaN: no scored sample
    top = sorted(finite, key=lambda r: (-r["share"], r["label"]))[:3]
    key = (lambda label: names[label]) if names else (lambda label: label)
    classes = ", ".join(f"{key(r['label'])}: {r['share']:.1%}" for r in top) or "none scored"
    kind = "groups" if names else "classes"
    return f"  cld <= 0: {overall} of {scored:,} scored samples; highest {kind} {classes}"


#: names ``info`` prints of a lake's groups, and groups of a split (the largest)
NAMES_SHOWN = 8
GROUPS_SHOWN = 5


def _names_line(groups: dict[str, Any]) -> str:
    """``1,000 named (ids 0..999): books, code, ... (992 more)``: the lake's group names."""
    count, names = groups["count"], groups["names"]
    shown = ", ".join(names[:NAMES_SHOWN])
    more = count - min(count, NAMES_SHOWN)
    return f"{count:,} named (ids 0..{count - 1}): {shown}" + (
        f", ... ({more:,} more)" if more else ""
    )


def _groups_line(s: dict[str, Any]) -> str:
    """A split's largest groups with their samples."""
    shown = s["groups"][:GROUPS_SHOWN]
    more = len(s["groups"]) - len(shown) + s["groups_not_shown"]
    cells = ", ".join(f"{g['name']} {g['samples']:,}" for g in shown)
    return f"{cells}, ... ({more:,} more)" if more else cells


def _echo_splits(splits: dict) -> None:
    width = max([6, *(len(name) for name in splits)])
    pad = " " * (width + 3)
    for name, s in splits.items():
        kind = "groups" if "groups" in s else "classes"
        click.echo(
            f"  {name:<{width}} {s['samples']:>10,} samples  {s['classes_present']:>5} {kind}  "
            f"{s['checkpoints']:>4} checkpoints [{s['checkpoint_ids']}]  channels {','.join(f'{k}:{v}' for k, v in s['channels'].items())}"
        )
        click.echo(
            f"{pad}{s['segments']} segment(s), {_on_disk(s)}, {s['bytes_per_value']} B/value, "
            f"NaN/inf losses: {s['nonfinite_losses']}"
            + (f", metadata: {', '.join(s['metadata_columns'])}" if s["metadata_columns"] else "")
        )
        if "groups" in s:
            click.echo(f"{pad}largest groups: {_groups_line(s)}")


def _on_disk(info: dict[str, Any]) -> str:
    """The live bytes, then what is retired (kept for the grace period) or debris, if any."""
    from cld_lake.lake.check import human_bytes

    text = human_bytes(info["bytes_on_disk"])
    if info.get("bytes_retired"):
        text += f" (+ {human_bytes(info['bytes_retired'])} retired, deleted after the grace period)"
    if info.get("bytes_debris"):
        text += f" (+ {human_bytes(info['bytes_debris'])} left by failed writes)"
    return text


@click.command("verify")
@click.argument("lake", type=LAKE)
@click.option(
    "--quick", is_flag=True, help="Check tables and shapes only; do not read every chunk."
)
def verify_cmd(lake, quick):
    """Check integrity: exit 0 only if every committed byte is readable and consistent."""
    from cld_lake.lake import open_lake
    from cld_lake.lake.check import verify_lake

    report = verify_lake(open_lake(lake), read_data=not quick)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if not report.ok:
        for e in report.errors:
            click.echo(f"cld-lake: error: {e}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"ok: {lake} verified ({report.checked_values:,} values read back with checksums)")


@click.command("compact")
@click.argument("lake", type=LAKE)
@click.option(
    "--split",
    "splits",
    metavar="NAME",
    multiple=True,
    help="Split(s) to compact (default: all).",
)
@click.option(
    "--run",
    "runs",
    metavar="NAME",
    multiple=True,
    help="Run(s) whose splits to compact (default: every run).",
)
@click.option(
    "--prune", is_flag=True, help="Delete replaced segments now instead of after the grace period."
)
def compact_cmd(lake, splits, runs, prune):
    """Merge each split's segments into one, for the fastest row-block scans."""
    from cld_lake.lake import compact

    for label, merges in compact(lake, splits=splits, runs=runs, prune=prune).items():
        click.echo(f"{label}: {merges} merge(s)")


@click.command("env")
def env_cmd():
    """Versions and machine facts to paste into a bug report."""
    import os
    import platform
    from importlib import metadata

    from cld_lake._version import __version__

    click.echo(f"cld-lake {__version__}")
    click.echo(
        f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs"
    )
    for package in (
        "numpy",
        "zarr",
        "pyarrow",
        "duckdb",
        "polars",
        "torch",
        "torchvision",
        "dask",
        "distributed",
    ):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        click.echo(f"{package} {version}")
    from cld_lake.score import kernel_name

    fused = kernel_name() == "fused"
    click.echo(f"CLD kernel: {'compiled C (fused)' if fused else 'NumPy (no compiled kernel)'}")


COMMANDS = [import_cmd, info_cmd, verify_cmd, compact_cmd, env_cmd]
