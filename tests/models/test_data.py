"""Tests for the byte-level corpora in `models.data` (plain NumPy, no JAX compile)."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import (
    VOCAB_SIZE,
    BatchSampler,
    DataError,
    decode_bytes,
    eval_batches,
    load_corpus,
    split_corpus,
    unigram_bits_per_byte,
)


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return load_corpus()


# ----------------------------------------------------------------------------- loading


def test_default_corpus_is_nontrivial_text_and_deterministic(corpus: bytes) -> None:
    assert isinstance(corpus, bytes)
    assert len(corpus) > 100_000
    corpus.decode("utf-8")  # valid text
    assert load_corpus("pydoc") == corpus
    assert load_corpus() == corpus


def test_stdlib_corpus_is_capped_and_deterministic() -> None:
    small = load_corpus("stdlib", max_bytes=50_000)
    assert len(small) == 50_000
    assert small == load_corpus("stdlib", max_bytes=50_000)
    assert b"import" in small


def test_max_bytes_truncates(corpus: bytes) -> None:
    assert load_corpus(max_bytes=1000) == corpus[:1000]
    with pytest.raises(ValueError):
        load_corpus(max_bytes=0)


def test_text_file_loads(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("héllo wörld\n", encoding="utf-8")
    assert load_corpus(str(path)) == "héllo wörld\n".encode()


def test_folder_of_text_files_loads_sorted_recursively(tmp_path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third", encoding="utf-8")
    (tmp_path / ".hidden").write_text("skipped", encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\xff\xfe")  # binary: skipped
    data = load_corpus(str(tmp_path))
    assert data == b"first\n\nsecond\n\nthird"
    assert load_corpus(str(tmp_path)) == data


def test_missing_path_raises_naming_it(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt"):
        load_corpus(str(missing))


def test_empty_file_raises_naming_it(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt"):
        load_corpus(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t", encoding="utf-8")
    with pytest.raises(DataError, match="blank.txt"):
        load_corpus(str(blank))


def test_empty_folder_raises_naming_it(tmp_path) -> None:
    folder = tmp_path / "emptydir"
    folder.mkdir()
    with pytest.raises(DataError, match="emptydir"):
        load_corpus(str(folder))
    (folder / "e.txt").write_bytes(b"")
    with pytest.raises(DataError, match="emptydir"):
        load_corpus(str(folder))


def test_invalid_utf8_file_raises_naming_path_and_offset(tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(DataError, match=r"bad\.txt.*offset 3"):
        load_corpus(str(bad))


def test_invalid_utf8_file_in_folder_raises_naming_it(tmp_path) -> None:
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "worse.txt").write_bytes(b"ok\xc3(")
    with pytest.raises(DataError, match=r"worse\.txt.*offset 2"):
        load_corpus(str(tmp_path))


def test_tfds_without_package_or_data_raises_data_error() -> None:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="tensorflow_datasets"):
            load_corpus("tfds:lm1b")
    else:
        with pytest.raises(DataError):
            load_corpus("tfds:surely_not_a_dataset_name_xyz")


# ----------------------------------------------------------------------------- split


def test_split_is_deterministic_with_expected_sizes(corpus: bytes) -> None:
    train, valid = split_corpus(corpus, valid_fraction=0.1)
    n_valid = int(len(corpus) * 0.1)
    assert len(valid) == n_valid and len(train) == len(corpus) - n_valid
    assert train.dtype == np.uint8 and valid.dtype == np.uint8
    assert train.tobytes() + valid.tobytes() == corpus
    again_train, again_valid = split_corpus(corpus, valid_fraction=0.1)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(valid, again_valid)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        split_corpus(b"x" * 1000, valid_fraction=fraction)


def test_split_requires_room_for_a_sequence() -> None:
    with pytest.raises(DataError):
        split_corpus(b"x" * 100, valid_fraction=0.05, min_length=10)
    train, valid = split_corpus(b"x" * 200, valid_fraction=0.05, min_length=10)
    assert len(valid) == 10 and len(train) == 190


# ----------------------------------------------------------------------------- sampler


def test_sampler_shapes_dtype_range(corpus: bytes) -> None:
    train, _ = split_corpus(corpus)
    sampler = BatchSampler(train, batch_size=4, seq_len=32, seed=0)
    batch = sampler.batch(0)
    assert batch.shape == (4, 33)
    assert batch.dtype == np.int32
    assert batch.min() >= 0 and batch.max() < VOCAB_SIZE


def test_sampler_windows_are_contiguous_crops() -> None:
    data = np.arange(200, dtype=np.uint8)
    batch = BatchSampler(data, batch_size=8, seq_len=16, seed=3).batch(5)
    np.testing.assert_array_equal(np.diff(batch, axis=1), np.ones((8, 16)))
    assert batch.max() <= 199


def test_sampler_depends_only_on_seed_and_step(corpus: bytes) -> None:
    train, _ = split_corpus(corpus)
    a = BatchSampler(train, batch_size=4, seq_len=32, seed=7)
    b = BatchSampler(train, batch_size=4, seq_len=32, seed=7)
    for _ in range(3):
        a.batch(1)  # order of calls must not matter
    np.testing.assert_array_equal(a.batch(11), b.batch(11))
    assert not np.array_equal(a.batch(11), a.batch(12))
    c = BatchSampler(train, batch_size=4, seq_len=32, seed=8)
    assert not np.array_equal(a.batch(11), c.batch(11))


def test_sampler_resume_reproduces_stream(corpus: bytes) -> None:
    train, _ = split_corpus(corpus)
    sampler = BatchSampler(train, batch_size=2, seq_len=8, seed=1)
    full = list(sampler.batches(0, 6))
    resumed = list(BatchSampler(train, batch_size=2, seq_len=8, seed=1).batches(3, 3))
    for x, y in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(x, y)


def test_sampler_rejects_short_data() -> None:
    with pytest.raises(DataError):
        BatchSampler(np.zeros(8, np.uint8), batch_size=2, seq_len=8, seed=0)
    BatchSampler(np.zeros(9, np.uint8), batch_size=2, seq_len=8, seed=0).batch(0)


# ----------------------------------------------------------------------------- eval


def test_eval_batches_shapes_and_tiling() -> None:
    data = np.arange(101, dtype=np.uint8)
    batches = list(eval_batches(data, batch_size=2, seq_len=10))
    assert len(batches) == 5  # 10 windows of 10 targets each
    for batch in batches:
        assert batch.shape == (2, 11) and batch.dtype == np.int32
    targets = np.concatenate([b[:, 1:].reshape(-1) for b in batches])
    np.testing.assert_array_equal(targets, np.arange(1, 101))
    again = list(eval_batches(data, batch_size=2, seq_len=10))
    for x, y in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x, y)


def test_eval_batches_max_batches_and_errors(corpus: bytes) -> None:
    _, valid = split_corpus(corpus)
    assert len(list(eval_batches(valid, batch_size=4, seq_len=64, max_batches=3))) == 3
    with pytest.raises(DataError):
        eval_batches(np.zeros(20, np.uint8), batch_size=4, seq_len=10)


# ----------------------------------------------------------------------------- baseline


def test_unigram_bits_per_byte_on_default_corpus(corpus: bytes) -> None:
    train, valid = split_corpus(corpus)
    bpb = unigram_bits_per_byte(train, valid)
    assert 3.0 < bpb < 8.0


def test_unigram_bits_per_byte_closed_form() -> None:
    # Train on nothing: add-one smoothing gives the uniform model, exactly 8 bits.
    assert unigram_bits_per_byte(b"", b"abc") == pytest.approx(8.0)


def test_decode_bytes_round_trip() -> None:
    text = "byte-level ✓"
    assert decode_bytes(np.frombuffer(text.encode(), np.uint8).astype(np.int32)) == text
