"""Fuzz of every importer (``.npy``, long, wide and columns Parquet) through the real CLI.

Hypothesis draws a valid small input, then (usually) breaks one thing in it: a dtype (uint64
beyond int64, float, bool, strings, pickled objects), NaN/inf, nulls, shapes (0 rows, 0
columns, wrong lengths, 1-D / 3-D), duplicate ids, negative and huge labels, a missing or an
extra column, a truncated or garbage file, a bad ``--num-classes``. The input goes through
``cld-lake import`` into a fresh path, a new split of an existing lake, or new checkpoints of
an existing split. Whatever the input, the outcome is one of:

* exit 0, and the data read back through ``Split.blocks`` equals the input exactly (ids,
  labels, every channel, checkpoint ids; old checkpoints of an appended split untouched);
* exit 2 (bad input) or 1 (I/O failure) with one line on stderr naming the argument, file or
  lake, a fresh path left absent and an existing lake byte-identical.

An unmodified input (or one changed only in a harmless way: narrower ints, uint64 ids below
2**63, int losses, an extra column, shuffled long rows) must import. Per importer: 150 random
draws, a sweep of every mutation into every target (153) and one run of the installed
executable. A measured run: 1,228 cases (318 imported, 910 refused with exit 2) in 50 s on
2 cores; the module prints the count (``fuzz cases run: ...``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cld_lake._meta import with_meta
from cld_lake.lake import open_lake
from cld_lake.lake.importer import import_npy
from tests.conftest import CliResult, lake_hash, run_cli_subprocess

KINDS = ("npy", "long", "wide", "columns")
TARGETS = ("fresh", "new_split", "append")
APPEND_OFFSET = 1000  # the appended checkpoint ids: the base ones + this
OPTIONS = ("--loss", "--labels", "--sample-ids", "--checkpoint-ids", "--correct", "--margin",
           "--num-classes")  # fmt: skip
CASES_RUN: dict[str, int] = {}  # importer -> cases run
OUTCOMES: dict[int, int] = {}  # exit code -> cases


@pytest.fixture(scope="module", autouse=True)
def _report_count(pytestconfig):
    """Print how many fuzz cases ran (on the terminal, also without ``-s``)."""
    yield
    line = "fuzz cases run: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES_RUN.items()))
    line += f" (total {sum(CASES_RUN.values())}; imported {OUTCOMES.get(0, 0)}, refused "
    line += f"with exit 2: {OUTCOMES.get(2, 0)}, with exit 1: {OUTCOMES.get(1, 0)})"
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")


@dataclass
class Case:
    """One import: the arrays as given to the importer (maybe broken) and how they are written."""

    kind: str
    ids: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    loss: np.ndarray  # (N, T) unless broken
    ckpts: np.ndarray  # (T,)
    correct: np.ndarray | None = None
    margin: np.ndarray | None = None
    num_classes: int | None = None
    null_in: str | None = None  # Parquet: this column holds one null
    drop: str | None = None  # Parquet: this column is left out
    extra: bool = False  # Parquet: an unrelated extra column
    bad_name: bool = False  # columns layout: a loss_<not a number> column
    shuffle: bool = False  # long: rows in random order
    damage: str | None = None  # the --loss file: "truncate", "garbage" or "missing"
    labels_short: bool = False  # one label fewer than samples
    ckpt_meta: bool = True  # wide: checkpoint ids in the file's metadata (else 0..T-1)
    harmless: bool = True  # the change (if any) keeps the input valid
    keeps_layout: bool = True  # ... and keeps ids, labels and stored channels (append works)
    note: str = "none"
    paths: list[Path] = field(default_factory=list)


# --- drawing cases ----------------------------------------------------------------------------


def make_base(kind: str, n: int, t: int, c: int, seed: int, *, low: int = 0,
              specials: bool = True, wide_meta: bool = True, correct: bool = True,
              margin: bool = True) -> Case:  # fmt: skip
    """A valid input: ``n`` samples (ids from ``low``, shuffled), ``t`` checkpoints, ``c``
    classes, losses with NaN/inf when ``specials``, optional correct and margin channels."""
    rng = np.random.default_rng(seed)
    ids = (rng.permutation(3 * n)[:n] + low).astype(np.int64)
    labels = rng.integers(0, c, n)
    loss = rng.normal(1, 1, (n, t)).astype(np.float32)
    if specials:
        special = rng.random((n, t)) < 0.3
        loss[special] = rng.choice([np.nan, np.inf, -np.inf], int(special.sum()))
    ckpts = np.sort(rng.choice(40, t, replace=False)).astype(np.int64)
    if kind == "wide" and not wide_meta:
        ckpts = np.arange(t, dtype=np.int64)
    return Case(
        kind, ids, labels, loss, ckpts,
        correct=(rng.random((n, t)) < 0.5) if correct else None,
        margin=rng.normal(0, 2, (n, t)).astype(np.float32) if margin else None,
        ckpt_meta=wide_meta,
    )  # fmt: skip


@st.composite
def base_cases(draw: st.DrawFn, kind: str) -> Case:
    return make_base(
        kind, draw(st.integers(1, 9)), draw(st.integers(1, 4)), draw(st.integers(1, 4)),
        draw(st.integers(0, 2**32 - 1)), low=draw(st.sampled_from([0, -5, 10**12])),
        specials=draw(st.booleans()), wide_meta=draw(st.booleans()),
        correct=draw(st.booleans()), margin=draw(st.booleans()),
    )  # fmt: skip


def _broken(case: Case, note: str, **changes: object) -> Case:
    return replace(case, harmless=False, keeps_layout=False, note=note, **changes)


def _harmless(case: Case, note: str, keeps_layout: bool = True, **changes: object) -> Case:
    return replace(case, keeps_layout=keeps_layout, note=note, **changes)


def _with(values: np.ndarray, index: int, value: object, dtype: object = None) -> np.ndarray:
    out = values.astype(dtype if dtype is not None else values.dtype, copy=True)
    out.reshape(-1)[index] = value
    return out


def _sliced(case: Case, index: object) -> dict[str, np.ndarray | None]:
    """The channels of ``case`` cut by ``index`` (e.g. no rows, no columns)."""
    return {
        name: None if getattr(case, name) is None else getattr(case, name)[index]
        for name in ("loss", "correct", "margin")
    }


MUTATIONS: dict[str, Callable[[Case], Case]] = {
    # harmless
    "ids int32": lambda c: _harmless(c, "ids int32", ids=c.ids.astype(np.int32))
    if np.abs(c.ids).max() < 2**31 else c,
    "ids uint64 < 2**63": lambda c: _harmless(c, "ids uint64", ids=c.ids.astype(np.uint64))
    if c.ids.min() >= 0 else c,
    "labels uint8": lambda c: _harmless(c, "labels uint8", labels=c.labels.astype(np.uint8)),
    "loss int": lambda c: _harmless(c, "loss int", keeps_layout=True,
                                    loss=np.nan_to_num(c.loss).round().clip(-9, 9).astype(np.int16)),
    "loss float64": lambda c: _harmless(c, "loss float64", keeps_layout=False,
                                        loss=c.loss.astype(np.float64)),
    "correct 0/1 ints": lambda c: _harmless(c, "correct 0/1", correct=c.correct.astype(np.int8))
    if c.correct is not None else c,
    "extra column": lambda c: _harmless(c, "extra column", extra=True),
    "shuffled long rows": lambda c: _harmless(c, "shuffled", shuffle=True),
    # broken ids
    "ids uint64 >= 2**63": lambda c: _broken(
        c, "ids >= 2**63", ids=_with(np.abs(c.ids), 0, 2**63 + 5, np.uint64)),
    "ids float": lambda c: _broken(c, "ids float", ids=c.ids.astype(np.float64)),
    "ids bool": lambda c: _broken(c, "ids bool", ids=c.ids % 2 == 0),
    "ids strings": lambda c: _broken(c, "ids str", ids=c.ids.astype(str)),
    "ids objects": lambda c: _broken(c, "ids object", ids=c.ids.astype(object)),
    "ids duplicate": lambda c: _broken(c, "ids dup", ids=_with(c.ids, -1, c.ids[0]))
    if len(c.ids) > 1 else c,
    "ids null": lambda c: _broken(c, "ids null", null_in="sample_id"),
    # broken labels
    "labels whole floats": lambda c: _broken(c, "labels 1.0", labels=c.labels.astype(np.float64)),
    "labels half floats": lambda c: _broken(c, "labels 1.5", labels=c.labels + 0.5),
    "labels NaN": lambda c: _broken(c, "labels NaN", labels=_with(c.labels, 0, np.nan, float)),
    "labels negative": lambda c: _broken(c, "labels -1", labels=_with(c.labels, 0, -1)),
    "labels 2**40": lambda c: _broken(c, "labels 2**40", labels=_with(c.labels, 0, 2**40)),
    "labels 50M": lambda c: _broken(c, "labels 50M", labels=_with(c.labels, 0, 50_000_000)),
    "labels uint64 huge": lambda c: _broken(
        c, "labels u64", labels=_with(c.labels, 0, 2**64 - 1, np.uint64)),
    "labels numeric strings": lambda c: _broken(c, "labels str", labels=c.labels.astype(str)),
    "labels words": lambda c: _broken(c, "labels words", labels=np.full(len(c.labels), "cat")),
    "labels bool": lambda c: _broken(c, "labels bool", labels=c.labels > 0),
    "labels null": lambda c: _broken(c, "labels null", null_in="label"),
    "labels short": lambda c: _broken(c, "labels short", labels_short=True),
    "num_classes too small": lambda c: _broken(c, "C small", num_classes=int(c.labels.max()))
    if c.labels.max() > 0 else c,
    "num_classes 40M": lambda c: _broken(c, "C 40M", num_classes=40_000_000),
    "num_classes 0": lambda c: _broken(c, "C 0", num_classes=0),
    # broken values
    "loss bool": lambda c: _broken(c, "loss bool", loss=c.loss > 1),
    "loss strings": lambda c: _broken(c, "loss str", loss=c.loss.astype(str)),
    "loss 1-D": lambda c: _broken(c, "loss 1-D", loss=c.loss[:, 0]) if c.kind == "npy" else c,
    "loss 3-D": lambda c: _broken(c, "loss 3-D", loss=c.loss[:, :, None])
    if c.kind == "npy" else c,
    "loss 0 columns": lambda c: _broken(c, "loss N x 0", **_sliced(c, np.s_[:, :0]),
                                        ckpts=c.ckpts[:0]),
    "loss 0 rows": lambda c: _broken(c, "loss 0 x T", **_sliced(c, np.s_[:0]), ids=c.ids[:0],
                                     labels=c.labels[:0]),
    "loss null": lambda c: _broken(c, "loss null", null_in="loss"),
    "ckpts negative": lambda c: _broken(c, "ckpt -1", ckpts=_with(c.ckpts, 0, -1)),
    "ckpts duplicate": lambda c: _broken(c, "ckpt dup", ckpts=_with(c.ckpts, -1, c.ckpts[0]))
    if len(c.ckpts) > 1 else c,
    "ckpts uint64 huge": lambda c: _broken(
        c, "ckpt u64", ckpts=_with(c.ckpts, -1, 2**64 - 1, np.uint64)),
    "correct 0.5": lambda c: _broken(c, "correct 0.5", correct=np.full(c.loss.shape, 0.5)),
    "correct 2": lambda c: _broken(c, "correct 2", correct=np.full(c.loss.shape, 2, np.int64)),
    "margin bool": lambda c: _broken(c, "margin bool", margin=c.loss > 1),
    # broken files and columns
    "missing sample_id": lambda c: _broken(c, "no sample_id", drop="sample_id"),
    "missing checkpoint": lambda c: _broken(c, "no checkpoint", drop="checkpoint"),
    "missing loss": lambda c: _broken(c, "no loss", drop="loss"),
    "missing label": lambda c: _broken(c, "no label", drop="label"),
    "unparseable column": lambda c: _broken(c, "loss_x", bad_name=True),
    "truncated file": lambda c: _broken(c, "truncated", damage="truncate"),
    "garbage file": lambda c: _broken(c, "garbage", damage="garbage"),
    "missing file": lambda c: _broken(c, "missing file", damage="missing"),
}  # fmt: skip


@st.composite
def cases(draw: st.DrawFn, kind: str) -> tuple[Case, str]:
    case = draw(base_cases(kind))
    name = draw(st.sampled_from(["none", "none", *MUTATIONS]))
    if name != "none":
        case = MUTATIONS[name](case)
    return case, draw(st.sampled_from(TARGETS))


# --- writing the inputs ---------------------------------------------------------------------


def _arrow(values: np.ndarray, null: bool = False) -> pa.Array:
    values = np.asarray(values)
    if values.dtype.kind in "UO":
        items = [None if v is None else str(v) for v in values.tolist()]
    else:
        items = values.tolist()
    if null and items:
        items[0] = None
    if values.dtype.kind in "UO":
        return pa.array(items, pa.string())
    return pa.array(items, pa.from_numpy_dtype(values.dtype))


def _list_column(values: np.ndarray, null: bool = False) -> pa.Array:
    value_type = _arrow(values.reshape(-1)[:1]).type if values.size else pa.float32()
    rows = [_arrow(row).to_pylist() for row in values]
    if null and rows and rows[0]:
        rows[0][0] = None
    return pa.array(rows, pa.list_(value_type))


def _save_npy(path: Path, values: np.ndarray) -> Path:
    np.save(path, values, allow_pickle=values.dtype.kind == "O")
    return path


def write_inputs(case: Case, folder: Path, ckpt_offset: int) -> list[object]:
    """Write ``case`` as files in ``folder``; return the CLI arguments after ``--split``."""
    ckpts = case.ckpts + ckpt_offset if case.ckpts.dtype.kind != "u" else case.ckpts
    labels = case.labels[:-1] if case.labels_short else case.labels
    args: list[object] = []
    loss_path: Path
    if case.kind == "npy":
        loss_path = _save_npy(folder / "loss.npy", case.loss)
        args += ["--loss", loss_path, "--labels", _save_npy(folder / "labels.npy", labels),
                 "--sample-ids", _save_npy(folder / "ids.npy", case.ids),
                 "--checkpoint-ids", _save_npy(folder / "ckpts.npy", ckpts)]  # fmt: skip
        for name in ("correct", "margin"):
            values = getattr(case, name)
            if values is not None:
                args += [f"--{name}", _save_npy(folder / f"{name}.npy", values)]
    else:
        n, t = len(case.ids), len(case.ckpts)
        channels = {"loss": case.loss, "correct": case.correct, "margin": case.margin}
        channels = {k: v for k, v in channels.items() if v is not None}
        if case.kind == "long":
            cols = {
                "sample_id": _arrow(np.repeat(case.ids, t), case.null_in == "sample_id"),
                "checkpoint": _arrow(np.tile(ckpts, n)),
                **{k: _arrow(v.reshape(-1), case.null_in == k) for k, v in channels.items()},
            }
            table = pa.table(cols)
            if case.shuffle:
                table = table.take(np.random.default_rng(n).permutation(table.num_rows))
            label_table = pa.table(
                {
                    "sample_id": _arrow(case.ids[: len(labels)]),
                    "label": _arrow(labels, case.null_in == "label"),
                }  # fmt: skip
            )
            if case.drop == "label":
                label_table = label_table.drop_columns(["label"])
            labels_path = folder / "labels.parquet"
            pq.write_table(label_table, labels_path)
        else:
            cols = [("sample_id", _arrow(case.ids, case.null_in == "sample_id"))]
            if len(labels) == n:
                cols.append(("label", _arrow(labels, case.null_in == "label")))
            if case.kind == "wide":
                cols += [(k, _list_column(v, case.null_in == k)) for k, v in channels.items()]
            else:  # duplicate checkpoint ids give duplicate column names, as in a real file
                cols += [
                    (f"{k}_{int(ckpts[j])}", _arrow(v[:, j], case.null_in == k and j == 0))
                    for k, v in channels.items()
                    for j in range(t)
                ]
            if case.bad_name:
                cols.append(("loss_x", _arrow(case.loss[:, 0])))
            table = pa.Table.from_arrays([a for _, a in cols], names=[k for k, _ in cols])
            default_ids = np.array_equal(ckpts, np.arange(t))
            if case.kind == "wide" and (case.ckpt_meta or not default_ids):
                table = with_meta(table, {"checkpoints": [int(k) for k in ckpts]})
            labels_path = folder / "wide.parquet"
        if case.extra:
            table = table.append_column("note", pa.array(["x"] * table.num_rows))
        if case.drop is not None and case.drop in table.column_names:
            table = table.drop_columns([case.drop])
        if case.drop == "loss" and case.kind == "columns":
            table = table.drop_columns([c for c in table.column_names if c.startswith("loss_")])
        loss_path = folder / ("long.parquet" if case.kind == "long" else "wide.parquet")
        pq.write_table(table, loss_path, row_group_size=max(1, table.num_rows // 3))
        args += ["--loss", loss_path, "--labels", labels_path]
    if case.num_classes is not None:
        args += ["--num-classes", case.num_classes]
    _damage(loss_path, case.damage)
    case.paths = [a for a in args if isinstance(a, Path)]
    return args


def _damage(path: Path, how: str | None) -> None:
    if how is None:
        return
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(len(raw)).bytes(len(raw)))
    else:
        path.unlink()


# --- the property -----------------------------------------------------------------------------


def build_existing(case: Case, folder: Path, lake: Path) -> None:
    """A lake whose train split holds the case's valid base data (checkpoints as drawn)."""
    arrays = {"loss": case.loss, "labels": case.labels, "sample_ids": case.ids,
              "checkpoint_ids": case.ckpts, "correct": case.correct, "margin": case.margin}  # fmt: skip
    paths = {k: _save_npy(folder / f"base_{k}.npy", v) for k, v in arrays.items() if v is not None}
    import_npy(lake, "train", paths.pop("loss"), paths.pop("labels"), **paths)


def check_outcome(r: CliResult, case: Case, lake: Path, split: str, offset: int,
                  fresh: bool, before: str, base: Case | None) -> None:  # fmt: skip
    where = f"{case.kind}/{case.note}: exit {r.code}, err {r.err!r}"
    assert "Traceback" not in r.err + r.out, where
    if r.code == 0:
        _check_read_back(case, lake, split, offset, base)
        return
    assert r.code in (1, 2), where
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("cld-lake: error:"), where
    names = [*OPTIONS, str(lake), *map(str, case.paths)]
    assert any(name in r.err for name in names), where
    if fresh:
        assert not lake.exists(), where
    else:
        assert lake_hash(lake) == before, where


def _check_read_back(case: Case, lake: Path, split_name: str, offset: int, base: Case | None):
    split = open_lake(lake).split(split_name)
    channels = tuple(split.channels)
    blocks = list(split.blocks(channels=channels))
    ids = np.concatenate([b.sample_ids for b in blocks])
    labels = np.concatenate([b.labels for b in blocks])
    values = {c: np.concatenate([b.values[c] for b in blocks]) for c in channels}
    stored_ckpts = blocks[0].checkpoints
    order = {int(v): i for i, v in enumerate(case.ids.tolist())}
    assert sorted(order) == sorted(ids.tolist()) and len(ids) == len(case.ids)
    rows = np.array([order[int(v)] for v in ids])
    np.testing.assert_array_equal(labels, case.labels[rows])
    assert np.all(labels == case.labels[rows])  # exact, in the input's own dtype
    for j, k in enumerate(case.ckpts.tolist()):
        col = int(np.flatnonzero(stored_ckpts == k + offset)[0])
        for c in channels:
            given = case.loss if c == "loss" else getattr(case, c)
            if given is None:  # an appended import without this channel
                assert base is not None and getattr(base, c) is None
                continue
            got = values[c][:, col]
            want = given[rows, j]
            if c == "loss" or c == "margin":
                np.testing.assert_array_equal(got, want.astype(split.channels[c]))
            else:
                assert np.all(got.astype(want.dtype) == want)
    if base is not None:  # the base checkpoints of an appended split are untouched
        for j, k in enumerate(base.ckpts.tolist()):
            col = int(np.flatnonzero(stored_ckpts == k)[0])
            np.testing.assert_array_equal(values["loss"][:, col], base.loss[rows, j])


def run_case(cli: Callable[..., CliResult], tmp: Path, case: Case, target: str,
             base: Case) -> None:  # fmt: skip
    """Import ``case`` into ``target`` and check the outcome; ``base`` is the valid input the
    case was made from (the existing lake holds it)."""
    folder = tmp / "in"
    shutil.rmtree(tmp, ignore_errors=True)
    folder.mkdir(parents=True)
    lake = tmp / "lake"
    split, offset = "train", 0
    if target != "fresh":
        build_existing(base, folder, lake)
        if target == "new_split":
            split = "val"
        else:
            offset = APPEND_OFFSET
    before = lake_hash(lake)
    args = write_inputs(case, folder, offset)
    started = time.monotonic()
    r = cli("import", lake, "--split", split, *args)
    assert time.monotonic() - started < 60, f"{case.note}: import took too long"
    if case.harmless and (target != "append" or case.keeps_layout):
        assert r.code == 0, f"{case.kind}/{case.note} -> {target}: {r.err}"
    check_outcome(r, case, lake, split, offset, target == "fresh", before,
                  base if target == "append" else None)  # fmt: skip
    CASES_RUN[case.kind] = CASES_RUN.get(case.kind, 0) + 1
    OUTCOMES[r.code] = OUTCOMES.get(r.code, 0) + 1


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=False,
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_every_importer_through_the_cli(kind, tmp_path, cli):
    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        base = data.draw(base_cases(kind))
        name = data.draw(st.sampled_from(["none", "none", *MUTATIONS]), label="mutation")
        case = MUTATIONS[name](base) if name != "none" else base
        target = data.draw(st.sampled_from(TARGETS), label="target")
        run_case(cli, tmp_path / "case", case, target, base)

    run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_every_mutation_into_every_target(kind, tmp_path, cli):
    """Each mutation at least once per importer and target (the random draws above may miss
    one), on bases of a few shapes."""
    for i, name in enumerate(["none", *MUTATIONS]):
        for j, target in enumerate(TARGETS):
            base = make_base(kind, 1 + (i + j) % 7, 1 + (i * 3 + j) % 4, 1 + i % 3, seed=i * 3 + j,
                             low=(0, -5, 10**12)[j], wide_meta=bool(i % 2),
                             correct=bool(j % 2), margin=bool((i + j) % 2))  # fmt: skip
            case = MUTATIONS[name](base) if name != "none" else base
            run_case(cli, tmp_path / "case", case, target, base)


class _Subprocess:
    """The in-process runner's interface over the installed ``cld-lake`` executable."""

    def __call__(self, *args: object) -> CliResult:
        return run_cli_subprocess(*args)


@pytest.mark.parametrize(
    "kind, mutation, target",
    [("npy", "labels 2**40", "fresh"), ("long", "labels NaN", "new_split"),
     ("wide", "none", "append"), ("columns", "unparseable column", "fresh")],
)  # fmt: skip
def test_fuzz_cases_through_the_installed_executable(kind, mutation, target, tmp_path):
    """A few cases through a real process: the same outcomes as in-process."""
    base = make_base(kind, 5, 3, 3, seed=11)
    case = MUTATIONS[mutation](base) if mutation != "none" else base
    run_case(_Subprocess(), tmp_path / "case", case, target, base)
