"""The request/reply encoding shared by the policy server and its clients (numpy only: no torch here).

Two formats, chosen by Content-Type:

``application/msgpack`` (ours): a msgpack document of maps, lists, str, bytes, numbers, bool and nil,
where a numpy array travels as ``{"__ndarray__": True, "dtype": "<name>", "shape": [...], "data": <bin>}``
(raw little-endian bytes, C order, dtype from ``ALLOWED_DTYPES``) and an image may travel compressed as
``{"__image__": "jpeg" | "png", "data": <bin>}`` (decoded to a uint8 array: see ``EncodedImage``).

``application/json`` (upstream OpenVLA compatibility): the json_numpy text format that upstream's
``deploy.py`` server and clients use, where an array is ``{"__numpy__": "<base64 of the raw bytes>",
"dtype": "<numpy descr, e.g. |u1 or <f8>", "shape": [...]}`` (shape ``[]`` = a numpy scalar). Upstream
clients may also "double-encode" a request as ``{"encoded": "<json_numpy text>"}``; the server then
answers with the json_numpy text inside a JSON string.

Decoding never unpickles, checks every declared size before allocating anything, and raises
``WireError`` (naming the field and what was expected) for anything malformed.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np

CONTENT_TYPE_MSGPACK = "application/msgpack"
CONTENT_TYPE_JSON = "application/json"
ALLOWED_DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool")
IMAGE_FORMATS = ("jpeg", "png")

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_ARRAY_ELEMENTS = 1 << 24  # 16.7 M: a 1280 x 800 RGB frame is 3.1 M
DEFAULT_MAX_TOTAL_ELEMENTS = 1 << 25  # all arrays and decoded images of one message together
DEFAULT_MAX_DEPTH = 16
MAX_SUPPORTED_DEPTH = 100
MAX_NDIM = 32

NDARRAY_KEY, IMAGE_KEY, NUMPY_KEY = "__ndarray__", "__image__", "__numpy__"
_NDARRAY_FIELDS = frozenset({NDARRAY_KEY, "dtype", "shape", "data"})
_IMAGE_FIELDS = frozenset({IMAGE_KEY, "data"})
_NUMPY_FIELDS = frozenset({NUMPY_KEY, "dtype", "shape"})
_RESERVED_KEYS = frozenset({NDARRAY_KEY, IMAGE_KEY, NUMPY_KEY})
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
# json_numpy writes numpy's dtype.str ("|u1", "<f4", ...); plain names are accepted too. Byte order explicit.
_JSON_DTYPES: dict[str, np.dtype] = {}
for _name in ALLOWED_DTYPES:
    _dtype = np.dtype(_name)
    for _spelling in (_name, _dtype.str, _dtype.newbyteorder("<").str, _dtype.newbyteorder(">").str):
        _JSON_DTYPES[_spelling] = _dtype.newbyteorder(">") if _spelling.startswith(">") else _dtype.newbyteorder("<")


class WireError(ValueError):
    """A message that cannot be encoded or decoded; ``field`` is the path of the offending value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field or '<message>'}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class EncodedImage:
    """An image sent compressed. Decoding gives uint8 (H, W, 3) for colour, (H, W) for 8-bit grey,
    (H, W, 4) for RGBA PNG and uint16 (H, W) for 16-bit grey PNG (e.g. depth in mm)."""

    format: Literal["jpeg", "png"]
    data: bytes

    @classmethod
    def from_array(cls, image: np.ndarray, format: Literal["jpeg", "png"] = "jpeg", quality: int = 90) -> EncodedImage:
        from PIL import Image

        if format not in IMAGE_FORMATS:
            raise WireError("image", f"format must be one of {IMAGE_FORMATS}, got {format!r}")
        image = np.ascontiguousarray(image)
        grey16 = image.dtype == np.uint16 and image.ndim == 2 and format == "png"
        if not grey16 and not (image.dtype == np.uint8 and (image.ndim == 2 or image.shape[-1] in (3, 4))):
            raise WireError("image", f"expected uint8 (H, W), (H, W, 3) or (H, W, 4) (or uint16 (H, W) for PNG), got "
                                     f"{image.dtype} {image.shape}")
        buffer = io.BytesIO()
        options = {"quality": quality} if format == "jpeg" else {}
        Image.fromarray(image).save(buffer, format=_PIL_FORMAT[format], **options)
        return cls(format, buffer.getvalue())


@dataclass
class _Limits:
    max_array_elements: int
    max_total_elements: int
    max_depth: int
    used_elements: int = 0

    def __post_init__(self) -> None:
        # The walk recurses once per level; beyond ~100 levels Python's own recursion limit would be the guard.
        if not 1 <= self.max_depth <= MAX_SUPPORTED_DEPTH:
            raise ValueError(f"max_depth must be in 1..{MAX_SUPPORTED_DEPTH}, got {self.max_depth}")

    def take(self, field: str, count: int, what: str) -> None:
        """Reserve ``count`` decoded elements; called before the allocation it guards."""
        if count > self.max_array_elements:
            raise WireError(field, f"{what} has {count} elements, more than the limit of {self.max_array_elements}")
        self.used_elements += count
        if self.used_elements > self.max_total_elements:
            raise WireError(field, f"the message's arrays and images exceed {self.max_total_elements} elements in all")


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _as_bytes(data: Any, max_bytes: int, text_allowed: bool) -> bytes:
    if isinstance(data, str) and text_allowed:
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("", f"expected the message as bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError("", f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# Shared checks of array declarations
# --------------------------------------------------------------------------------------------------


def _check_shape(field: str, shape: Any, limits: _Limits) -> tuple[tuple[int, ...], int]:
    """Validate a declared shape and return it with its element count (checked before any allocation)."""
    if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
        raise WireError(field, f"shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r:.80}")
    if any(isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in shape):
        raise WireError(field, f"shape must be a list of non-negative ints, got {shape!r:.80}")
    count = math.prod(shape)  # exact Python ints: at most 32 factors, so no overflow and no cost
    limits.take(field, count, f"array of shape {list(shape)}")
    return tuple(shape), count


def _array_from_bytes(field: str, raw: bytes, dtype: np.dtype, shape: tuple[int, ...], count: int) -> np.ndarray:
    if len(raw) != count * dtype.itemsize:
        raise WireError(field, f"data has {len(raw)} bytes, but shape {list(shape)} of {dtype.name} needs "
                               f"{count * dtype.itemsize}")
    if dtype.kind == "b" and raw and int(np.frombuffer(raw, dtype=np.uint8).max()) > 1:
        raise WireError(field, "bool array data must contain only bytes 0 and 1")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _check_dtype_for_encoding(field: str, array: np.ndarray) -> np.dtype:
    if array.dtype.name not in ALLOWED_DTYPES:
        raise WireError(field, f"dtype {array.dtype} is not allowed on the wire; allowed: {', '.join(ALLOWED_DTYPES)}")
    return array.dtype


# --------------------------------------------------------------------------------------------------
# msgpack envelope
# --------------------------------------------------------------------------------------------------


ArrayEncoder = Callable[[str, np.ndarray], Any]


def _to_wire(value: Any, path: str, encode_array: ArrayEncoder, scalars_as_arrays: bool) -> Any:
    """Plain containers with arrays replaced by their envelope; checks keys and types with the field path."""
    if isinstance(value, np.ndarray) or (scalars_as_arrays and isinstance(value, np.generic)):
        array = np.asarray(value)
        _check_dtype_for_encoding(path, array)
        return encode_array(path, array)
    if isinstance(value, EncodedImage):
        if scalars_as_arrays:  # the json_numpy format has no compressed images
            raise WireError(path, "json_numpy has no compressed images: send the pixels as a uint8 array")
        return {IMAGE_KEY: value.format, "data": value.data}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        bad = [key for key in value if not isinstance(key, str) or key in _RESERVED_KEYS]
        if bad:
            raise WireError(path, f"map keys must be strings other than {sorted(_RESERVED_KEYS)}; got {bad!r:.80}")
        return {key: _to_wire(item, _join(path, key), encode_array, scalars_as_arrays) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(item, _join(path, i), encode_array, scalars_as_arrays) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes) and not scalars_as_arrays:
        return value
    raise WireError(path, f"cannot encode a {type(value).__name__}; use dicts, lists, numbers, str, numpy arrays "
                          f"(msgpack also: bytes, EncodedImage)")


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _msgpack_array(path: str, array: np.ndarray) -> dict:
    return {NDARRAY_KEY: True, "dtype": array.dtype.name, "shape": list(array.shape),
            "data": _little_endian(array).tobytes()}


def encode(obj: Any) -> bytes:
    """msgpack envelope of ``obj`` (content type ``application/msgpack``)."""
    try:
        return msgpack.packb(_to_wire(obj, "", _msgpack_array, scalars_as_arrays=False), use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as error:  # e.g. an int beyond 64 bits
        if isinstance(error, WireError):
            raise
        raise WireError("", f"msgpack cannot encode the message: {error}") from error


def _decode_ndarray(field: str, envelope: dict, limits: _Limits) -> np.ndarray:
    if set(envelope) != _NDARRAY_FIELDS or envelope[NDARRAY_KEY] is not True:
        raise WireError(field, f"an array must be exactly {{{NDARRAY_KEY!r}: true, 'dtype', 'shape', 'data'}}, got "
                               f"{len(envelope)} keys")
    name = envelope["dtype"]
    if name not in ALLOWED_DTYPES:
        raise WireError(field, f"dtype {name!r:.40} is not allowed; allowed: {', '.join(ALLOWED_DTYPES)}")
    shape, count = _check_shape(field, envelope["shape"], limits)
    if not isinstance(envelope["data"], bytes):
        raise WireError(field, f"data must be msgpack bin (bytes), got {type(envelope['data']).__name__}")
    return _array_from_bytes(field, envelope["data"], np.dtype(name).newbyteorder("<"), shape, count)


def _decode_image(field: str, envelope: dict, limits: _Limits) -> np.ndarray:
    from PIL import Image

    if set(envelope) != _IMAGE_FIELDS or envelope[IMAGE_KEY] not in IMAGE_FORMATS:
        raise WireError(field, f"an image must be exactly {{{IMAGE_KEY!r}: 'jpeg' | 'png', 'data': bytes}}")
    if not isinstance(envelope["data"], bytes):
        raise WireError(field, f"image data must be bytes, got {type(envelope['data']).__name__}")
    kind = envelope[IMAGE_KEY]
    # Pillow's decoders raise many exception types on corrupt input (OSError, SyntaxError, struct.error,
    # IndexError, ...): any failure inside the Pillow calls means "not a valid image of that format".
    try:
        image = Image.open(io.BytesIO(envelope["data"]), formats=[_PIL_FORMAT[kind]])
        width, height = image.size
    except Exception as error:
        raise WireError(field, f"not a valid {kind} image ({type(error).__name__}: {error})") from error
    with image:
        mode = _output_mode(kind, image.mode)
        channels = Image.getmodebands(mode)
        limits.take(field, width * height * channels, f"{kind} image of {width}x{height}x{channels}")  # before decoding
        try:
            pixels = np.asarray(image.convert(mode) if mode != image.mode else image)
        except Exception as error:
            raise WireError(field, f"not a valid {kind} image ({type(error).__name__}: {error})") from error
    return np.array(pixels, dtype=np.uint16 if mode.startswith("I;16") else np.uint8)


def _output_mode(kind: str, source_mode: str) -> str:
    """Pillow mode to decode into: grey and colour stay as they are (16-bit grey and RGBA for PNG only),
    anything else (palette, CMYK, 1-bit, grey + alpha) becomes RGB."""
    kept = ("L", "RGB", "RGBA", "I;16", "I;16B") if kind == "png" else ("L", "RGB")
    return source_mode if source_mode in kept else "RGB"


def _walk(value: Any, path: str, depth: int, limits: _Limits,
          envelope: Callable[[str, dict, _Limits], Any | None]) -> Any:
    """Check types and depth (the outermost container is depth 1), turning envelopes into arrays."""
    if isinstance(value, dict | list) and depth > limits.max_depth:
        raise WireError(path, f"nesting deeper than {limits.max_depth} levels")
    if isinstance(value, dict):
        decoded = envelope(path, value, limits)
        if decoded is not None:
            return decoded
        if not all(isinstance(key, str) for key in value):
            raise WireError(path, "map keys must be strings")
        return {key: _walk(item, _join(path, key), depth + 1, limits, envelope) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, _join(path, i), depth + 1, limits, envelope) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    raise WireError(path, f"unsupported value of type {type(value).__name__} (msgpack ext types are not used)")


def _msgpack_envelope(path: str, value: dict, limits: _Limits) -> np.ndarray | None:
    if NDARRAY_KEY in value:
        return _decode_ndarray(path, value, limits)
    if IMAGE_KEY in value:
        return _decode_image(path, value, limits)
    return None


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_array_elements: int = DEFAULT_MAX_ARRAY_ELEMENTS,
           max_depth: int = DEFAULT_MAX_DEPTH, max_total_elements: int = DEFAULT_MAX_TOTAL_ELEMENTS) -> Any:
    """Decode a msgpack envelope; arrays and images come back as numpy arrays. Raises only WireError."""
    raw = _as_bytes(data, max_bytes, text_allowed=False)
    try:
        # msgpack itself bounds every declared length by the buffer size, so no huge list/str is allocated.
        document = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, OverflowError) as error:  # msgpack's own errors are ValueErrors
        raise WireError("", f"not a valid msgpack document ({type(error).__name__}: {error})") from error
    return _walk(document, "", 1, _Limits(max_array_elements, max_total_elements, max_depth), _msgpack_envelope)


# --------------------------------------------------------------------------------------------------
# json_numpy (upstream OpenVLA's deploy.py)
# --------------------------------------------------------------------------------------------------


def _json_array(path: str, array: np.ndarray) -> dict:
    little = _little_endian(array)
    return {NUMPY_KEY: base64.b64encode(little.tobytes()).decode("ascii"), "dtype": little.dtype.str,
            "shape": list(array.shape)}


def encode_json_numpy(obj: Any) -> str:
    """json_numpy text of ``obj`` (content type ``application/json``), readable by ``json_numpy.loads``."""
    return json.dumps(_to_wire(obj, "", _json_array, scalars_as_arrays=True))


def _decode_json_array(field: str, envelope: dict, limits: _Limits) -> np.ndarray | np.generic:
    if set(envelope) != _NUMPY_FIELDS:
        raise WireError(field, f"a json_numpy array must have exactly the keys {sorted(_NUMPY_FIELDS)}, got "
                               f"{len(envelope)} keys")
    spelling = envelope["dtype"]
    if not isinstance(spelling, str) or spelling not in _JSON_DTYPES:
        raise WireError(field, f"dtype {spelling!r:.40} is not allowed; allowed: {', '.join(ALLOWED_DTYPES)} "
                               f"(or their numpy descr such as '|u1', '<f4')")
    dtype = _JSON_DTYPES[spelling]
    shape, count = _check_shape(field, envelope["shape"], limits)
    text = envelope[NUMPY_KEY]
    expected_chars = 4 * -(-count * dtype.itemsize // 3)  # padded base64 of the declared size
    if not isinstance(text, str) or len(text) != expected_chars:
        raise WireError(field, f"'{NUMPY_KEY}' must be the base64 text of {count * dtype.itemsize} bytes "
                               f"({expected_chars} characters) for shape {list(shape)} of {dtype.name}")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as error:
        raise WireError(field, f"'{NUMPY_KEY}' is not valid base64 ({error})") from error
    array = _array_from_bytes(field, raw, dtype, shape, count)
    return array[()] if shape == () else array  # json_numpy gives numpy scalars for shape []


def _json_envelope(path: str, value: dict, limits: _Limits) -> np.ndarray | np.generic | None:
    return _decode_json_array(path, value, limits) if NUMPY_KEY in value else None


def decode_json_numpy(text: str | bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                      max_array_elements: int = DEFAULT_MAX_ARRAY_ELEMENTS, max_depth: int = DEFAULT_MAX_DEPTH,
                      max_total_elements: int = DEFAULT_MAX_TOTAL_ELEMENTS) -> Any:
    """Decode json_numpy text; arrays come back as numpy arrays. Raises only WireError."""
    raw = _as_bytes(text, max_bytes, text_allowed=True)
    try:
        document = json.loads(raw)
    except RecursionError as error:  # the C scanner recurses per nesting level
        raise WireError("", "JSON nested too deeply") from error
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise WireError("", f"not valid JSON ({error})") from error
    return _walk(document, "", 1, _Limits(max_array_elements, max_total_elements, max_depth), _json_envelope)


@dataclass(frozen=True)
class OpenVLARequest:
    """A request body in upstream OpenVLA's format; ``double_encoded`` when it came as {"encoded": text}."""

    payload: dict
    double_encoded: bool


def decode_openvla_request(body: str | bytes, **limits: int) -> OpenVLARequest:
    """Upstream's POST /act body: json_numpy ``{"image", "instruction", "unnorm_key"}``, or the same text
    wrapped as ``{"encoded": "<json_numpy text>"}``. Field checks are the server's job."""
    document = decode_json_numpy(body, **limits)
    double_encoded = isinstance(document, dict) and "encoded" in document
    if double_encoded:
        if set(document) != {"encoded"} or not isinstance(document["encoded"], str):
            raise WireError("encoded", "a double-encoded request must be exactly {\"encoded\": <json_numpy text>}")
        document = decode_json_numpy(document["encoded"], **limits)
    if not isinstance(document, dict):
        raise WireError("", f"the request must be a JSON object, got {type(document).__name__}")
    return OpenVLARequest(document, double_encoded)


def encode_openvla_reply(action: Any, double_encoded: bool = False) -> str:
    """Upstream's reply: the json_numpy text of the action, or that text inside a JSON string."""
    text = encode_json_numpy(action)
    return json.dumps(text) if double_encoded else text


def decode_openvla_reply(body: str | bytes, **limits: int) -> Any:
    """Client side of ``encode_openvla_reply``; upstream's failure reply "error" becomes a WireError."""
    document = decode_json_numpy(body, **limits)
    if isinstance(document, str) and document == "error":
        raise WireError("", "the policy server answered \"error\" (it logs the cause)")
    return decode_json_numpy(document, **limits) if isinstance(document, str) else document


def decode_body(body: bytes, content_type: str, **limits: int) -> Any:
    """Decode a request or reply body by its Content-Type (parameters such as charset are ignored)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == CONTENT_TYPE_MSGPACK:
        return decode(body, **limits)
    if media_type == CONTENT_TYPE_JSON:
        return decode_json_numpy(body, **limits)
    raise WireError("", f"unsupported content type {content_type!r}; use {CONTENT_TYPE_MSGPACK} or "
                        f"{CONTENT_TYPE_JSON}")
