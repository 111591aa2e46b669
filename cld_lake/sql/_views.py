"""The lake's SQL views, registered on a DuckDB connection.

Every table behind a view is a Python object DuckDB reads through Arrow (a Parquet file
streamed one row group at a time, or the ``losses`` scan source), never a path DuckDB opens itself: so the
views keep working on a connection whose file access is locked down, and no SQL statement can
be pointed at the lake's files.
"""

from __future__ import annotations

from cld_lake._duckdb import Connection, register, sql_str
from cld_lake._meta import read_meta
from cld_lake.lake import CHECKPOINTS_FILE, DEFAULT_RUN, SAMPLES_FILE
from cld_lake.lake.check import scan_samples
from cld_lake.lake.scores import check_scores_file, scores_path
from cld_lake.lake.store import Lake, Split
from cld_lake.sql._losses import LossSource, ScanStats
from cld_lake.sql._tables import ParquetSource

_IDS = "REPLACE (sample_id::BIGINT AS sample_id, label::BIGINT AS label)"
_EMPTY = {
    "samples": "SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label WHERE false",
    "checkpoints": "SELECT NULL::VARCHAR split, NULL::BIGINT checkpoint WHERE false",
    "losses": "SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label, "
    "NULL::BIGINT checkpoint, NULL::FLOAT loss WHERE false",
    "scores": "SELECT NULL::BIGINT sample_id, NULL::BIGINT label WHERE false",
}
_VAL_REFERENCE = (
    "WITH v AS (SELECT sample_id, label, checkpoint, loss FROM losses WHERE split = 'val'), "
    "bad AS (SELECT DISTINCT sample_id FROM v WHERE NOT isfinite(loss)) "
    "SELECT label, checkpoint, avg(loss::DOUBLE) AS mean_loss, count(*) AS n_samples FROM v "
    "WHERE sample_id NOT IN (SELECT sample_id FROM bad) "
    "GROUP BY label, checkpoint ORDER BY label, checkpoint"
)
# a lake with named runs: one reference per run (each proxy run validates on its own losses)
_VAL_REFERENCE_RUNS = (
    "WITH v AS (SELECT run, sample_id, label, checkpoint, loss FROM losses WHERE split = 'val'), "
    "bad AS (SELECT DISTINCT run, sample_id FROM v WHERE NOT isfinite(loss)) "
    "SELECT run, label, checkpoint, avg(loss::DOUBLE) AS mean_loss, count(*) AS n_samples "
    "FROM v ANTI JOIN bad USING (run, sample_id) "
    "GROUP BY run, label, checkpoint ORDER BY run, label, checkpoint"
)

# per class, the share of the stored ``cld`` with a score <= 0 (as
# cld_lake.diagnostics.class_nonpositive_share; NaN counts as null, an all-null class has a
# NULL share)
_CLASS_DIAGNOSTICS = (
    "WITH s AS (SELECT label{name}, CASE WHEN isnan(cld) THEN NULL ELSE cld END AS v "
    'FROM scores) SELECT label{name}, count(*) AS samples, count(*) - count(v) AS "null", '
    "count(*) FILTER (WHERE v <= 0) AS nonpositive, avg((v <= 0)::INT)::DOUBLE AS share "
    "FROM s GROUP BY label{name} ORDER BY label"
)


def _ident(name: str) -> str:
    """A SQL identifier (metadata columns may be named anything)."""
    return '"' + name.replace('"', '""') + '"'


def _train_split(splits: list[Split], recorded: str | None) -> int | None:
    """Which split's metadata the ``scores`` rows carry: the training split whose sample ids
    the scores table records (its fingerprint), the default run's first; without a match the
    default run's training split, else the first run's. None without a training split."""
    trains = [i for i, sp in enumerate(splits) if sp.name == "train"]
    trains.sort(key=lambda i: splits[i].run != DEFAULT_RUN)
    matching = [i for i in trains if recorded is not None and splits[i].ids_digest == recorded]
    return (matching or trains or [None])[0]


def _scores_body(table: ParquetSource, splits: list[Split]) -> str:
    """The ``scores`` view: the scores table's rows, in its order, with the training samples'
    metadata columns (those not named like a score column). When the table records the
    sample ids of a training split (the fingerprint scoring writes) the rows are the same
    rows in the same order: a positional join, streamed; otherwise a join on ``sample_id``
    that keeps the table's order."""
    names = table.schema.names
    rows = read_meta(table.schema).get("rows") or {}
    recorded = rows.get("ids_sha1") if isinstance(rows, dict) else None
    i = _train_split(splits, recorded)
    if i is None:
        return f"SELECT * {_IDS} FROM _scores"
    train = ParquetSource(splits[i].root / SAMPLES_FILE)
    meta = [c for c in train.schema.names if c not in ("sample_id", "label", *names)]
    if not meta:
        return f"SELECT * {_IDS} FROM _scores"
    picked = ", ".join(f"m.{_ident(c)}" for c in meta)
    if recorded is not None and recorded == splits[i].ids_digest and table.rows() == train.rows():
        joined = f"SELECT s.*, {picked} FROM _scores s POSITIONAL JOIN _samples_{i} m"
        return f"SELECT * {_IDS} FROM ({joined})"
    return (
        f"SELECT * EXCLUDE (_row) {_IDS} FROM (SELECT s.*, {picked} FROM "
        "(SELECT *, row_number() OVER () AS _row FROM _scores) s "
        f"LEFT JOIN _samples_{i} m ON s.sample_id = m.sample_id) ORDER BY _row"
    )


def _view(con: Connection, name: str, parts: list[str], union: str) -> None:
    body = f" {union} ".join(parts) if parts else _EMPTY[name]
    con.execute(f"CREATE VIEW {name} AS {body}")


def create_views(
    con: Connection, lake: Lake, stats: ScanStats | None = None, block_rows: int | None = None
) -> list[LossSource]:
    """Create ``samples``, ``train_samples``, ``checkpoints``, ``losses``, ``scores`` and
    ``val_reference``, and ``class_diagnostics`` when a ``cld`` score is stored.

    ``samples``, ``checkpoints`` and ``losses`` hold every split of every run; ``train_samples``
    is ``samples`` of the training split; ``scores`` has one row per training sample (its
    stored scores, then the training samples' metadata columns). A lake of named groups adds
    ``group_name`` after ``label`` in ``samples`` and ``scores``. A lake whose splits all
    belong to the default run (recorded without runs) has the views it always had; one with
    named runs adds a ``run`` column after ``split`` (and to ``val_reference``).
    Returns the ``losses`` sources (one per split), whose ``failure`` tells why a scan failed.
    """
    samples, checkpoints, losses, sources = [], [], [], []
    names = lake.group_names()  # None: plain integer groups (classes), no group_name column
    runs = lake.runs()
    named_runs = runs != [DEFAULT_RUN]
    splits = [lake.split(name, run) for run in runs for name in lake.splits(run)]
    for i, split in enumerate(splits):
        label = f"{sql_str(split.name)} AS split"
        if named_runs:
            label += f", {sql_str(split.run)} AS run"
        # DuckDB scans the file itself: check its checksums first, one row group at a time
        scan_samples(split, fingerprint=False)
        register(con, f"_samples_{i}", ParquetSource(split.root / SAMPLES_FILE, names))
        register(con, f"_checkpoints_{i}", ParquetSource(split.root / CHECKPOINTS_FILE))
        source = LossSource(split, block_rows=block_rows, stats=stats)
        register(con, f"_losses_{i}", source)
        sources.append(source)
        samples.append(f"SELECT * {_IDS} FROM (SELECT {label}, * FROM _samples_{i})")
        checkpoints.append(
            f"SELECT {label}, checkpoint::BIGINT AS checkpoint, epoch, step, wall_time, "
            f"committed_at, nonfinite, true AS complete FROM _checkpoints_{i}"
        )
        losses.append(f"SELECT {label}, * FROM _losses_{i}")
    _view(con, "samples", samples, "UNION ALL BY NAME")
    _view(con, "checkpoints", checkpoints, "UNION ALL")
    _view(con, "losses", losses, "UNION ALL BY NAME")
    con.execute("CREATE VIEW train_samples AS SELECT * FROM samples WHERE split = 'train'")
    scores = scores_path(lake)  # the current table, as cld_lake.json names it
    has_cld = False
    if scores is not None:
        check_scores_file(lake)  # DuckDB scans the file itself: check its checksums first
        table = ParquetSource(scores, names)
        has_cld = "cld" in table.schema.names
        register(con, "_scores", table)
    _view(con, "scores", [_scores_body(table, splits)] if scores is not None else [], "")
    if has_cld:
        name = "" if names is None else ", group_name"
        con.execute(f"CREATE VIEW class_diagnostics AS {_CLASS_DIAGNOSTICS.format(name=name)}")
    reference = _VAL_REFERENCE_RUNS if named_runs else _VAL_REFERENCE
    con.execute(f"CREATE VIEW val_reference AS {reference}")
    return sources
