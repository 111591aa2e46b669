"""``--engine dask`` on a cluster of its own choosing (issue 11): ``--scheduler ADDRESS`` of a
running scheduler, workers that open the lake themselves, results in row order from tasks of
bounded size, and one-line refusals for an address that is malformed, unreachable, or given to
another engine.

The cluster is a real 2-worker LocalCluster of processes, started here; the tests reach it only
through its address, as a user with ``dask scheduler`` does.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cld_lake.errors import BadInputError, ScoringError
from cld_lake.lake import open_lake
from cld_lake.score import METHOD_REGISTRY, compute_cld
from cld_lake.score._plan import plan_pass
from tests.conftest import has_scores, scores_file
from tests.strategies import build_spec, write_lake

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    """The address of a running 2-worker LocalCluster (processes); no client is made active."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    spec = build_spec(seed=11, n_train=3000, n_val=300, n_checkpoints=12, n_classes=6)
    path = tmp_path_factory.mktemp("dask") / "lake"
    write_lake(path, spec, row_chunk=256)
    return path


@pytest.fixture
def small_lake(tmp_path) -> Path:
    spec = build_spec(seed=2, n_train=200, n_val=60, n_checkpoints=5, n_classes=3)
    return write_lake(tmp_path / "lake", spec, row_chunk=64).path


def _column(lake: Path, name: str) -> np.ndarray:
    return pq.read_table(scores_file(lake), columns=[name]).column(0).to_numpy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the cluster through the real CLI --------------------------------------------------------
def test_cli_scores_on_the_scheduler_given_equal_to_numpy(cli, lake, scheduler):
    done = cli("score", lake, "--engine", "dask", "--scheduler", scheduler, "--name", "cld_dask")
    assert done.code == 0, done.err
    assert "with dask" in done.out
    assert cli("score", lake, "--name", "cld_numpy").code == 0
    assert cli("score", lake, "--method", "mean_loss,variability", "--engine", "dask", "--scheduler",
               scheduler, "--name", "mean_loss_dask,variability_dask").code == 0  # fmt: skip
    assert cli("score", lake, "--method", "mean_loss,variability").code == 0
    dask, numpy = _column(lake, "cld_dask"), _column(lake, "cld_numpy")
    np.testing.assert_array_equal(dask, numpy)  # the same kernel: the same bits
    assert np.isfinite(numpy).sum() > 2000
    for method in ("mean_loss", "variability"):
        np.testing.assert_array_equal(_column(lake, f"{method}_dask"), _column(lake, method))


def _rchar(_pid: int | None = None) -> int:
    """Bytes this process read through read()/pread() (files, page cache included)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_workers_read_the_lake_and_the_client_does_not(tmp_path, scheduler):
    # 40 checkpoints of 20K rows: 3.2 MB of losses, ten times the sums that come back
    spec = build_spec(seed=3, n_train=20_000, n_val=100, n_checkpoints=40, n_classes=4)
    path = write_lake(tmp_path / "lake", spec, row_chunk=2048).path
    segments = path / "splits" / "train" / "segments"
    train_bytes = sum(f.stat().st_size for f in segments.rglob("*") if f.is_file())
    with distributed.Client(scheduler, set_as_default=False) as observer:
        workers_before = sum(observer.run(_rchar).values())
        client_before = _rchar()
        result = compute_cld(path, engine="dask", store=False,
                             engine_options={"scheduler": scheduler})  # fmt: skip
        client_read = _rchar() - client_before
        workers_read = sum(observer.run(_rchar).values()) - workers_before
    numpy = compute_cld(path, engine="numpy", store=False)
    np.testing.assert_array_equal(result.scores, numpy.scores)
    assert workers_read >= train_bytes, (workers_read, train_bytes)
    assert client_read < train_bytes / 4, (client_read, train_bytes)


def _scheduler_view(dask_scheduler) -> tuple[int, set[str]]:
    """How many tasks the scheduler holds, and what the row tasks' arguments are."""
    args = set()
    for key, ts in dask_scheduler.tasks.items():
        if str(key).startswith("_task-"):
            args |= {type(arg).__name__ for arg in ts.run_spec.args}
    return len(dask_scheduler.tasks), args


def test_tasks_carry_row_ranges_in_a_bounded_window_and_results_come_in_row_order(lake, scheduler):
    from cld_lake._dask import IN_FLIGHT_PER_THREAD
    from cld_lake.score._dask import compute

    lk = open_lake(lake)
    train, plans = plan_pass(lk, [METHOD_REGISTRY["cld"]])
    with distributed.Client(scheduler, set_as_default=False) as observer:
        held, carried = [], set()  # while the client takes each result
        starts, sizes = [], []
        for chunk in compute(train, plans, scheduler=scheduler, task_rows=256):
            count, args = observer.run_on_scheduler(_scheduler_view)
            held.append(count)
            carried |= args
            starts.append(chunk.rows.start)
            sizes.append(chunk.rows.stop - chunk.rows.start)
            time.sleep(0.01)  # a slow consumer: workers must not run ahead of the window
    assert starts == list(range(0, 3000, 256)) and max(sizes) == 256
    # + 1: the shared task holding the reference table; + 1: a release in transit
    assert max(held) <= IN_FLIGHT_PER_THREAD * 2 + 2, held
    # a row task carries its row range and a reference to the shared task: no arrays, no table
    assert carried == {"RowRange", "Alias"}, carried


def test_a_memory_lake_runs_on_worker_threads_and_is_refused_by_a_scheduler(tmp_path, scheduler):
    spec = build_spec(seed=5, n_train=800, n_val=120, n_checkpoints=6, n_classes=3)
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    write_lake(url, spec, row_chunk=128)
    scores = compute_cld(url, engine="dask", store=False, engine_options={"n_workers": 2}).scores
    np.testing.assert_array_equal(scores, compute_cld(url, engine="numpy", store=False).scores)
    with pytest.raises(ScoringError, match=r"memory:// lake lives in this process only"):
        compute_cld(url, engine="dask", store=False, engine_options={"scheduler": scheduler})


@pytest.mark.slow  # about 30 s: a moto server, a cluster, a lake written by many small PUTs
def test_an_s3_lake_scored_by_workers_that_read_it_from_the_server(cli, s3_env):
    from cld_lake.lake.scores import read_scores
    from tests._s3server import BUCKET

    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    write_lake(url, build_spec(seed=9, n_train=1500, n_val=200, n_checkpoints=8, n_classes=4),
               row_chunk=256)  # fmt: skip
    # a cluster started with the server's environment, as workers on a cloud cluster have it
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        done = cli("score", url, "--engine", "dask", "--scheduler", cluster.scheduler_address)
    assert done.code == 0, done.err
    stored = read_scores(open_lake(url), ["cld"]).column("cld").to_numpy()
    np.testing.assert_array_equal(stored, compute_cld(url, engine="numpy", store=False).scores)


# --- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1", "127.0.0.1", "foo://h:1", "tcp://:8786", "tcp://h:70000", ""]
)
def test_a_malformed_address_is_one_line_exit_2(cli, small_lake, address):
    done = cli("score", small_lake, "--engine", "dask", "--scheduler", address)
    assert done.code == 2
    assert done.err.count("\n") == 1 and "not a scheduler address" in done.err
    assert "tcp://HOST:PORT" in done.err and not has_scores(small_lake)


def test_scheduler_with_another_engine_is_refused(cli, small_lake):
    done = cli("score", small_lake, "--scheduler", "tcp://127.0.0.1:8786")
    assert done.code == 2 and done.err.count("\n") == 1
    assert "--scheduler applies to --engine dask" in done.err
    assert not has_scores(small_lake)


def test_an_unreachable_scheduler_is_one_line_naming_it_and_how_to_start_one(cli, small_lake):
    path = small_lake
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    done = cli("score", path, "--engine", "dask", "--scheduler", address)
    assert done.code == 2 and done.err.count("\n") == 1, done.err
    assert address in done.err and "`dask scheduler`" in done.err
    assert time.monotonic() - started < 30
    assert not has_scores(path)


def test_a_scheduler_without_workers_is_refused_naming_dask_worker():
    from cld_lake._dask import connect

    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as bare:
        with pytest.raises(ScoringError, match=r"has no workers.*`dask worker tcp://"):
            connect(bare.scheduler_address, timeout_s=1)
    with pytest.raises(BadInputError, match="not a scheduler address"):
        connect("tcp://127.0.0.1")
