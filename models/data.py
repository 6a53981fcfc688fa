"""Byte-level corpora for the DEQ Transformer language model.

A text is modelled as its UTF-8 bytes: the vocabulary is the 256 byte values and there is
no tokenizer. This module turns a corpus specification into bytes (`load_corpus`), splits it
into training and validation arrays (`split_corpus`), draws deterministic, resumable random
crops for training (`BatchSampler`), walks the validation data in fixed windows
(`eval_batches`), and computes a baseline to report next to the model's loss
(`unigram_bits_per_byte`).

Every function here is plain NumPy; nothing needs JAX or compiles anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "VOCAB_SIZE",
    "STDLIB_MAX_BYTES",
    "TFDS_MAX_BYTES",
    "DataError",
    "load_corpus",
    "split_corpus",
    "BatchSampler",
    "eval_batches",
    "unigram_bits_per_byte",
    "decode_bytes",
]

VOCAB_SIZE: int = 256
"""Number of distinct tokens: one per byte value."""

STDLIB_MAX_BYTES: int = 8 * 2**20
"""Default cap (8 MiB) on the ``"stdlib"`` corpus, which is otherwise about 30 MB."""

TFDS_MAX_BYTES: int = 8 * 2**20
"""Default cap (8 MiB) on a ``"tfds:<name>"`` corpus."""

_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
_BINARY_SNIFF_BYTES = 8192


class DataError(ValueError):
    """A corpus cannot be loaded, or is too short for what was asked of it."""


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_corpus(spec: str = "pydoc", *, max_bytes: int | None = None) -> bytes:
    """Return the UTF-8 bytes of a text corpus.

    Args:
      spec: which corpus.

        - ``"pydoc"`` (default): the English help texts of CPython's
          ``pydoc_data.topics.topics``, in sorted key order, each stripped of surrounding
          whitespace and separated by a blank line (about 0.46 MB). It ships with every
          Python, so it needs no download, and it is the same on every run of one Python
          version.
        - ``"stdlib"``: the ``.py`` sources of the Python standard library
          (``os.path.dirname(os.__file__)``) in sorted path order, joined by newlines.
          Directories named ``site-packages``, ``dist-packages``, ``test``, ``tests``,
          ``idle_test`` and ``__pycache__`` are skipped, and so is any file that is not
          valid UTF-8. Capped at `STDLIB_MAX_BYTES` (8 MiB) unless ``max_bytes`` says
          otherwise.
        - ``"tfds:<name>"``: the ``train`` split of a TensorFlow Datasets text dataset
          (``<name>`` may carry a config, e.g. ``"tfds:lm1b"``). Only works when
          ``tensorflow_datasets`` is installed (``pip install -e '.[tfds]'``) and the
          dataset is already prepared locally; this function never downloads. Its text
          feature is ``"text"`` if present, else the first string feature. Capped at
          `TFDS_MAX_BYTES` (8 MiB) unless ``max_bytes`` says otherwise.
        - anything else is a path: a UTF-8 text file, or a folder whose files are read
          recursively in sorted relative-path order and joined by blank lines. In a
          folder, hidden files and folders (name starting with ``.``) are skipped, and
          so are binary files (a NUL byte in their first 8 KiB); every other file must
          be valid UTF-8.

      max_bytes: keep at most this many leading bytes (the cut may split a multi-byte
        character, which a byte-level model does not mind). ``None`` means the source's
        default: the caps above for ``"stdlib"`` and ``"tfds:..."``, no cap otherwise.

    Returns:
      The corpus as bytes, never empty.

    Raises:
      DataError: the path does not exist, holds no text (empty or whitespace only), or
        a file is not valid UTF-8 (the message names the file and the byte offset); or
        a ``tfds:`` dataset is unavailable.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    if spec == "pydoc":
        data = _load_pydoc()
        where = "pydoc_data.topics"
    elif spec == "stdlib":
        cap = STDLIB_MAX_BYTES if max_bytes is None else max_bytes
        data = _load_stdlib(cap)
        where = "the standard library"
    elif spec.startswith("tfds:"):
        cap = TFDS_MAX_BYTES if max_bytes is None else max_bytes
        data = _load_tfds(spec[len("tfds:") :], cap)
        where = spec
    else:
        data = _load_path(Path(spec), max_bytes)
        where = spec
    if max_bytes is not None:
        data = data[:max_bytes]
    if not data.strip():
        raise DataError(f"corpus {where!r} holds no text")
    return data


def _load_pydoc() -> bytes:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    return text.encode("utf-8")


def _load_stdlib(cap: int) -> bytes:
    root = Path(os.path.dirname(os.__file__))
    pieces: list[bytes] = []
    total = 0
    for path in _walk_sorted(root, skip_dirs=_STDLIB_EXCLUDED_DIRS, skip_hidden=False):
        if path.suffix != ".py":
            continue
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append(raw)
        total += len(raw) + 1
        if total >= cap:
            break
    return b"\n".join(pieces)[:cap]


def _load_tfds(name: str, cap: int) -> bytes:
    if not name:
        raise DataError("empty dataset name in 'tfds:'; use e.g. 'tfds:lm1b'")
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(
            f"corpus 'tfds:{name}' needs tensorflow_datasets, which is not installed: "
            "run `pip install -e '.[tfds]'`, then prepare the dataset once with "
            f"`tfds build {name}` (this loader never downloads)"
        ) from err
    try:
        ds = tfds.load(name, split="train", download=False)
    except Exception as err:  # tfds raises assorted types for "not prepared".
        raise DataError(
            f"TFDS dataset {name!r} is not prepared locally ({type(err).__name__}: {err}); "
            f"prepare it once with `tfds build {name}` or "
            f"`tfds.load({name!r}, download=True)` (this loader never downloads)"
        ) from err
    spec = ds.element_spec
    if not isinstance(spec, dict):
        raise DataError(f"TFDS dataset {name!r} does not yield a dict of features")
    string_keys = [k for k, v in spec.items() if getattr(v, "dtype", None) == "string"]
    if "text" in spec:
        key = "text"
    elif string_keys:
        key = string_keys[0]
    else:
        raise DataError(f"TFDS dataset {name!r} has no string (text) feature")
    pieces: list[bytes] = []
    total = 0
    for example in tfds.as_numpy(ds):
        raw = bytes(example[key])
        pieces.append(raw)
        total += len(raw) + 1
        if total >= cap:
            break
    return b"\n".join(pieces)[:cap]


def _load_path(path: Path, cap: int | None) -> bytes:
    if not path.exists():
        raise DataError(f"corpus path {str(path)!r} does not exist")
    if path.is_file():
        raw = path.read_bytes()
        _check_utf8(raw, path)
        if not raw.strip():
            raise DataError(f"corpus file {str(path)!r} is empty (holds no text)")
        return raw
    if not path.is_dir():
        raise DataError(f"corpus path {str(path)!r} is neither a file nor a folder")
    pieces: list[bytes] = []
    total = 0
    for file in _walk_sorted(path, skip_dirs=frozenset(), skip_hidden=True):
        raw = file.read_bytes()
        if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
            continue
        _check_utf8(raw, file)
        if not raw.strip():
            continue
        pieces.append(raw)
        total += len(raw) + 2
        if cap is not None and total >= cap:
            break
    if not pieces:
        raise DataError(f"corpus folder {str(path)!r} holds no text files")
    return b"\n\n".join(pieces)


def _check_utf8(raw: bytes, path: Path) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"corpus file {str(path)!r} is not valid UTF-8: "
            f"undecodable byte at offset {err.start} ({err.reason})"
        ) from err


def _walk_sorted(root: Path, *, skip_dirs: frozenset[str], skip_hidden: bool) -> Iterator[Path]:
    """Yield the regular files under ``root``, recursively, in sorted relative-path order."""
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in skip_dirs and not (skip_hidden and d.startswith("."))
        ]
        for name in filenames:
            if skip_hidden and name.startswith("."):
                continue
            full = Path(dirpath) / name
            if full.is_file():
                files.append((full.relative_to(root).as_posix(), full))
    files.sort(key=lambda item: item[0])
    for _, full in files:
        yield full


# --------------------------------------------------------------------------------------
# Splitting, sampling, evaluation
# --------------------------------------------------------------------------------------


def _as_bytes_array(data: bytes | bytearray | memoryview | ArrayLike, name: str) -> np.ndarray:
    """View ``data`` as a 1-D uint8 array, checking that it holds byte values."""
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    array = np.asarray(data)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer byte values, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= VOCAB_SIZE):
        raise ValueError(f"{name} must hold values in [0, {VOCAB_SIZE - 1}]")
    return array.astype(np.uint8)


def split_corpus(
    data: bytes | np.ndarray, valid_fraction: float = 0.05, min_length: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Split a corpus into training and validation bytes, deterministically.

    With ``n = len(data)`` and ``n_valid = floor(n * valid_fraction)``, training is
    ``data[: n - n_valid]`` and validation is the last ``n_valid`` bytes. Nothing is
    shuffled, so no validation text leaks into training through overlapping crops.

    Args:
      data: the corpus, as bytes or a 1-D array of byte values.
      valid_fraction: share of the corpus that goes to validation, in (0, 1).
      min_length: the least length each part must have; pass ``seq_len + 1`` to ensure
        both parts hold at least one input/target sequence.

    Returns:
      ``(train, valid)``, two 1-D ``uint8`` arrays (copies).

    Raises:
      ValueError: ``valid_fraction`` is not in (0, 1) or ``min_length`` < 1.
      DataError: either part would be shorter than ``min_length``.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if min_length < 1:
        raise ValueError(f"min_length must be at least 1, got {min_length}")
    array = _as_bytes_array(data, "data")
    n = len(array)
    n_valid = math.floor(n * valid_fraction)
    n_train = n - n_valid
    if n_train < min_length or n_valid < min_length:
        raise DataError(
            f"corpus of {n} bytes split with valid_fraction={valid_fraction} gives "
            f"{n_train} training and {n_valid} validation bytes; each part needs at least "
            f"{min_length} (seq_len + 1): use a larger corpus, a shorter sequence, or "
            "another valid_fraction"
        )
    return array[:n_train].copy(), array[n_train:].copy()


class BatchSampler:
    """Deterministic, resumable random crops of a byte array.

    Batch ``step`` holds ``batch_size`` windows of ``seq_len + 1`` consecutive bytes
    whose start offsets are drawn uniformly from ``[0, len(data) - seq_len - 1]`` by
    ``np.random.default_rng([seed, step])``. A batch therefore depends only on
    ``(data, seed, step)``: training resumed at step ``k`` sees exactly the batches it
    would have seen without the interruption. Inputs are ``batch[:, :-1]`` and targets
    ``batch[:, 1:]``.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        """Create the sampler.

        Args:
          data: 1-D array of byte values (or bytes).
          batch_size: windows per batch, at least 1.
          seq_len: model sequence length, at least 1; windows are ``seq_len + 1`` long.
          seed: non-negative integer seed.

        Raises:
          ValueError: a non-positive ``batch_size`` or ``seq_len``, or a negative seed.
          DataError: ``data`` is shorter than ``seq_len + 1``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.data = _as_bytes_array(data, "data")
        if len(self.data) < seq_len + 1:
            raise DataError(
                f"data of {len(self.data)} bytes is shorter than one window of "
                f"seq_len + 1 = {seq_len + 1} bytes"
            )
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self._offsets = np.arange(self.seq_len + 1)

    def batch(self, step: int) -> np.ndarray:
        """Return batch number ``step`` (``step >= 0``).

        Returns:
          An ``int32`` array of shape ``(batch_size, seq_len + 1)`` with values in
          ``[0, 255]``, a function of ``(seed, step)`` only.
        """
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rng = np.random.default_rng([self.seed, int(step)])
        high = len(self.data) - self.seq_len  # exclusive bound on the start offset
        starts = rng.integers(0, high, size=self.batch_size)
        return self.data[starts[:, None] + self._offsets].astype(np.int32)

    def batches(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[np.ndarray]:
        """Yield ``batch(start_step)``, ``batch(start_step + 1)``, ...

        Args:
          start_step: first step (resume point).
          num_steps: how many batches; ``None`` for an endless stream.
        """
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1


def eval_batches(
    data: bytes | np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[np.ndarray]:
    """Walk validation data in fixed, contiguous windows.

    Window ``i`` is ``data[i * seq_len : i * seq_len + seq_len + 1]``. Consecutive
    windows share only their boundary byte (the last target of one is the first input
    of the next), so the targets ``window[1:]`` tile the data without overlap and every
    byte after the first is predicted exactly once. Windows are grouped in order into
    full batches; a trailing partial batch is dropped so every batch has the same shape
    (one compiled evaluation step).

    Args:
      data: 1-D byte values (or bytes).
      batch_size: windows per batch, at least 1.
      seq_len: model sequence length, at least 1.
      max_batches: stop after this many batches; ``None`` for all full batches.

    Returns:
      An iterator of ``int32`` arrays of shape ``(batch_size, seq_len + 1)``; the same
      sequence on every call.

    Raises:
      ValueError: non-positive ``batch_size``, ``seq_len`` or ``max_batches``.
      DataError: ``data`` is too short for one full batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be at least 1 or None, got {max_batches}")
    array = _as_bytes_array(data, "data")
    n_windows = max(len(array) - 1, 0) // seq_len
    n_batches = n_windows // batch_size
    if n_batches == 0:
        raise DataError(
            f"validation data of {len(array)} bytes holds {n_windows} windows of "
            f"seq_len={seq_len}, fewer than one batch of {batch_size}: use a smaller "
            "batch or sequence, or a larger valid_fraction"
        )
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    offsets = np.arange(seq_len + 1)

    def generate() -> Iterator[np.ndarray]:
        for b in range(n_batches):
            starts = (b * batch_size + np.arange(batch_size)) * seq_len
            yield array[starts[:, None] + offsets].astype(np.int32)

    return generate()


# --------------------------------------------------------------------------------------
# Baseline and helpers
# --------------------------------------------------------------------------------------


def unigram_bits_per_byte(train: bytes | np.ndarray, valid: bytes | np.ndarray) -> float:
    """Cross-entropy, in bits per byte, of a unigram byte model of ``train`` on ``valid``.

    The model is add-one (Laplace) smoothed: ``p(b) = (count_train(b) + 1) / (N + 256)``,
    and the result is ``-(1/|valid|) Σ_{b in valid} log2 p(b)``. A language model should
    beat this; uniform guessing scores 8 bits.

    Raises:
      DataError: ``valid`` is empty.
    """
    train_array = _as_bytes_array(train, "train")
    valid_array = _as_bytes_array(valid, "valid")
    if len(valid_array) == 0:
        raise DataError("valid is empty; cannot evaluate the unigram baseline")
    counts = np.bincount(train_array, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log2_p = np.log2(counts) - np.log2(counts.sum())
    return float(-log2_p[valid_array].mean())


def decode_bytes(tokens: np.ndarray | list[int] | bytes) -> str:
    """Turn byte values (e.g. model samples) into text, replacing invalid UTF-8."""
    return _as_bytes_array(tokens, "tokens").tobytes().decode("utf-8", "replace")
