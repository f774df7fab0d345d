"""The NVMe spill tier: bitwise round trips, checks on read, failures, clean-up."""

from __future__ import annotations

import errno
import gc
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.spill import (
    ChecksumError,
    SpillDirectory,
    SpillError,
    SpillFull,
    SpillKey,
    SpillStore,
    SpillWriteError,
    probe_direct_io,
)
from runtime.spill.owner import OWNER_FILENAME
from traces.recorder import Recorder
from traces.schema import Category, Tier

ROOT = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.int64)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bit patterns (NaNs and infinities included): only a bitwise check passes."""
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).view(dtype).reshape(shape)


def files_in(path: Path) -> list[str]:
    """The spilled files (the folder's owner record aside)."""
    return sorted(name for name in os.listdir(path) if name != OWNER_FILENAME)


@pytest.fixture(scope="module", params=["probed", "buffered"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SpillStore]:
    parent = tmp_path_factory.mktemp("spill")
    with SpillStore(parent, direct_io=None if request.param == "probed" else False) as s:
        yield s


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 37), max_size=3).map(tuple),
    dtype=st.sampled_from(DTYPES),
    lead=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_is_bitwise(
    store: SpillStore, shape: tuple[int, ...], dtype: torch.dtype, lead: int, seed: int
) -> None:
    numel = torch.Size(shape).numel()
    tensor = random_tensor((lead + numel,), dtype, seed)[lead:].reshape(shape)  # varied skew
    key = SpillKey(f"blk/{seed}", "QL")
    store.write(key, tensor)
    back = store.read(key)
    assert back.dtype == dtype and back.shape == tensor.shape and back.device.type == "cpu"
    assert torch.equal(as_bytes(back), as_bytes(tensor))
    assert store.entry(key).path.stat().st_size % 4096 == 0
    store.remove(key)
    assert key not in store


@pytest.mark.cuda  # pinned read buffers where CUDA is present
def test_large_tensor_through_segments_and_into_out(tmp_path: Path) -> None:
    """An unaligned source, and reads into ``out`` tensors with and without the file's skew."""
    tensor = random_tensor((3 * 4096 * 3 + 5,), torch.float32, 1)[1:]  # unaligned address
    with SpillStore(tmp_path, segment_bytes=4 * 4096) as s:
        s.write(("b", "big"), tensor)
        back = s.read(("b", "big"))
        assert torch.equal(as_bytes(back), as_bytes(tensor))
        assert back.is_pinned() == torch.cuda.is_available() == s.pin_memory
        assert s.entry(("b", "big")).skew == (tensor.data_ptr() % 4096 if s.direct_io else 0)
        out = torch.empty(tensor.numel() + 1)[1:]  # another skew: through the bounce buffer
        assert s.read(("b", "big"), out=out) is out
        assert torch.equal(as_bytes(out), as_bytes(tensor))
        same = s.read(("b", "big"))  # the file's skew: in place but for the end blocks
        same.zero_()
        s.read(("b", "big"), out=same)
        assert torch.equal(as_bytes(same), as_bytes(tensor))
        with pytest.raises(ValueError, match="out must be"):
            s.read(("b", "big"), out=torch.empty(3))


def test_directory_is_private_unique_and_removed(tmp_path: Path) -> None:
    a, b = SpillDirectory(tmp_path), SpillDirectory(tmp_path)
    assert a.path != b.path and a.path.parent == tmp_path == b.path.parent
    assert a.path.name.startswith("asteria-spill-")
    for d in (a, b):
        assert stat.S_IMODE(d.path.stat().st_mode) == 0o700
    (a.path / "stray").write_bytes(b"x")
    a.close()
    a.close()  # idempotent
    assert a.closed and not a.path.exists() and b.path.exists()
    b.close()
    assert files_in(tmp_path) == []


def test_a_dropped_directory_is_removed_by_the_garbage_collector(tmp_path: Path) -> None:
    spill = SpillDirectory(tmp_path)
    (spill.path / "x").write_bytes(b"x")
    del spill
    gc.collect()
    assert files_in(tmp_path) == []


def test_close_removes_every_file_and_refuses_more_work(tmp_path: Path) -> None:
    s = SpillStore(tmp_path)
    for i in range(4):
        s.write_async((f"b{i}", "R"), torch.randn(1000))
    s.flush()
    assert len(files_in(s.path)) == 4 and len(s) == 4
    s.close()
    s.close()
    assert files_in(tmp_path) == []
    with pytest.raises(SpillError, match="closed"):
        s.write(("b0", "R"), torch.randn(3))


CHILD = """
import signal, sys, time
# A child of a shell running in the background starts with SIGINT ignored; a user's
# process (the case under test) has Python's KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {root!r})
from runtime.spill import SpillDirectory
assert "torch" not in sys.modules  # setting up a spill directory does not load torch
spill = SpillDirectory({parent!r})
(spill.path / "blk.QL.spill").write_bytes(b"x" * 4096)
print(spill.path, flush=True)
time.sleep(60)
"""


def test_signals_remove_the_spill_directory(tmp_path: Path) -> None:
    """SIGTERM: the child cleans up and dies of the signal; SIGINT: KeyboardInterrupt still."""
    children = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        parent = tmp_path / signum.name
        parent.mkdir()
        code = CHILD.format(root=str(ROOT), parent=str(parent))
        children[signum] = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for signum, child in children.items():
        assert child.stdout is not None
        spill = Path(child.stdout.readline().strip())
        assert spill.name.startswith("asteria-spill-"), child.communicate(timeout=30)
        assert spill.is_dir() and len(files_in(spill)) == 1
        child.send_signal(signum)
        _, err = child.communicate(timeout=30)
        assert not spill.exists(), err
        if signum == signal.SIGTERM:
            assert child.returncode == -signal.SIGTERM, err
        else:
            assert "KeyboardInterrupt" in err and child.returncode != 0


def test_flipped_payload_byte_raises_checksum_error(tmp_path: Path) -> None:
    with SpillStore(tmp_path) as s:
        key = SpillKey("layers.0.attn/3", "QR")
        s.write(key, torch.randn(64, 64))
        entry = s.entry(key)
        with open(entry.path, "r+b") as fh:
            fh.seek(entry.payload_offset + 1234)
            byte = fh.read(1)
            fh.seek(entry.payload_offset + 1234)
            fh.write(bytes([byte[0] ^ 0x10]))
        with pytest.raises(ChecksumError) as info:
            s.read(key)
        assert str(entry.path) in str(info.value) and "'layers.0.attn/3', 'QR'" in str(info.value)
        assert info.value.key == key and info.value.path == entry.path
        with open(entry.path, "r+b") as fh:  # a damaged header is caught too
            fh.seek(20)
            fh.write(b"#")
        with pytest.raises(ChecksumError, match="header"):
            s.read(key)


def failing_writer(code: int, after_calls: int) -> Callable[[int, memoryview], int]:
    """``os.write`` that succeeds ``after_calls`` times, then fails with ``code``."""
    calls = [0]

    def write(fd: int, data: memoryview) -> int:
        calls[0] += 1
        if calls[0] > after_calls:
            raise OSError(code, os.strerror(code))
        return os.write(fd, data)

    return write


def test_enospc_raises_spill_full_and_leaves_no_partial_file(tmp_path: Path) -> None:
    rec, seen = Recorder(), list[SpillWriteError]()
    spill_dir = SpillDirectory(tmp_path)
    with SpillStore(
        spill_dir, recorder=rec, writer=failing_writer(errno.ENOSPC, 1), on_failure=seen.append
    ) as s:
        with pytest.raises(SpillFull) as info:
            s.write(("blk", "L"), torch.randn(3, 4096))  # payload written, header fails
        assert info.value.key == ("blk", "L") and info.value.errno == errno.ENOSPC
        assert "blk" in str(info.value) and str(spill_dir.path) in str(info.value)
        assert files_in(spill_dir.path) == [] and ("blk", "L") not in s and s.total_bytes() == 0
        assert seen == [info.value] and s.stats().failures == 1
        (event,) = [sp for sp in rec.spans if sp.name == "spill_write_failed"]
        assert event.category == Category.EVENT and event.block == "blk" and event.duration_ns == 0
    with SpillStore(spill_dir, writer=failing_writer(errno.EIO, 0)) as s:
        with pytest.raises(SpillWriteError) as io_info:
            s.write(("blk", "L"), torch.randn(10))
        assert not isinstance(io_info.value, SpillFull)
        assert files_in(spill_dir.path) == []
    spill_dir.close()


def test_failed_rewrite_drops_the_stale_version(tmp_path: Path) -> None:
    full = [False]

    def writer(fd: int, data: memoryview) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    with SpillStore(tmp_path, writer=writer) as s:
        s.write(("b", "M"), torch.ones(8))
        full[0] = True
        with pytest.raises(SpillFull):
            s.write(("b", "M"), torch.zeros(8))
        assert ("b", "M") not in s and files_in(s.path) == []
        with pytest.raises(KeyError):
            s.read(("b", "M"))


def test_bad_parent_is_refused_naming_the_path(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for parent in (a_file, a_file / "below", tmp_path / "missing"):
        with pytest.raises(SpillError, match=re.escape(str(parent))):
            SpillDirectory(parent)
        with pytest.raises(SpillError, match=re.escape(str(parent))):
            SpillStore(parent)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(SpillError, match="not writable"):
            SpillDirectory(locked)
    finally:
        locked.chmod(0o700)


def test_pool_writes_concurrently_and_keeps_per_key_order(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=10)  # passes only if two writes are in flight at once
    lock, waited = threading.Lock(), set[int]()

    def writer(fd: int, data: memoryview) -> int:
        with lock:
            wait = len(waited) < 2 and fd not in waited
            waited.add(fd)
        if wait:
            barrier.wait()
        return os.write(fd, data)

    rec = Recorder()
    with SpillStore(tmp_path, writer=writer, recorder=rec) as s:
        futures = [s.write_async((f"b{i}", "QL"), torch.full((4096,), float(i))) for i in range(2)]
        for f in futures:
            f.result(timeout=20)
        # later writes of one key win, and a read submitted at once sees the last one
        writes = [s.write_async(("k", "V"), torch.full((2048,), float(v))) for v in range(6)]
        reads = [s.read_async(("k", "V")), *[s.read_async((f"b{i}", "QL")) for i in range(2)]]
        for f in writes:
            f.result(timeout=20)
        assert torch.equal(reads[0].result(timeout=20), torch.full((2048,), 5.0))
        # a read submitted before a rewrite sees the old bytes, one after it the new
        old, rewrite = s.read_async(("k", "V")), s.write_async(("k", "V"), torch.zeros(2048))
        new = s.read_async(("k", "V"))
        assert torch.equal(old.result(), torch.full((2048,), 5.0))
        assert rewrite.result() is None and torch.equal(new.result(), torch.zeros(2048))
        assert all(
            torch.equal(reads[1 + i].result(), torch.full((4096,), float(i))) for i in range(2)
        )
        assert sorted(s.keys()) == [("b0", "QL"), ("b1", "QL"), ("k", "V")]
        assert s.total_bytes() == 2 * 4096 * 4 + 2048 * 4
    spans = [sp for sp in rec.spans if sp.name in ("spill_write", "spill_read")]
    assert spans and all(
        sp.category == Category.IO and sp.track.startswith("spill-io") for sp in spans
    )
    read = next(sp for sp in spans if sp.name == "spill_read" and sp.block == "k")
    assert (read.tier_from, read.tier_to, read.bytes, read.detail) == (
        Tier.NVME,
        Tier.HOST,
        8192,
        "V",
    )
    write = next(sp for sp in spans if sp.name == "spill_write")
    assert (write.tier_from, write.tier_to) == (Tier.HOST, Tier.NVME)


def test_io_mode_is_reported(tmp_path: Path) -> None:
    probed = probe_direct_io(tmp_path)
    with SpillStore(tmp_path) as s:
        assert s.direct_io is probed is s.directory.direct_io
    with SpillStore(tmp_path, direct_io=False) as s:
        assert s.direct_io is False
        s.write(("b", "x"), torch.arange(10))
        assert torch.equal(s.read(("b", "x")), torch.arange(10))
    assert files_in(tmp_path) == []


def test_rejects_device_or_strided_tensors_and_bad_keys(tmp_path: Path) -> None:
    with SpillStore(tmp_path) as s:
        with pytest.raises(ValueError, match="contiguous CPU"):
            s.write_async(("b", "x"), torch.randn(4, 4).T)
        with pytest.raises(TypeError, match="pair of strings"):
            s.write_async(("b", 1), torch.randn(4))  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            s.read_async(("nope", "x"))
        with pytest.raises(KeyError):
            s.remove(("nope", "x"))


def test_bench_nvme_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_nvme.py"),
            "--quick",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "load average" in out and "spill I/O mode:" in out and "raw I/O mode:" in out
    rows = {
        cells[0]: cells
        for line in out.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    assert rows["direction"] == ["direction", "spill MB/s", "raw MB/s", "ratio"]
    for direction in ("write", "read"):
        spill, raw, ratio = (float(x) for x in rows[direction][1:])
        assert spill > 0 and raw > 0 and ratio == pytest.approx(spill / raw, rel=0.02, abs=0.01)
    assert files_in(tmp_path) == []


def test_a_spill_parent_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SpillError, match="symbolic link"):
        SpillDirectory(tmp_path / "link")
    assert not list(real.iterdir())


def test_a_spill_parent_of_another_user_is_refused_unless_shared_and_sticky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.spill import directory

    monkeypatch.setattr(directory.os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(SpillError, match="belongs to another user"):
        SpillDirectory(tmp_path)
    os.chmod(tmp_path, 0o1777)  # as /tmp: others cannot remove what we make
    SpillDirectory(tmp_path).close()


def test_a_killed_runs_spill_folder_is_reclaimed_and_a_live_ones_kept(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from runtime.spill.owner import OWNER_FILENAME, Owner

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone = tmp_path / "asteria-spill-dead"
    gone.mkdir()
    (gone / "b0.R.spill").write_bytes(b"x" * 4096)
    me = Owner.this_process()
    (gone / OWNER_FILENAME).write_text(
        json.dumps({"host": me.host, "pid": int(dead.stdout), "started": 1.0})
    )
    alive = tmp_path / "asteria-spill-alive"
    alive.mkdir()
    (alive / OWNER_FILENAME).write_text(
        json.dumps({"host": me.host, "pid": me.pid, "started": me.started})
    )
    unknown = tmp_path / "asteria-spill-unknown"  # no owner record: not ours to judge
    unknown.mkdir()
    folder = SpillDirectory(tmp_path)
    try:
        assert [r.path for r in folder.reclaimed] == [gone]
        assert folder.reclaimed[0].nbytes >= 4096
        assert not gone.exists() and alive.exists() and unknown.exists()
    finally:
        folder.close()
