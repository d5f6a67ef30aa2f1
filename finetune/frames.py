"""Every frame decoded and resized ONCE, into a uint8 array the training loop indexes (no per-step decoding).

Two arrays per run, written as ``.npy`` files and memory-mapped (so DataLoader workers and the processes of a
multi-GPU run share one copy through the page cache):

- training frames at ``crop_source_size(S)`` = round(S / sqrt(0.9)) pixels when cropping is on (S otherwise):
  a random S x S window of it is exactly a random crop of 0.9 of the image area (see ``finetune.augment``);
- validation frames exactly as inference preprocesses them: PIL bicubic resize of the recorded image to S x S,
  from the central 0.9 of the area when the model is trained with crops (``policy.processing``'s centre crop),
  bit for bit.

Training frames use PIL's ``reducing_gap=2`` (an integer box reduction before the bicubic step): 1.6x faster on
640 x 480 frames, a mean difference of 0.3 grey levels (max 4) from the exact resize, far below the colour jitter.

Files are named by a hash of what they hold (data fingerprint, frame list, size, crop), so a cache directory
shared between runs (``--frame-cache``) is reused when it fits and never confused. Decoding runs in threads
(imagecodecs and PIL release the GIL) and is the only per-frame work of a run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data import IMAGE_KEY, SampleTable, store_errors
from policy.processing import DEFAULT_CROP_AREA, center_crop_box

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
FAST_REDUCING_GAP = 2.0
_CHUNK = 256  # frames per thread task


def crop_source_size(image_size: int, crop_area: float = DEFAULT_CROP_AREA) -> int:
    """Side of the cached training frames: a centred ``image_size`` window of it covers ``crop_area``."""
    return round(image_size / math.sqrt(crop_area))


def resize_frame(frame: np.ndarray, size: int, center_crop: bool = False, exact: bool = True) -> np.ndarray:
    """uint8 (size, size, 3): PIL bicubic resize, from the central 0.9 area when ``center_crop``; ``exact`` gives
    inference's pixels bit for bit, otherwise the faster ``reducing_gap`` resize (see the module docstring)."""
    box = center_crop_box(frame.shape[0], frame.shape[1], DEFAULT_CROP_AREA) if center_crop else None
    gap = None if exact else FAST_REDUCING_GAP
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC, box=box,
                                                    reducing_gap=gap))


def cache_key(data_sha256: str, table: SampleTable, size: int, center_crop: bool, image_key: str = IMAGE_KEY) -> str:
    other_key = "" if image_key == IMAGE_KEY else f"{image_key}|"  # the colour camera's names stay as they were
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{data_sha256}|{size}|{center_crop}|{other_key}".encode())
    digest.update(np.ascontiguousarray(table.store, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(table.frame, dtype=np.int64).tobytes())
    return digest.hexdigest()[:24]


def _decode_into(target: np.ndarray, rows: range, readers: list[Callable[[int], np.ndarray]], table: SampleTable,
                 size: int, center_crop: bool, exact: bool) -> None:
    for row in rows:
        frame = readers[int(table.store[row])](int(table.frame[row]))
        target[row] = resize_frame(frame, size, center_crop, exact)


def build_frame_file(path: Path, store_paths: list[Path], table: SampleTable, size: int, center_crop: bool,
                     threads: int, exact: bool, image_key: str = IMAGE_KEY) -> None:
    """Decode and resize every frame of ``table`` into ``path`` (.npy), written to a temporary name and renamed."""

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with store_errors():  # a frame that is missing or fails its checksum stops the run, naming the chunk
        _decode_frames(temp, path, store_paths, table, size, center_crop, threads, exact, image_key)


def _decode_frames(temp: Path, path: Path, store_paths: list[Path], table: SampleTable, size: int,
                   center_crop: bool, threads: int, exact: bool, image_key: str) -> None:
    from collect.store import EpisodeStore

    stores = [EpisodeStore.open(p, mode="r") for p in store_paths]
    started = time.perf_counter()
    try:
        target = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3))
        readers = [store.array(image_key).__getitem__ for store in stores]
        chunks = [range(i, min(i + _CHUNK, len(table))) for i in range(0, len(table), _CHUNK)]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for future in [pool.submit(_decode_into, target, chunk, readers, table, size, center_crop, exact)
                           for chunk in chunks]:
                future.result()
        target.flush()
        del target
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
        for store in stores:
            store.close()
    elapsed = time.perf_counter() - started
    log.info("decoded %d frames to %d px in %.1f s (%.0f frames/s, %d threads) -> %s", len(table), size, elapsed,
             len(table) / max(elapsed, 1e-9), threads, path)


def frame_file(cache_dir: Path, data_sha256: str, table: SampleTable, size: int, center_crop: bool,
               split: str, image_key: str = IMAGE_KEY) -> Path:
    crop = "-crop" if center_crop else ""
    view = "" if image_key == IMAGE_KEY else f"{image_key}-"
    return cache_dir / f"{view}{split}-{size}px{crop}-{cache_key(data_sha256, table, size, center_crop, image_key)}.npy"


def ensure_frame_file(cache_dir: Path, data_sha256: str, store_paths: list[Path], table: SampleTable, size: int,
                      center_crop: bool, split: str, threads: int, image_key: str = IMAGE_KEY) -> Path:
    """The cache file for ``table`` (built if absent; an existing one with the same hash is reused). The "val"
    split is resized exactly as inference does, the others with the fast resize."""
    path = frame_file(cache_dir, data_sha256, table, size, center_crop, split, image_key)
    if path.is_file():
        log.info("reusing decoded %s frames %s", split, path)
    elif len(table):
        build_frame_file(path, store_paths, table, size, center_crop, threads, split == "val", image_key)
    return path


def open_frame_file(path: Path, expected_rows: int, size: int) -> np.ndarray:
    """The memory-mapped uint8 (N, size, size, 3) array; an empty table gives an empty array."""
    if expected_rows == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    frames = np.load(path, mmap_mode="r")
    if frames.shape != (expected_rows, size, size, 3) or frames.dtype != np.uint8:
        raise ValueError(f"{path} holds {frames.dtype} {frames.shape}, expected uint8 ({expected_rows}, {size}, "
                         f"{size}, 3); delete it and run again")
    return frames
