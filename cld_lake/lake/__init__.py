"""The trajectory lake: chunked Zarr v3 arrays plus Parquet tables, on the local disk or an
object store.

The public face of the package: what users and the other stages of cld_lake (score, sql,
select, report, the recorder) use of the lake. Its modules ``store`` (reading), ``writer``,
``importer``, ``scores`` (the scores table) and ``check`` (info, verify) are public too; the
underscore modules are the lake's own.
"""

from cld_lake.lake._format import (
    CHANNEL_DTYPES,
    CHANNELS,
    CHECKPOINTS_FILE,
    DEFAULT_RUN,
    ROOT_FILE,
    SAMPLES_FILE,
    SCORES_FILE,
)
from cld_lake.lake._validate import (
    MAX_NAME_LENGTH,
    check_run_name,
    check_score_name,
    check_split_name,
)
from cld_lake.lake.importer import ImportResult, import_file
from cld_lake.lake.maintenance import compact
from cld_lake.lake.scores import (
    iter_scores,
    read_scores,
    scores_path,
    store_score,
    stored_scores,
)
from cld_lake.lake.store import Block, Lake, Split, open_lake, parse_window
from cld_lake.lake.writer import CheckpointBuffer, SampleBlocks, SplitWriter

__all__ = [
    "CHANNELS",
    "CHANNEL_DTYPES",
    "CHECKPOINTS_FILE",
    "DEFAULT_RUN",
    "MAX_NAME_LENGTH",
    "ROOT_FILE",
    "SAMPLES_FILE",
    "SCORES_FILE",
    "Block",
    "CheckpointBuffer",
    "ImportResult",
    "Lake",
    "SampleBlocks",
    "Split",
    "SplitWriter",
    "check_run_name",
    "check_score_name",
    "check_split_name",
    "compact",
    "import_file",
    "iter_scores",
    "open_lake",
    "parse_window",
    "read_scores",
    "scores_path",
    "store_score",
    "stored_scores",
]
