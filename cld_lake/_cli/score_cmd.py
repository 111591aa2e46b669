"""The score command: a score (CLD by default, or any registered method; several in one pass)
for every training sample, stored as columns of the scores table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from cld_lake._cli._common import LAKE
from cld_lake._types import SPLIT_REFERENCE, Engine, Fallback, choices
from cld_lake.errors import BadInputError
from cld_lake.score import ENGINES, METHODS, REFERENCE_FORMS, reference_problem

if TYPE_CHECKING:
    from rich.progress import Progress

    from cld_lake.lake import Lake
    from cld_lake.score import ScoreResult
    from cld_lake.storage import StorePath

# Show a progress bar on a terminal only for runs big enough to take a moment.
PROGRESS_MIN_VALUES = 20_000_000


class ReferenceType(click.ParamType):
    """CLD's ``--reference``: ``group`` (alias ``class``), ``global`` or ``split:NAME``."""

    name = "reference"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "{" + ",".join(REFERENCE_FORMS) + "}"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        problem = reference_problem(value)
        if problem is not None:
            self.fail(f"{value!r}: {problem}", param, ctx)
        return str(value)


class MethodChoice(click.Choice):
    """One method of :data:`METHODS`, or several separated by commas (``aum,forgetting``)."""

    name = "method"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "METHOD[,METHOD...]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        one = super().convert  # zero-argument super() does not work inside a comprehension
        return ",".join(one(part.strip(), param, ctx) for part in str(value).split(","))


@click.command("score")
@click.argument("lake", type=LAKE)
@click.option(
    "--method",
    type=MethodChoice(METHODS),
    default="cld",
    show_default=True,
    help="Scoring method, or several separated by commas (computed in one pass, each stored "
    f"as its own column). Choices: {', '.join(METHODS)}.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="numpy",
    show_default=True,
    help="How rows stream through the formula (same scores from each; methods other than "
    "cld: numpy or dask).",
)
@click.option(
    "--checkpoints",
    "window",
    metavar="START:STOP[:STEP]",
    help="Window/stride over the positions of the checkpoints (common to train and val for "
    "cld, of train for the others), e.g. 0:45 or ::2 (default: all).",
)
@click.option(
    "--name",
    help="Column name in the scores table (default: the method name); with several methods, "
    "one name per method separated by commas.",
)
@click.option(
    "--fallback",
    type=click.Choice(choices(Fallback)),
    help="cld: for classes without validation samples, use the global validation trajectory "
    "(rows are flagged) instead of failing.",
)
@click.option(
    "--reference",
    type=ReferenceType(),
    help="cld: what each sample's loss differences are correlated with: the mean loss of its "
    "group over the reference split (group, the default; class is an alias), the mean over "
    "every sample of the reference split (global), or the mean over every sample of split "
    "NAME (split:NAME, e.g. split:target, a target task's held-out set).",
)
@click.option(
    "--reference-split",
    metavar="NAME",
    help="cld: the split whose losses form a group or global reference (default: val); with "
    "--reference split:NAME leave it out.",
)
@click.option(
    "--early",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    help="early_loss, el2n, dual: the early window, as a fraction of the selected checkpoints "
    "(default 0.1; dual 0.15).",
)
@click.option(
    "--window-length",
    type=click.IntRange(min=2),
    help="dynunc, dual: length J of the sliding windows, in checkpoints (default 10, or the "
    "checkpoints the method uses when fewer, at least 3).",
)
@click.option(
    "--block-rows", type=click.IntRange(min=1), help="Rows per block read (default: one chunk)."
)
@click.option(
    "--run",
    "runs",
    metavar="NAME",
    multiple=True,
    help="The proxy run to score (needed when the lake holds several); repeat it (--run A "
    "--run B) to store the mean of the runs' scores (undefined where any run's is).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a stored score of the same name (without it a name the scores table holds "
    "is refused; or store under a new --name).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="--engine dask: the address of a running dask scheduler (e.g. tcp://10.0.0.5:8786, "
    "what `dask scheduler` prints); its workers open LAKE themselves, so it must be a path or "
    "URL they reach. Default: a LocalCluster on this machine.",
)
def score_cmd(
    lake: StorePath,
    method: str,
    engine: Engine,
    window: str | None,
    name: str | None,
    fallback: Fallback | None,
    reference: str | None,
    reference_split: str | None,
    early: float | None,
    window_length: int | None,
    block_rows: int | None,
    runs: tuple[str, ...],
    force: bool,
    scheduler: str | None,
) -> None:
    """Score every training sample of LAKE and store the column NAME in the lake's scores
    table (a name it holds is replaced only with --force)."""
    from cld_lake.lake import open_lake
    from cld_lake.lake.scores import scores_path
    from cld_lake.score import compute_scores

    engine_options = _engine_options(engine, scheduler)
    lk = open_lake(lake)
    with _progress(lk, runs) as progress:
        results = compute_scores(
            lk,
            method,
            engine=engine,
            checkpoints=window,
            names=name,
            fallback=fallback,
            block_rows=block_rows,
            progress=progress,
            collect_ids=False,
            keep_scores=False,
            early=early,
            window_length=window_length,
            reference=reference,
            reference_split=reference_split,
            runs=runs,
            engine_options=engine_options,
            force=force,
        )
    table = scores_path(lk)
    for result in results.values():
        click.echo(_summary(result, engine, table))


def _engine_options(engine: Engine, scheduler: str | None) -> dict[str, str]:
    """``--scheduler`` for the dask engine (the address checked before anything runs)."""
    if scheduler is None:
        return {}
    if engine != "dask":
        raise BadInputError(
            f"--scheduler applies to --engine dask (got --engine {engine}); add --engine dask "
            "to score on that cluster, or leave --scheduler out"
        )
    from cld_lake._dask import check_scheduler_address

    return {"scheduler": check_scheduler_address(scheduler)}


def _summary(result: ScoreResult, engine: str, table: StorePath | None) -> str:
    """One line per stored column (for cld alone, the line it always printed)."""
    p = result.provenance
    where = f"stored as column {result.name!r} of {table}"
    if "runs" in p:
        return (
            f"scored {p['train_samples']:,} samples by {p['method']} as the mean over runs "
            f"{', '.join(p['runs'])} with {engine} in {p['seconds']:.2f} s: nan={p['nan']}; {where}"
        )
    if p["method"] == "cld":
        split = p["parameters"]["reference_split"]
        return (
            f"scored {p['train_samples']:,} samples over checkpoints {p['checkpoints']} with {engine} "
            f"in {p['seconds']:.2f} s, reference {_reference_text(p['parameters'])}: nan={p['nan']} "
            f"degenerate={p['degenerate']} fallback={p['fallback']} "
            f"{split}_left_out={p['reference_left_out']}; {where}"
        )
    params = "".join(f" {k}={v}" for k, v in p["parameters"].items())
    return (
        f"scored {p['train_samples']:,} samples by {p['method']} over checkpoints "
        f"{p['used_checkpoints']} with {engine} in {p['seconds']:.2f} s:{params} nan={p['nan']}; "
        f"{where}"
    )


def _reference_text(parameters: dict) -> str:
    """``group of val``, ``global of test``, ``split:target``: a CLD score's reference."""
    reference = str(parameters["reference"])
    if reference.startswith(SPLIT_REFERENCE):
        return reference
    return f"{reference} of {parameters['reference_split']}"


class _progress:
    """A rich progress bar on stderr when it is a terminal and the run is not tiny."""

    def __init__(self, lake: Lake, runs: tuple[str, ...] = ()) -> None:
        self.total = 0
        self.bar: Progress | None = None
        if not sys.stderr.isatty():
            return
        for run in runs or lake.runs()[:1]:  # (a wrong run name is the scorer's to report)
            if not lake.has_split("train", run):
                continue
            train = lake.split("train", run)
            if train.num_samples * train.num_checkpoints >= PROGRESS_MIN_VALUES:
                self.total += train.num_samples

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.total:
            return None
        from rich.console import Console
        from rich.progress import Progress

        bar = self.bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("scoring", total=self.total)
        return lambda rows: bar.advance(task, rows)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


COMMANDS = [score_cmd]
