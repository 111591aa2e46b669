"""The store contract: every :class:`~cld_lake.storage.Store` (a local directory, fsspec's
in-process memory, S3 through s3fs and through obstore on a moto server) passes the same
tests, as zarr's ``StoreTests`` holds every zarr store to one contract."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from cld_lake.errors import LakeChangedError, LakeLockedError
from cld_lake.storage import Lease, Lock, StorePath, VersionConflict, local_file, location


class StoreContract:
    """The contract; a subclass provides the ``root`` fixture: an empty place on its store."""

    #: does a lock of this store expire when its holder stops renewing it (a lease)?
    expiring_locks = False
    #: is it the local disk (a location has a file-system path)?
    on_local_disk = False
    #: do its objects live in this process only (fsspec's memory://)?
    process_local = False

    # --- reads and atomic puts ------------------------------------------------------------
    def test_a_put_object_reads_back_whole_and_by_ranges(self, root: StorePath):
        data = bytes(range(256)) * 40
        (root / "a" / "b.bin").put(data)
        key = root / "a" / "b.bin"
        assert key.read() == data
        assert key.read_range(10, 100) == data[10:110]
        assert key.read_range(len(data) - 5, 100) == data[-5:]  # fewer at the end
        assert key.exists() and (root / "a").exists()
        assert key.version() is not None

    def test_put_takes_several_buffers(self, root: StorePath):
        (root / "parts").put([b"abc", memoryview(b"def")])
        assert (root / "parts").read() == b"abcdef"

    def test_read_into_fills_a_buffer_and_tells_a_longer_object(self, root: StorePath):
        (root / "x").put(b"0123456789")
        out = bytearray(11)
        assert (root / "x").read_into(memoryview(out)) == 10
        assert bytes(out[:10]) == b"0123456789"
        short = bytearray(4)
        assert (root / "x").read_into(memoryview(short)) == 4  # as many as it holds
        assert bytes(short) == b"0123"

    def test_a_missing_key_is_file_not_found(self, root: StorePath):
        missing = root / "nothing"
        for read in (missing.read, lambda: missing.read_range(0, 1)):
            with pytest.raises(FileNotFoundError):
                read()
        with pytest.raises(FileNotFoundError):
            missing.read_into(memoryview(bytearray(4)))
        assert not missing.exists()
        assert missing.version() is None
        assert missing.list() == []
        missing.delete()  # nothing to delete: no error
        missing.delete_tree()

    def test_a_reader_fetches_the_ranges_parquet_asks_for(self, root: StorePath):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"x": list(range(10_000)), "y": [str(i) for i in range(10_000)]})
        with (root / "t.parquet").put_file() as tmp:
            pq.write_table(table, tmp, row_group_size=1000)
        pf = pq.ParquetFile((root / "t.parquet").open_reader())
        assert pf.metadata.num_row_groups == 10
        assert pf.read_row_group(7).column("x").to_pylist() == list(range(7000, 8000))

    def test_a_put_is_seen_whole_by_concurrent_readers(self, root: StorePath):
        key = root / "swap"
        size = 1 << 16
        key.put(b"a" * size)
        seen: set[bytes] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                data = key.read()
                seen.add(bytes({*data}) if len(data) == size else b"torn")

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(20):
                key.put((b"b" if i % 2 else b"a") * size)
        finally:
            stop.set()
            reader.join()
        assert seen <= {b"a", b"b"}

    def test_put_file_replaces_whole_and_a_failed_block_changes_nothing(self, root: StorePath):
        key = root / "f.json"
        key.put(b"old")
        with key.put_file() as tmp:
            tmp.write_bytes(b"new")
        assert key.read() == b"new"
        with pytest.raises(RuntimeError), key.put_file() as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
        assert key.read() == b"new"
        assert key.parent.list() == ["f.json"]  # no temp file left

    def test_put_new_makes_its_folders(self, root: StorePath):
        (root / "seg" / "c" / "0" / "0").put_new([b"12", b"34"], durable=True)
        assert (root / "seg" / "c" / "0" / "0").read() == b"1234"

    # --- conditional writes ---------------------------------------------------------------
    def test_put_if_absent_has_exactly_one_winner(self, root: StorePath):
        key = root / "lock"
        results: list[bool] = []
        barrier = threading.Barrier(6)

        def race(i: int) -> None:
            barrier.wait()
            results.append(key.put_if_absent(f"writer {i}".encode()))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 5 + [True]
        assert key.read().startswith(b"writer ")
        assert not key.put_if_absent(b"late")

    def test_replace_if_refuses_a_stale_version(self, root: StorePath):
        key = root / "record"
        key.put(b"first")
        first = key.version()
        assert first is not None
        assert key.replace_if(b"second", first)
        second = key.version()
        assert second != first and key.read() == b"second"
        assert not key.replace_if(b"stale", first)
        assert key.read() == b"second"
        assert not (root / "absent").replace_if(b"x", first)

    def test_of_racing_replacements_on_one_version_one_wins(self, root: StorePath):
        key = root / "record"
        key.put(b"v0")
        version = key.version()
        results: list[bool] = []
        barrier = threading.Barrier(4)

        def race(i: int) -> None:
            barrier.wait()
            results.append(key.replace_if(f"v1 by {i}".encode(), version))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 3 + [True]

    def test_a_conditional_put_file_writes_only_while_its_condition_holds(self, root: StorePath):
        key = root / "checkpoints.parquet"
        with key.put_file(if_absent=True) as tmp:
            tmp.write_bytes(b"first")
        first = key.version()
        with pytest.raises(VersionConflict), key.put_file(if_absent=True) as tmp:
            tmp.write_bytes(b"again")
        with key.put_file(if_version=first) as tmp:
            tmp.write_bytes(b"second")
        with pytest.raises(VersionConflict), key.put_file(if_version=first) as tmp:
            tmp.write_bytes(b"stale")
        assert key.read() == b"second"
        assert sorted(key.parent.list()) == ["checkpoints.parquet"]  # no temp file left

    # --- listing, deleting, sizes ---------------------------------------------------------
    def test_list_walk_delete_and_bytes_of_a_tree(self, root: StorePath):
        (root / "tree" / "a").put(b"1")
        (root / "tree" / "sub" / "b").put(b"22")
        (root / "tree" / "sub" / "deep" / "c").put(b"333")
        (root / "treetop").put(b"4444")  # shares the prefix "tree", not the folder
        assert sorted((root / "tree").list()) == ["a", "sub"]
        assert sorted(p.name for p in (root / "tree").iterdir()) == ["a", "sub"]
        walked = sorted(str(p) for p in (root / "tree").walk())
        assert walked == sorted(str(root / "tree" / k) for k in ("a", "sub/b", "sub/deep/c"))
        assert (root / "tree").tree_bytes() == 6
        (root / "tree" / "a").delete()
        assert sorted((root / "tree").list()) == ["sub"]
        (root / "tree").delete_tree()
        assert not (root / "tree").exists()
        assert (root / "treetop").read() == b"4444"

    def test_a_location_names_itself(self, root: StorePath):
        key = root / "splits" / "train"
        assert key.name == "train" and key.parent == root / "splits"
        assert str(key) == f"{root}/splits/train"
        assert location(str(key)) == key
        assert key.is_within(root) and not root.is_within(key)
        assert not (root / "splitsx").is_within(root / "splits")

    def test_a_location_says_where_it_lives(self, root: StorePath):
        out = root / "out.parquet"
        assert (out.local_path is not None) is self.on_local_disk
        assert local_file(out) == out.local_path  # an output file: local, or None
        assert local_file(str(out)) == out.local_path  # as the user names it
        assert root.store.process_local is self.process_local

    # --- locks ----------------------------------------------------------------------------
    @pytest.mark.timeout(30)
    def test_a_lock_is_exclusive_and_names_its_holder(self, root: StorePath):
        root.make_folder()
        first, second = (root / ".lock").lock("writer A"), (root / ".lock").lock("writer B")
        assert isinstance(first, Lock)
        assert first.try_acquire() is None and first.held
        try:
            held_by = second.try_acquire()
            assert held_by is not None and "writer A" in held_by
            assert not second.held
            first.check()
        finally:
            first.release()
        assert not first.held
        assert second.try_acquire() is None
        second.release()

    @pytest.mark.timeout(60)
    def test_a_waiting_lock_gets_it_when_released(self, root: StorePath):
        root.make_folder()
        holder = (root / ".lock").lock("writer A")
        assert holder.try_acquire() is None
        got: list[float] = []

        def wait() -> None:
            with (root / ".lock").lock("writer B"):
                got.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        assert not got  # still waiting
        released = time.monotonic()
        holder.release()
        waiter.join(timeout=30)
        assert got and got[0] >= released

    @pytest.mark.timeout(30)
    def test_an_expired_lease_is_taken_over_and_its_holder_cannot_go_on(self, root: StorePath):
        if not self.expiring_locks:
            pytest.skip("an flock lives as long as its holder: nothing expires")
        root.make_folder()
        dead = Lease(root / ".lock", "writer A", seconds=0.6)
        assert dead.try_acquire() is None
        dead._stop.set()  # A stops renewing (a process stopped or killed)
        dead._thread.join()
        assert "writer A" in Lease(root / ".lock", "writer B").try_acquire()
        time.sleep(0.7)
        taker = Lease(root / ".lock", "writer B", seconds=30)
        assert taker.try_acquire() is None
        with pytest.raises(LakeChangedError, match="lost its lease to writer B"):
            dead.check()
        taker.release()

    @pytest.mark.timeout(30)
    def test_a_lock_held_too_long_is_refused_after_the_timeout(self, root: StorePath):
        if not self.expiring_locks:
            pytest.skip("an flock waits for its holder (the kernel frees it when it dies)")
        root.make_folder()
        holder = (root / ".lock").lock("writer A")
        assert holder.try_acquire() is None
        try:
            with pytest.raises(LakeLockedError, match="held by writer A"):
                (root / ".lock").lock("writer B").acquire(timeout=0.2)
        finally:
            holder.release()


class TestLocalStore(StoreContract):
    on_local_disk = True

    @pytest.fixture
    def root(self, tmp_path) -> StorePath:
        return location(tmp_path / "store")


class TestMemoryStore(StoreContract):
    expiring_locks = True
    process_local = True

    @pytest.fixture
    def root(self) -> StorePath:
        return location(f"memory://{uuid.uuid4().hex[:8]}/store")


class TestS3ThroughFsspec(StoreContract):
    expiring_locks = True

    @pytest.fixture
    def root(self, s3_env, monkeypatch) -> StorePath:
        from tests._s3server import BUCKET

        monkeypatch.setenv("CLD_LAKE_S3_CLIENT", "fsspec")
        return location(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/store")


class TestS3ThroughObstore(StoreContract):
    expiring_locks = True

    @pytest.fixture
    def root(self, s3_env, monkeypatch) -> StorePath:
        pytest.importorskip("obstore")
        from tests._s3server import BUCKET

        monkeypatch.setenv("CLD_LAKE_S3_CLIENT", "obstore")
        return location(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/store")
