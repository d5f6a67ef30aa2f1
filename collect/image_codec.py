"""A Zarr v3 array-to-bytes codec that stores each chunk (one frame) as a PNG or JPEG file.

Images are chunked one frame per chunk, so every chunk file of ``data/color`` *is* a PNG (or JPEG) image,
followed in layout-2 stores by the 4-byte CRC32C that Zarr's ``crc32c`` codec (next in the pipeline) appends and
image decoders ignore: any image viewer opens ``data/color/c.17.0.0.0``. The codec is registered with Zarr
under the name ``fanvla.image`` when this module is imported (``collect.store`` imports it).

- ``png``: lossless, 8-bit RGB or 8/16-bit single channel (depth in mm is 16-bit PNG);
  ``level`` is the zlib level (1 is ~5x faster than 6 for ~7 % more bytes on camera frames).
- ``jpeg``: lossy, 8-bit only; ``level`` is the quality 1..100.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Self

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

CODEC_NAME = "fanvla.image"
ImageFormat = Literal["png", "jpeg"]
DEFAULT_LEVEL = {"png": 1, "jpeg": 92}
_LEVEL_RANGE = {"png": (0, 9), "jpeg": (1, 100)}


def encode_frame(frame: np.ndarray, image_format: ImageFormat, level: int) -> bytes:
    if image_format == "png":
        return bytes(imagecodecs.png_encode(frame, level=level))
    return bytes(imagecodecs.jpeg8_encode(frame, level=level))


def decode_frame(data: bytes, image_format: ImageFormat) -> np.ndarray:
    if image_format == "png":
        return imagecodecs.png_decode(data)
    return imagecodecs.jpeg8_decode(data)


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """PNG/JPEG per chunk; chunks must be ``(1, H, W)`` or ``(1, H, W, 3)``."""

    is_fixed_size = False

    image_format: ImageFormat
    level: int

    def __init__(self, *, format: ImageFormat = "png", level: int | None = None) -> None:
        if format not in _LEVEL_RANGE:
            raise ValueError(f"image codec format must be 'png' or 'jpeg', got {format!r}")
        level = DEFAULT_LEVEL[format] if level is None else int(level)
        low, high = _LEVEL_RANGE[format]
        if not low <= level <= high:
            raise ValueError(f"{format} level must be in [{low}, {high}], got {level}")
        object.__setattr__(self, "image_format", format)
        object.__setattr__(self, "level", level)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, CODEC_NAME)
        return cls(**configuration)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"format": self.image_format, "level": self.level}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        chunk_shape = tuple(chunk_grid.chunk_shape)
        native = np.dtype(dtype.to_native_dtype())
        if len(chunk_shape) not in (3, 4) or chunk_shape[0] != 1 or (len(chunk_shape) == 4 and chunk_shape[3] != 3):
            raise ValueError(f"{CODEC_NAME} needs one frame per chunk, (1, H, W) or (1, H, W, 3); got {chunk_shape}")
        allowed = ("uint8",) if self.image_format == "jpeg" else ("uint8", "uint16")
        if native.name not in allowed:
            raise ValueError(f"{CODEC_NAME} {self.image_format} stores {' or '.join(allowed)}, not {native.name}")
        if self.image_format == "jpeg" and len(chunk_shape) == 3:
            raise ValueError(f"{CODEC_NAME} jpeg is for colour frames (1, H, W, 3); store depth as png")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("image chunks have a variable encoded size")

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        frame = np.ascontiguousarray(chunk_array.as_numpy_array().reshape(chunk_spec.shape[1:]))
        return chunk_spec.prototype.buffer.from_bytes(encode_frame(frame, self.image_format, self.level))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        frame = decode_frame(chunk_bytes.to_bytes(), self.image_format)
        dtype = chunk_spec.dtype.to_native_dtype()
        if frame.dtype != dtype or frame.size != int(np.prod(chunk_spec.shape)):
            raise ValueError(f"decoded {self.image_format} frame {frame.shape} {frame.dtype} does not match the "
                             f"array's chunk {chunk_spec.shape} {dtype}")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(frame.reshape(chunk_spec.shape))

    # The codecs release the GIL: encoding in worker threads lets Zarr work on several frames at once.
    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


register_codec(CODEC_NAME, ImageCodec)
