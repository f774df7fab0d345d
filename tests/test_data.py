"""Loading text, splitting it, and drawing reproducible batches."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

from asteria_bench.workload import data as data_module
from asteria_bench.workload.corpus import DEFAULT_CORPUS_BYTES
from asteria_bench.workload.data import ByteDataset, DataError, default_dataset, load_text

torch.set_num_threads(1)

TEXT = b"the quick brown fox jumps over the lazy dog. " * 10


def counting_bytes(n: int) -> bytes:
    """Byte i is i mod 256: a window's position can be read off its values."""
    return bytes(i % 256 for i in range(n))


def test_a_text_file_loads_as_is(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT)
    assert load_text(path) == TEXT


def test_a_folder_loads_visible_text_files_sorted_and_joined(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_bytes(b"B" * 100)
    (tmp_path / "a.txt").write_bytes(b"A" * 100)
    (tmp_path / "c.md").write_bytes(b"C" * 100)
    (tmp_path / ".hidden.txt").write_bytes(b"H" * 100)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_bytes(b"G" * 100)
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\0\0\0" * 20)
    (tmp_path / "empty.txt").write_bytes(b"")
    assert load_text(tmp_path) == b"\n".join([b"A" * 100, b"B" * 100, b"C" * 100])


def test_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=r"nope\.txt"):
        load_text(missing)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_text(path)


def test_folder_without_usable_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_bytes(TEXT)
    (tmp_path / "blob").write_bytes(b"\0" * 500)
    with pytest.raises(DataError, match=str(tmp_path.name)):
        load_text(tmp_path)


def test_binary_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(TEXT + b"\0")
    with pytest.raises(DataError, match="NUL"):
        load_text(path)


def test_too_little_text_for_the_context_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_bytes(b"x" * (2 * 16 + 1))
    with pytest.raises(DataError, match="34"):
        load_text(path, context=16)
    path.write_bytes(b"x" * (2 * 16 + 2))
    assert len(load_text(path, context=16)) == 34


def test_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.txt"
    path.write_bytes(TEXT)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=r"locked\.txt"):
        load_text(path)


def test_validation_is_the_contiguous_tail() -> None:
    data = counting_bytes(1000)
    dataset = ByteDataset.from_bytes(data, val_fraction=0.1)
    assert dataset.train.dtype == dataset.val.dtype == torch.uint8
    assert bytes(dataset.train.tolist()) == data[:900]
    assert bytes(dataset.val.tolist()) == data[900:]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_bad_val_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        ByteDataset.from_bytes(TEXT, val_fraction=fraction)


def test_batches_are_int64_windows_with_targets_shifted_by_one() -> None:
    dataset = ByteDataset.from_bytes(counting_bytes(5000))
    x, y = dataset.batch("train", 8, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, (x + 1) % 256)
    assert torch.equal(x[:, 1:], (x[:, :-1] + 1) % 256)


def test_same_generator_seed_gives_the_same_batches() -> None:
    dataset = ByteDataset.from_bytes(TEXT * 10)
    first = [dataset.batch("train", 4, 16, g) for g in [torch.Generator().manual_seed(3)] * 3]
    second = [dataset.batch("train", 4, 16, g) for g in [torch.Generator().manual_seed(3)] * 3]
    other = dataset.batch("train", 4, 16, torch.Generator().manual_seed(4))
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][0], other[0])


def test_batches_stay_inside_their_split() -> None:
    dataset = ByteDataset.from_bytes(bytes([1]) * 900 + bytes([2]) * 100)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = dataset.batch("val", 16, 99, generator)
        assert torch.all(x == 2) and torch.all(y == 2)
        x, y = dataset.batch("train", 16, 99, generator)
        assert torch.all(x == 1) and torch.all(y == 1)


def test_unknown_split_and_short_split_are_rejected() -> None:
    dataset = ByteDataset.from_bytes(counting_bytes(1000))
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="split"):
        dataset.batch("test", 2, 8, generator)
    with pytest.raises(DataError, match="val"):
        dataset.batch("val", 2, 100, generator)


def test_eval_batches_are_fixed_and_evenly_spaced() -> None:
    generator = torch.Generator().manual_seed(0)
    data = bytes(torch.randint(0, 256, (20_000,), generator=generator).tolist())
    dataset = ByteDataset.from_bytes(data, val_fraction=0.1)
    batches = dataset.eval_batches(batch_size=4, context=16, n_batches=3)
    again = dataset.eval_batches(batch_size=4, context=16, n_batches=3)
    assert len(batches) == 3
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert x1.shape == y1.shape == (4, 16)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    val = data[18_000:]
    # Random bytes make every 16-byte window unique, so a row's offset can be found.
    offsets = [val.find(bytes(row.tolist())) for x, _ in batches for row in x]
    assert offsets[0] == 0
    assert offsets[-1] + 16 + 1 == len(val)
    gaps = {b - a for a, b in pairwise(offsets)}
    assert max(gaps) - min(gaps) <= 1 and min(gaps) > 16


def test_default_dataset_is_the_default_corpus_cached_in_process() -> None:
    dataset = default_dataset()
    assert dataset.train.numel() + dataset.val.numel() == DEFAULT_CORPUS_BYTES
    assert dataset.val.numel() == DEFAULT_CORPUS_BYTES // 10
    assert data_module._default_corpus() is data_module._default_corpus()
    assert torch.equal(default_dataset().val, dataset.val)
