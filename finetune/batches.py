"""Deterministic batches: which samples a micro-batch holds, and turning them into model inputs.

The run consumes an endless *sample stream*: epoch e is a permutation of the training samples drawn from
``numpy.random.default_rng([seed, SHUFFLE_STREAM, e])``, and the epochs follow each other. Micro-batch k of
the run (k = step * grad_accum + m) covers stream positions [k * B * W, (k + 1) * B * W), rank r taking the
r-th block of B. Batches are therefore a pure function of (seed, k): resuming at a step needs nothing but the
step, and W processes with batch B see exactly the samples of one process with batch B * W.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from finetune.augment import center_windows, normalize_pixels, to_unit_float, training_pixels
from policy.action_tokenizer import ActionTokenizer
from policy.normalization import ActionStats, normalize
from policy.processing import ImageSettings
from policy.prompt import build_training_example, collate_training_batch

SHUFFLE_STREAM = 0x5EED
_END = object()  # end of a PrefetchThread's batches


class SampleStream:
    """Stream position -> training sample index (row of the training table)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("the sample stream needs at least one training sample")
        self.num_samples = num_samples
        self.seed = seed

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs per stream, bounded
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, SHUFFLE_STREAM, epoch]).permutation(self.num_samples)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(np.asarray(positions, dtype=np.int64), self.num_samples)
        return np.array([self._epoch(int(e))[o] for e, o in zip(epochs, offsets, strict=True)], dtype=np.int64)


@dataclass(frozen=True)
class BatchLayout:
    batch_size: int  # per process
    world_size: int = 1
    rank: int = 0

    def positions(self, micro_batch: int) -> np.ndarray:
        start = (micro_batch * self.world_size + self.rank) * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)


class _CachedPrompts:
    """The tokenizer, with prompt encodings remembered (a run has a handful of instructions)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.unk_token_id = getattr(tokenizer, "unk_token_id", None)
        self._encoded: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            self._encoded[text] = list(self._tokenizer.encode(text))
        return self._encoded[text]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._tokenizer.convert_tokens_to_ids(token)


@dataclass
class SplitArrays:
    """One split, ready for batching: frames (uint8 cache), action tokens, raw actions, instruction per row."""

    frames: np.ndarray
    action_tokens: np.ndarray  # (N, 7) int64
    actions: np.ndarray  # (N, 7) float64 in action units
    instruction: np.ndarray  # (N,) int
    # (N, patches, width) vision tower outputs computed once (frozen towers, no augmentation: finetune.features);
    # batches then carry them as "patch_features" instead of "pixel_values".
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.action_tokens)


def tokenize_actions(actions: np.ndarray, stats: ActionStats, action_tokenizer: ActionTokenizer) -> np.ndarray:
    return action_tokenizer.encode(normalize(actions, stats))


class BatchBuilder:
    """Rows of a split -> the model's inputs plus what the metrics need."""

    def __init__(self, split: SplitArrays, instructions: list[str], tokenizer, pad_token_id: int,
                 settings: ImageSettings, image_size: int) -> None:
        self.split = split
        self.instructions = instructions
        self.prompts = _CachedPrompts(tokenizer)
        self.pad_token_id = pad_token_id
        self.settings = settings
        self.image_size = image_size

    def _text(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        examples = [build_training_example(self.prompts, self.instructions[int(self.split.instruction[row])],
                                           self.split.action_tokens[row]) for row in rows]
        return collate_training_batch(examples, self.pad_token_id)

    def _finish(self, rows: np.ndarray, pixel_values: torch.Tensor | None) -> dict[str, torch.Tensor]:
        batch = self._text(rows)
        if pixel_values is None:
            batch["patch_features"] = torch.from_numpy(self.split.features[rows])
        else:
            batch["pixel_values"] = pixel_values
        batch["actions"] = torch.from_numpy(self.split.actions[rows].copy())
        return batch

    def training_batch(self, rows: np.ndarray, positions: np.ndarray, seed: int, augment: bool) -> dict:
        if self.split.features is not None:
            return self._finish(rows, None)
        frames = self.split.frames[rows]
        pixels = training_pixels(frames, positions, seed, self.image_size, self.settings, augment)
        return self._finish(rows, pixels)

    def evaluation_batch(self, rows: np.ndarray) -> dict:
        """No augmentation; frames as inference sees them (cached that way; a crop-size cache is centre-cut)."""
        if self.split.features is not None:
            return self._finish(rows, None)
        frames = self.split.frames[rows]
        if frames.shape[1] != self.image_size:
            frames = center_windows(frames, self.image_size)
        return self._finish(rows, normalize_pixels(to_unit_float(frames), self.settings))


class TrainingMicroBatches(torch.utils.data.Dataset):
    """Micro-batch k of this process (a map-style dataset, so DataLoader workers can build batches)."""

    def __init__(self, builder: BatchBuilder, stream: SampleStream, layout: BatchLayout, seed: int,
                 augment: bool) -> None:
        self.builder, self.stream, self.layout, self.seed, self.augment = builder, stream, layout, seed, augment

    def __len__(self) -> int:  # only an upper bound for samplers; batches are built on demand
        return 2**62

    def __getitem__(self, micro_batch: int) -> dict:
        positions = self.layout.positions(int(micro_batch))
        return self.builder.training_batch(self.stream.rows(positions), positions, self.seed, self.augment)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers share the CPU with the training process


class PrefetchThread:
    """Builds the next ``depth`` batches in a background thread of the training process, in order.

    Batch building is mostly numpy/torch work that releases the GIL, so it overlaps with the training step
    without the start-up and copying of worker processes (bench/finetune_loader_bench.py)."""

    def __init__(self, dataset: TrainingMicroBatches, indices: range, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(dataset, indices), daemon=True,
                                        name="finetune-batches")
        self._thread.start()

    def _produce(self, dataset: TrainingMicroBatches, indices: range) -> None:
        for k in indices:
            try:
                item = dataset[k]
            except Exception as error:  # handed to the consumer, raised there
                item = error
            if not self._put(item) or isinstance(item, Exception):
                return
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> PrefetchThread:
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stays exhausted
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _LoaderIterator:
    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self._iterator = iter(loader)

    def __iter__(self) -> _LoaderIterator:
        return self

    def __next__(self) -> dict:
        return next(self._iterator)

    def close(self) -> None:
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def training_batches(dataset: TrainingMicroBatches, first: int, count: int, workers: int):
    """Micro-batches first .. first + count - 1 (an iterator with ``close()``): built by a prefetch thread of
    this process (``workers`` = 0) or by ``workers`` DataLoader processes. The batches are the same either way."""
    indices = range(first, first + count)
    if workers == 0:
        return PrefetchThread(dataset, indices)
    import multiprocessing

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=indices, num_workers=workers, worker_init_fn=_worker_init,
        prefetch_factor=4, persistent_workers=False, multiprocessing_context=multiprocessing.get_context("fork"))
    return _LoaderIterator(loader)


def evaluation_rows(num_rows: int, max_samples: int | None) -> np.ndarray:
    """The validation rows used: all, or ``max_samples`` evenly spaced ones (deterministic)."""
    if max_samples is None or num_rows <= max_samples:
        return np.arange(num_rows, dtype=np.int64)
    return np.unique(np.linspace(0, num_rows - 1, max_samples).round().astype(np.int64))


def evaluation_batches(builder: BatchBuilder, rows: np.ndarray, batch_size: int, world_size: int,
                       rank: int) -> Iterator[dict]:
    """This rank's share of the validation rows (chunk i goes to rank i mod W), in batches."""
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    for chunk in chunks[rank::world_size]:
        yield builder.evaluation_batch(chunk)
