"""Lakes on object storage: the whole path on a real S3-compatible server (moto, started on
127.0.0.1 by the ``s3_env`` fixture) and on ``memory://``, checked against the same lake on
local disk; bad URLs, buckets, credentials and endpoints; the lease; kill -9 mid-commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import BadInputError, LakeLockedError
from cld_lake.lake import SplitWriter, open_lake
from cld_lake.lake.check import verify_lake
from tests._s3server import BUCKET
from tests.conftest import CLI_BIN, REPO, write_npy_set

N, T, C = 2500, 9, 4


def _files(folder: Path) -> dict[str, Path]:
    return write_npy_set(folder, N, 300, T, C, seeds=(3, 4), nan_rows=2)


def _run(*args: object, env: dict[str, str] | None = None, timeout: float = 120):
    proc = subprocess.run(
        [str(CLI_BIN), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return proc


def _ok(*args: object, env: dict[str, str] | None = None) -> str:
    proc = _run(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _import(lake: str, files: dict[str, Path], env: dict[str, str] | None = None) -> None:
    _ok("import", lake, "--split", "train", "--loss", files["loss"], "--labels",
        files["labels"], "--sample-ids", files["ids"], "--num-classes", C, env=env)  # fmt: skip
    _ok("import", lake, "--split", "val", "--loss", files["vloss"], "--labels",
        files["vlabels"], env=env)  # fmt: skip


def _bucket_keys(env: dict[str, str]) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    return sorted(fs.find(BUCKET))


@pytest.mark.timeout(300)
def test_whole_path_on_s3_equals_the_local_lake(s3_env, tmp_path):
    files = _files(tmp_path)
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    local = tmp_path / "local"
    for lake in (url, local):
        _import(str(lake), files)
        _ok("score", lake, "--engine", "numpy")
        _ok("score", lake, "--engine", "duckdb", "--name", "cld_duckdb")
        _ok("score", lake, "--engine", "polars", "--name", "cld_polars")
        _ok("score", lake, "--method", "mean_loss,early_loss")
    remote_scores = cld_lake.query(url, "SELECT * FROM scores ORDER BY sample_id")
    local_scores = cld_lake.query(local, "SELECT * FROM scores ORDER BY sample_id")
    for column in ("cld", "cld_duckdb", "cld_polars", "mean_loss", "early_loss"):
        np.testing.assert_array_equal(
            remote_scores[column].to_numpy(), local_scores[column].to_numpy()
        )
    sql = "SELECT label, count(*) n, avg(cld) m FROM scores GROUP BY label ORDER BY label"
    assert _ok("sql", url, sql) == _ok("sql", local, sql)
    losses = "SELECT split, sum(loss) s, count(*) n FROM losses GROUP BY split ORDER BY split"
    assert _ok("sql", url, losses) == _ok("sql", local, losses)
    outs = {}
    for name, lake in (("remote", url), ("local", local)):
        outs[name] = tmp_path / f"{name}.parquet"
        _ok("select", lake, "--score", "cld", "--fraction", "0.2", "--out", outs[name])
    remote_ids = pq.read_table(outs["remote"]).column("sample_id").to_pylist()
    assert remote_ids == pq.read_table(outs["local"]).column("sample_id").to_pylist()
    assert len(remote_ids) == round(0.2 * N)
    _ok("export", url, "--split", "train", "--out", tmp_path / "wide.parquet")
    assert pq.read_metadata(tmp_path / "wide.parquet").num_rows == N
    _ok("report", url, "--out", tmp_path / "report.html")
    assert "cld" in (tmp_path / "report.html").read_text()
    _ok("compact", url)
    assert "ok:" in _ok("verify", url)
    info = json.loads(_ok("info", url, "--json"))
    assert info["splits"]["train"]["samples"] == N
    assert info["splits"]["train"]["checkpoints"] == T
    # the lease objects are gone once the writers finished
    assert not [k for k in _bucket_keys(s3_env) if k.endswith(".lock")]


def test_memory_lake_through_the_python_api_equals_the_local_lake(tmp_path):
    files = _files(tmp_path)
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    local = tmp_path / "local"
    for lake in (url, local):
        for split, loss, labels in (("train", "loss", "labels"), ("val", "vloss", "vlabels")):
            cld_lake.import_file(lake, split, loss=files[loss], labels=files[labels],
                                 num_classes=C)  # fmt: skip
    for engine in ("numpy", "duckdb", "polars"):
        remote = cld_lake.score(url, engine=engine, store=False)
        here = cld_lake.score(local, engine=engine, store=False)
        assert remote.equals(here)
    cld_lake.score(url)
    cld_lake.score(local)
    a = cld_lake.select(url, score="cld", fraction=0.1, out=tmp_path / "a.parquet")
    b = cld_lake.select(local, score="cld", fraction=0.1, out=tmp_path / "b.parquet")
    assert a.sample_ids.tolist() == b.sample_ids.tolist()
    assert verify_lake(open_lake(url)).ok


def test_record_with_the_torch_recorder_into_an_s3_lake(s3_env, tmp_path):
    torch = pytest.importorskip("torch")
    from cld_lake.torch import LossRecorder

    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 8, generator=g), torch.randint(0, 3, (600,), generator=g)
    model = torch.nn.Linear(8, 3)
    recorder = LossRecorder(url, split="train", num_classes=3)
    for epoch in range(3):
        with torch.no_grad():
            recorder.update(torch.arange(600), model(x), y)
        recorder.commit(checkpoint=epoch, epoch=epoch)
        with torch.no_grad():
            model.weight.add_(0.1)
    split = open_lake(url).split("train")
    assert split.checkpoint_ids.tolist() == [0, 1, 2]
    expected = torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach()
    got = np.concatenate([b.loss[:, -1] for b in split.blocks()])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "url, env, words",
    [
        ("ftp://host/lake", {}, "unknown URL scheme 'ftp'"),
        ("s3://no-such-bucket/lake", {}, "bucket 'no-such-bucket' does not exist"),
        (
            "s3://lakes/x",
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_PROFILE": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
            },
            "AWS_ACCESS_KEY_ID",
        ),  # fmt: skip
        (
            "s3://lakes/x",
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "CLD_LAKE_CONNECT_TIMEOUT": "2"},
            "AWS_ENDPOINT_URL",
        ),
        ("s3://lakes/x", {"AWS_ENDPOINT_URL": "not a url"}, "AWS_ENDPOINT_URL"),
        ("s3://", {}, "no bucket in the URL"),
    ],
)
def test_bad_url_bucket_credentials_or_endpoint_is_one_line_exit_2_nothing_written(
    s3_env, tmp_path, url, env, words
):
    files = _files(tmp_path)
    before = _bucket_keys(s3_env)
    env = {k: v for k, v in env.items()}
    blank = [k for k, v in env.items() if v == ""]
    full_env = {**os.environ, **env}
    for k in blank:
        full_env.pop(k, None)
    for args in (
        ("import", url, "--split", "train", "--loss", files["loss"], "--labels", files["labels"]),
        ("info", url),
        ("score", url),
    ):
        proc = subprocess.run(
            [str(CLI_BIN), *map(str, args)], capture_output=True, text=True, env=full_env,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr, proc.stderr
        assert url.split("://")[0] + ":/" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert _bucket_keys(s3_env) == before


@pytest.mark.timeout(60)
def test_a_live_writer_lease_refuses_a_second_writer_naming_the_holder(s3_env, tmp_path):
    files = _files(tmp_path)
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    _import(url, files)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from cld_lake.lake import SplitWriter, open_lake\n"
         "w = SplitWriter(open_lake(sys.argv[1]), 'train'); print('held', flush=True)\n"
         "time.sleep(60)", url],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LakeLockedError, match=f"pid {holder.pid} on"):
            SplitWriter(open_lake(url), "train")
        np.save(tmp_path / "new_ids.npy", np.arange(100, 100 + T))
        proc = _run("import", url, "--split", "train", "--loss", files["loss"], "--labels",
                    files["labels"], "--sample-ids", files["ids"],
                    "--checkpoint-ids", tmp_path / "new_ids.npy")  # fmt: skip
        assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr, proc.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.timeout(60)
def test_kill_9_mid_commit_on_s3_loses_no_committed_checkpoint(s3_env, tmp_path):
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    env = {**os.environ, "CLD_LAKE_LEASE_SECONDS": "3", "PYTHONPATH": str(REPO)}
    writer = [sys.executable, "-m", "tests._fault_writer", url, "3000", "8"]
    proc = subprocess.Popen(writer, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    ended: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # kill inside the third commit after the first two finished
        if line.startswith("commit-end"):
            ended.append(int(line.split()[1]))
        if line.startswith("commit-start") and len(ended) >= 2:
            time.sleep(0.05 * (len(ended) % 3))
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    lake = open_lake(url)
    committed = lake.split("train").checkpoint_ids.tolist()
    assert set(ended) <= set(committed)
    # the dead writer's lease still stands until it expires: a new writer is told who holds it
    with pytest.raises(LakeLockedError, match=f"pid {proc.pid}"):
        SplitWriter(open_lake(url), "train")
    time.sleep(3.5)
    rerun = subprocess.run(writer, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    split = open_lake(url).split("train")
    assert split.checkpoint_ids.tolist() == list(range(8))
    from tests._fault_writer import values

    for block in split.blocks(block_rows=3000):
        np.testing.assert_array_equal(
            block.loss, np.stack([values(3000, t) for t in range(8)], axis=1)[block.sample_ids]
        )
    assert verify_lake(open_lake(url)).ok


def test_unknown_scheme_and_outputs_to_a_url_are_bad_input(tmp_path):
    from cld_lake.storage import location

    with pytest.raises(BadInputError, match="unknown URL scheme 'hdfs'"):
        location("hdfs://namenode/lake")
    assert location(f"file://{tmp_path}/lake").local_path == tmp_path / "lake"
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    files = _files(tmp_path)
    cld_lake.import_file(url, "train", loss=files["loss"], labels=files["labels"],
                         num_classes=C)  # fmt: skip
    cld_lake.import_file(url, "val", loss=files["vloss"], labels=files["vlabels"])
    cld_lake.score(url)
    with pytest.raises(BadInputError, match="local file"):
        cld_lake.select(url, score="cld", fraction=0.1, out="s3://lakes/m.parquet")
    assert isinstance(cld_lake.query(url, "SELECT count(*) FROM scores"), pl.DataFrame)


def test_an_output_given_as_a_url_is_refused_at_the_cli(tmp_path):
    files = _files(tmp_path)
    lake = tmp_path / "lake"
    _import(str(lake), files)
    _ok("score", lake)
    proc = _run("select", lake, "--score", "cld", "--fraction", "0.1", "--out", "s3://b/m.parquet")
    assert proc.returncode == 2 and "local file" in proc.stderr, proc.stderr
