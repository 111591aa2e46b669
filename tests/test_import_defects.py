"""Import defects of issue 9 (sections 3 and 4), one test per defect, through the real CLI.

Every refusal is exit 2 with one line on stderr naming the argument or file, a fresh lake path
left absent (no directory, no ``cld_lake.json``, no lock file) and an existing lake
byte-identical. The type rules are the ``.npy`` importer's, applied by every importer.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake.lake import open_lake
from cld_lake.lake._validate import MAX_CLASSES
from tests.conftest import CLI_BIN, CliResult, lake_hash

N, T = 6, 3
LOSS = (np.arange(N * T, dtype=np.float32).reshape(N, T) + 1) / 10
LABELS = np.array([0, 1, 2, 0, 1, 2])
IDS = np.arange(N, dtype=np.int64) + 100


def _npy(folder: Path, name: str, values: object) -> Path:
    path = folder / f"{name}.npy"
    np.save(path, values)
    return path


def _parquet(folder: Path, name: str, columns: dict[str, object] | pa.Table) -> Path:
    path = folder / f"{name}.parquet"
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
    return path


def _long(**override: object) -> dict[str, object]:
    cols: dict[str, object] = {
        "sample_id": np.repeat(IDS, T),
        "checkpoint": np.tile(np.arange(T, dtype=np.int64), N),
        "loss": LOSS.reshape(-1),
    }
    cols.update(override)
    return cols


def _labels_table(**override: object) -> dict[str, object]:
    cols: dict[str, object] = {"sample_id": IDS, "label": LABELS}
    cols.update(override)
    return cols


def _columns(**override: object) -> dict[str, object]:
    cols: dict[str, object] = {"sample_id": IDS, "label": LABELS}
    cols.update({f"loss_{k}": LOSS[:, k] for k in range(T)})
    cols.update(override)
    return cols


def _wide(**override: object) -> pa.Table:
    cols: dict[str, object] = {
        "sample_id": IDS,
        "label": LABELS,
        "loss": pa.array(list(LOSS), pa.list_(pa.float32())),
    }
    cols.update(override)
    return pa.table(cols)


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


@pytest.fixture
def existing(tmp_path, files, cli):
    """A lake with a train split (ids 100..105, checkpoints 0..2)."""
    lake = tmp_path / "existing"
    r = cli(
        "import", lake, "--split", "train",
        "--loss", _npy(files, "base_loss", LOSS), "--labels", _npy(files, "base_y", LABELS),
        "--sample-ids", _npy(files, "base_ids", IDS),
    )  # fmt: skip
    assert r.code == 0, r.err
    return lake


def _refused(cli, lake: Path, *args: object, match: str, code: int = 2) -> CliResult:
    """Run ``import LAKE ARGS``: refused with one line containing ``match``, and nothing
    changed: a fresh path stays absent, an existing lake stays byte-identical."""
    fresh = not lake.exists()
    before = lake_hash(lake)
    r = cli("import", lake, *args)
    assert r.code == code, (r.code, r.out, r.err)
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("cld-lake: error:"), r.err
    assert "Traceback" not in r.err + r.out
    assert match in r.err, r.err
    if fresh:
        assert not lake.exists(), sorted(p.name for p in lake.rglob("*"))
    else:
        assert lake_hash(lake) == before
    return r


# --- 1. a failed first import leaves no lake behind ------------------------------------------


def test_failed_first_import_leaves_no_directory_json_or_lock(tmp_path, files, cli):
    loss, labels = _npy(files, "loss", LOSS), _npy(files, "y", LABELS)
    cases = [
        (["--labels", _npy(files, "neg", LABELS - 1)], "negative"),
        (["--labels", labels, "--margin", _npy(files, "m", LOSS[:, :2])], "shape"),
        (["--labels", labels, "--correct", _npy(files, "c", LOSS)], "correct"),
        (["--labels", labels, "--checkpoint-ids", _npy(files, "ck", np.array([0, 1, 1]))],
         "duplicate"),
    ]  # fmt: skip
    for extra, match in cases:
        lake = tmp_path / "deep" / "new"  # the parent is created by the import too
        _refused(cli, lake, "--split", "train", "--loss", loss, *extra, match=match)
        assert not (tmp_path / "deep").exists()
    # an existing empty directory is kept, and stays empty
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("import", empty, "--split", "train", "--loss", loss, "--labels", files / "neg.npy")
    assert r.code == 2 and list(empty.iterdir()) == []


def test_label_2_pow_40_in_first_import_is_refused_and_later_imports_work(tmp_path, files, cli):
    lake = tmp_path / "lake"
    huge = LABELS.copy()
    huge[2] = 2**40
    loss = _npy(files, "loss", LOSS)
    _refused(cli, lake, "--split", "train", "--loss", loss, "--labels", _npy(files, "huge", huge),
             match="label 1099511627776")  # fmt: skip
    r = cli(
        "import", lake, "--split", "train", "--loss", loss, "--labels", _npy(files, "y", LABELS)
    )
    assert r.code == 0, r.err
    assert json.loads((lake / "cld_lake.json").read_text())["num_classes"] == 3


def _limited_write_size() -> None:  # runs in the child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def _import_with_small_file_limit(lake: Path, *args: object) -> CliResult:
    proc = subprocess.run(
        [str(CLI_BIN), "import", str(lake), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited_write_size,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_oserror_mid_write_removes_what_the_import_created(tmp_path, files, cli):
    """A real write failure (files capped at 64 KiB by RLIMIT_FSIZE) after validation passed:
    exit 1, one line naming the lake, and the new lake (with the parent the call made), the
    new split or the new segment is removed."""
    n = 20000  # a 320 KB chunk: the first chunk write fails
    big = _npy(files, "big", np.random.default_rng(0).random((n, 4), dtype=np.float32))
    labels = _npy(files, "big_y", np.arange(n) % 3)
    lake = tmp_path / "new" / "lake"
    r = _import_with_small_file_limit(lake, "--split", "train", "--loss", big, "--labels", labels)
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith(f"cld-lake: error: {lake}") and "File too large" in r.err, r.err
    assert not (tmp_path / "new").exists()
    # an existing lake: a new split, then new checkpoints of an existing split
    lake = tmp_path / "lake"
    small = _npy(files, "small", np.ones((n, 1), np.float32))
    r = cli("import", lake, "--split", "train", "--loss", small, "--labels", labels)
    assert r.code == 0, r.err
    before = lake_hash(lake)
    for split, ckpt in (("val", "0"), ("train", "1")):
        ckpts = _npy(files, f"ck{ckpt}", np.arange(4) + int(ckpt))
        r = _import_with_small_file_limit(
            lake, "--split", split, "--loss", big, "--labels", labels, "--checkpoint-ids", ckpts
        )
        assert r.code == 1 and "File too large" in r.err and "internal" not in r.err, r.err
        assert lake_hash(lake) == before
        assert sorted(p.name for p in (lake / "splits").iterdir()) == ["train"]


# --- 2. the class limit ------------------------------------------------------------------------


def test_num_classes_40000000_is_refused_in_one_line(tmp_path, files, cli):
    r = _refused(
        cli, tmp_path / "lake", "--split", "train", "--loss", _npy(files, "loss", LOSS),
        "--labels", _npy(files, "y", LABELS), "--num-classes", 40_000_000,
        match="--num-classes 40000000",
    )  # fmt: skip
    assert f"{MAX_CLASSES:,}" in r.err


def test_label_50000000_is_refused_nothing_written(tmp_path, files, existing, cli):
    labels = LABELS.copy()
    labels[0] = 50_000_000
    y = _npy(files, "y", labels)
    loss = _npy(files, "loss", LOSS)
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", loss, "--labels", y,
             match="label 50000000")  # fmt: skip
    _refused(cli, existing, "--split", "val", "--loss", loss, "--labels", y,
             match="label 50000000")  # fmt: skip
    # labels must be < num_classes
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", loss, "--labels",
             _npy(files, "y3", LABELS), "--num-classes", 2, match="outside the lake's 2 classes")  # fmt: skip


# --- 3. one set of type rules for every importer -------------------------------------------------


def test_uint64_sample_ids_at_or_above_2_pow_63_are_refused(tmp_path, files, cli):
    big = IDS.astype(np.uint64)
    big[0] = np.uint64(2**63)
    lake = tmp_path / "lake"
    y = _npy(files, "y", LABELS)
    loss = _npy(files, "loss", LOSS)
    _refused(cli, lake, "--split", "train", "--loss", loss, "--labels", y,
             "--sample-ids", _npy(files, "ids", big), match="9223372036854775808")  # fmt: skip
    long_file = _parquet(files, "long", _long(sample_id=np.repeat(big, T)))
    labels = _parquet(files, "labels", _labels_table(sample_id=big))
    _refused(cli, lake, "--split", "train", "--loss", long_file, "--labels", labels,
             match="must be below 2**63")  # fmt: skip
    wide = _parquet(files, "wide", _columns(sample_id=big))
    _refused(cli, lake, "--split", "train", "--loss", wide, "--labels", wide,
             match="must be below 2**63")  # fmt: skip


def test_long_parquet_float_labels_are_refused_not_truncated(tmp_path, files, cli):
    """Float labels are refused even when whole (1.0): the .npy importer's rule."""
    long_file = _parquet(files, "long", _long())
    for name, values in (("half", LABELS + 0.5), ("whole", LABELS.astype(np.float64))):
        labels = _parquet(files, name, _labels_table(label=values))
        _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file,
                 "--labels", labels, match="dtype float64 is not allowed for labels")  # fmt: skip
    wide = _parquet(files, "wide", _columns(label=LABELS.astype(np.float64)))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", wide, "--labels", wide,
             match="dtype float64 is not allowed for labels")  # fmt: skip


def test_numeric_string_labels_are_refused(tmp_path, files, cli):
    long_file = _parquet(files, "long", _long())
    labels = _parquet(files, "labels", _labels_table(label=[str(v) for v in LABELS]))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file, "--labels", labels,
             match="dtype string is not allowed for labels")  # fmt: skip


def test_non_numeric_string_label_is_one_line(tmp_path, files, cli):
    long_file = _parquet(files, "long", _long())
    labels = _parquet(files, "labels", _labels_table(label=["cat"] * N))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file, "--labels", labels,
             match=f"--labels {labels}")  # fmt: skip


def test_float_correct_is_refused_not_stored_as_true(tmp_path, files, cli):
    lake = tmp_path / "lake"
    y = _parquet(files, "y", _labels_table())
    half = _parquet(files, "half", _long(correct=np.full(N * T, 0.5)))
    _refused(cli, lake, "--split", "train", "--loss", half, "--labels", y,
             match="dtype float64 is not allowed for correct")  # fmt: skip
    two = _parquet(files, "two", _long(correct=np.full(N * T, 2)))
    _refused(cli, lake, "--split", "train", "--loss", two, "--labels", y,
             match="correct holds 2")  # fmt: skip
    _refused(cli, lake, "--split", "train", "--loss", _npy(files, "loss", LOSS),
             "--labels", _npy(files, "y", LABELS), "--correct", _npy(files, "c2", np.full((N, T), 2)),
             match="correct holds 2")  # fmt: skip
    # integers 0/1 are accepted (as by the .npy importer) and stored as bool
    flags = np.arange(N * T) % 2
    ok = _parquet(files, "ok", _long(correct=flags))
    r = cli("import", lake, "--split", "train", "--loss", ok, "--labels", y)
    assert r.code == 0, r.err
    block = next(open_lake(lake).split("train").blocks(channels=("loss", "correct")))
    np.testing.assert_array_equal(block.values["correct"], flags.reshape(N, T).astype(bool))


def test_bool_margin_is_refused(tmp_path, files, cli):
    lake = tmp_path / "lake"
    y = _parquet(files, "y", _labels_table())
    long_file = _parquet(files, "long", _long(margin=np.ones(N * T, bool)))
    _refused(cli, lake, "--split", "train", "--loss", long_file, "--labels", y,
             match="dtype bool is not allowed for margin")  # fmt: skip
    _refused(cli, lake, "--split", "train", "--loss", _npy(files, "loss", LOSS),
             "--labels", _npy(files, "yy", LABELS), "--margin", _npy(files, "m", np.ones((N, T), bool)),
             match="dtype bool is not allowed for margin")  # fmt: skip


def test_nan_label_says_label_is_nan(tmp_path, files, cli):
    long_file = _parquet(files, "long", _long())
    labels = _parquet(files, "labels", _labels_table(label=np.where(LABELS == 1, np.nan, LABELS)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's invalid-cast RuntimeWarning fails the test
        r = _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file,
                     "--labels", labels, match="label is NaN in 2 rows")  # fmt: skip
    assert "-9223372036854775808" not in r.err


def test_null_sample_id_says_how_many_nulls(tmp_path, files, cli):
    ids = pa.array([None, *np.repeat(IDS, T)[1:].tolist()], pa.int64())
    long_file = _parquet(files, "long", _long(sample_id=ids))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file,
             "--labels", _parquet(files, "y", _labels_table()), match="sample_id has 1 null values")  # fmt: skip
    wide = _parquet(files, "wide", _columns(sample_id=pa.array([None, *IDS[1:].tolist()])))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", wide, "--labels", wide,
             match="sample_id has 1 null values")  # fmt: skip


def test_uint64_checkpoint_id_in_long_parquet_is_one_line(tmp_path, files, cli):
    ckpts = np.tile(np.arange(T, dtype=np.uint64), N)
    ckpts[ckpts == 2] = np.uint64(2**64 - 1)
    long_file = _parquet(files, "long", _long(checkpoint=ckpts))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", long_file,
             "--labels", _parquet(files, "y", _labels_table()), match="column checkpoint")  # fmt: skip


def test_n_by_0_loss_is_refused_without_orphan_segment(tmp_path, files, existing, cli):
    empty = _npy(files, "empty", np.zeros((N, 0), np.float32))
    y = _npy(files, "y", LABELS)
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", empty, "--labels", y,
             match="no checkpoints")  # fmt: skip
    _refused(cli, existing, "--split", "train", "--loss", empty, "--labels", y,
             "--sample-ids", _npy(files, "ids", IDS), match="no checkpoints")  # fmt: skip
    segments = list((existing / "splits" / "train" / "segments").iterdir())
    assert len(segments) == 1
    _refused(cli, existing, "--split", "val", "--loss", _npy(files, "none", np.zeros((0, T))),
             "--labels", _npy(files, "y0", np.zeros(0, np.int64)), match="no rows")  # fmt: skip


def test_columns_layout_refuses_unparseable_columns(tmp_path, files, cli):
    bad = _parquet(files, "bad", _columns(loss_abc=LOSS[:, 0]))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", bad, "--labels", bad,
             match="loss_abc")  # fmt: skip
    twice = _parquet(files, "twice", _columns(loss_01=LOSS[:, 1]))
    _refused(cli, tmp_path / "lake", "--split", "train", "--loss", twice, "--labels", twice,
             match="'loss_1' and 'loss_01'")  # fmt: skip


# The rules as one table: every importer refuses the same inputs with the same words.
_RULES = {
    "float ids": ("ids", IDS.astype(np.float64), "dtype float64 is not allowed for ids"),
    "bool labels": ("labels", LABELS.astype(bool), "dtype bool is not allowed for labels"),
    "float labels": ("labels", LABELS + 0.5, "dtype float64 is not allowed for labels"),
    "bool loss": ("loss", LOSS > 0.5, "dtype bool is not allowed for loss"),
    "negative label": ("labels", LABELS - 1, "label -1 is negative"),
}


def _inputs(files: Path, kind: str, role: str, values: np.ndarray) -> list[object]:
    """CLI arguments importing the base data as ``kind`` with ``role`` replaced by ``values``."""
    ids = values if role == "ids" else IDS
    labels = values if role == "labels" else LABELS
    loss = values if role == "loss" else LOSS
    if kind == "npy":
        return ["--loss", _npy(files, "l", loss), "--labels", _npy(files, "y", labels),
                "--sample-ids", _npy(files, "i", ids)]  # fmt: skip
    if kind == "long":
        f = _parquet(files, "long", _long(sample_id=np.repeat(ids, T), loss=loss.reshape(-1)))
        y = _parquet(files, "y", _labels_table(sample_id=ids, label=labels))
        return ["--loss", f, "--labels", y]
    if kind == "columns":
        f = _parquet(files, "cols", {"sample_id": ids, "label": labels,
                                     **{f"loss_{k}": loss[:, k] for k in range(T)}})  # fmt: skip
        return ["--loss", f, "--labels", f]
    value_type = pa.bool_() if loss.dtype == bool else pa.float32()
    f = _parquet(files, "wide", _wide(sample_id=ids, label=labels,
                                      loss=pa.array(list(loss), pa.list_(value_type))))  # fmt: skip
    return ["--loss", f, "--labels", f]


@pytest.mark.parametrize("kind", ["npy", "long", "wide", "columns"])
@pytest.mark.parametrize("rule", list(_RULES))
def test_every_importer_applies_the_same_type_rules(tmp_path, files, cli, kind, rule):
    role, values, match = _RULES[rule]
    args = _inputs(files, kind, role, values)
    _refused(cli, tmp_path / "lake", "--split", "train", *args, match=match)
    args = _inputs(files, kind, "none", LOSS)
    r = cli("import", tmp_path / "lake", "--split", "train", *args)
    assert r.code == 0, r.err
