"""policy.wire: round trips, the json_numpy format of upstream OpenVLA, and every kind of bad input."""

from __future__ import annotations

import base64
import io
import json
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
from PIL import Image

from policy.wire import (
    ALLOWED_DTYPES,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_MSGPACK,
    EncodedImage,
    WireError,
    decode,
    decode_body,
    decode_json_numpy,
    decode_openvla_reply,
    decode_openvla_request,
    encode,
    encode_json_numpy,
    encode_openvla_reply,
)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1).astype(np.uint8)


def packed_array(dtype: object = "float32", shape: object = (2,), data: object = b"\0" * 8, **extra) -> bytes:
    return msgpack.packb({"a": {"__ndarray__": True, "dtype": dtype, "shape": shape, "data": data, **extra}})


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_every_allowed_dtype_round_trips(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((3, 4, 2)) * 100).astype(dtype)
    for candidate in (array, array[:, ::2], array.astype(np.dtype(dtype).newbyteorder(">")), array[0, 0, 0:0]):
        decoded = decode(encode({"x": candidate}))["x"]
        assert decoded.dtype == np.dtype(dtype) and decoded.shape == candidate.shape
        np.testing.assert_array_equal(decoded, candidate)
        assert decoded.flags.writeable


def test_nested_message_with_nan_scalars_and_bytes_round_trips() -> None:
    message = {"obs": [{"state": np.array([np.nan, np.inf, -0.0], dtype=np.float64), "t": 1.5}], "id": 7,
               "flag": True, "none": None, "blob": b"\x00\xff", "text": "pick up the cube", "n": np.int32(4),
               "scalar": np.array(3.25, dtype=np.float32), "tuple": (1, 2)}
    decoded = decode(encode(message))
    np.testing.assert_array_equal(decoded["obs"][0]["state"], message["obs"][0]["state"])
    assert decoded["n"] == 4 and type(decoded["n"]) is int  # numpy scalars travel as plain numbers
    assert decoded["scalar"].shape == () and decoded["scalar"] == np.float32(3.25)
    assert decoded["tuple"] == [1, 2] and decoded["blob"] == b"\x00\xff" and decoded["none"] is None


def test_envelope_layout_is_the_documented_one() -> None:
    array = np.array([[1, 2, 3]], dtype=np.uint16)
    raw = msgpack.unpackb(encode({"a": array}))
    assert raw == {"a": {"__ndarray__": True, "dtype": "uint16", "shape": [1, 3], "data": b"\x01\0\x02\0\x03\0"}}


@pytest.mark.parametrize(
    ("image", "fmt"),
    [(smooth_rgb(), "png"), (smooth_rgb()[..., 0], "png"), (np.dstack([smooth_rgb(), smooth_rgb()[..., :1]]), "png"),
     (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000, "png")],
)
def test_png_images_decode_losslessly(image: np.ndarray, fmt: str) -> None:
    decoded = decode(encode({"image": EncodedImage.from_array(image, fmt)}))["image"]
    assert decoded.dtype == image.dtype
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_images_decode_to_rgb_close_to_the_original() -> None:
    image = smooth_rgb()
    decoded = decode(encode({"image": EncodedImage.from_array(image, "jpeg", quality=95)}))["image"]
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 2.0
    palette = Image.fromarray(image).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert decode(encode({"i": EncodedImage("png", buffer.getvalue())}))["i"].shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("payload", "field", "problem"),
    [
        (packed_array(dtype="int16"), "a", "dtype 'int16' is not allowed"),
        (packed_array(dtype="object"), "a", "not allowed"),
        (packed_array(data=b"\0" * 7), "a", "data has 7 bytes, but shape [2] of float32 needs 8"),
        (packed_array(shape=[-1]), "a", "non-negative ints"),
        (packed_array(shape=[True, 2]), "a", "non-negative ints"),
        (packed_array(shape="2"), "a", "shape must be a list"),
        (packed_array(shape=[1] * 33, data=b"\0" * 4), "a", "at most 32"),
        (packed_array(data="text"), "a", "data must be msgpack bin"),
        (packed_array(extra="x"), "a", "must be exactly"),
        (msgpack.packb({"a": {"__ndarray__": 1, "dtype": "uint8", "shape": [1], "data": b"\0"}}), "a", "exactly"),
        (msgpack.packb({"a": {"__ndarray__": True, "dtype": "bool", "shape": [2], "data": b"\x00\x02"}}), "a",
         "only bytes 0 and 1"),
        (msgpack.packb({"a": [{"__image__": "gif", "data": b""}]}), "a[0]", "'jpeg' | 'png'"),
        (msgpack.packb({"a": {"__image__": "jpeg", "data": b"not a jpeg"}}), "a", "not a valid jpeg image"),
        (msgpack.packb({"a": {"__image__": "jpeg", "data": EncodedImage.from_array(smooth_rgb(), "png").data}}), "a",
         "not a valid jpeg image"),
        (msgpack.packb({"a": msgpack.ExtType(5, b"x")}), "a", "ext types"),
        (msgpack.packb({"a": {b"k": 1}}), "a", "map keys must be strings"),
        (msgpack.packb({"a": 1}) + b"\x00", "", "not a valid msgpack document"),
        (b"\xc1", "", "not a valid msgpack document"),
    ],
)
def test_malformed_messages_raise_wire_error_naming_the_field(payload: bytes, field: str, problem: str) -> None:
    with pytest.raises(WireError) as caught:
        decode(payload)
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_limits_on_size_depth_and_elements() -> None:
    with pytest.raises(WireError, match="exceeds the limit of 100 bytes"):
        decode(encode({"a": np.zeros(200, np.uint8)}), max_bytes=100)
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    assert decode(encode(deep), max_depth=10) == deep
    with pytest.raises(WireError, match="nesting deeper than 9"):
        decode(encode(deep), max_depth=9)
    with pytest.raises(WireError, match="more than the limit of 100"):
        decode(encode({"a": np.zeros(101, np.uint8)}), max_array_elements=100)
    with pytest.raises(WireError, match="150 elements in all") as caught:
        decode(encode({"a": np.zeros(100, np.uint8), "b": np.zeros(100, np.uint8)}), max_total_elements=150)
    assert caught.value.field == "b"
    with pytest.raises(WireError, match="expected the message as bytes"):
        decode("text")  # type: ignore[arg-type]


def test_huge_declared_sizes_are_refused_before_allocating() -> None:
    grey = Image.new("L", (6000, 6000))  # 36 M pixels that compress to a few kB
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    bomb = msgpack.packb({"i": {"__image__": "png", "data": buffer.getvalue()}})
    assert len(bomb) < 100_000
    huge_array = packed_array(shape=[2**31, 2**31, 2**31], data=b"")
    huge_json = json.dumps({"__numpy__": "", "dtype": "<f8", "shape": [2**40, 2**40]})
    tracemalloc.start()
    try:
        for call in (lambda: decode(bomb), lambda: decode(huge_array), lambda: decode_json_numpy(huge_json)):
            with pytest.raises(WireError, match="more than the limit"):
                call()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 2_000_000


def test_encoding_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(WireError, match="dtype int16 is not allowed") as caught:
        encode({"obs": [np.zeros(2, np.int16)]})
    assert caught.value.field == "obs[0]"
    with pytest.raises(WireError, match="map keys must be strings"):
        encode({"a": {"__ndarray__": 1}})
    with pytest.raises(WireError, match="map keys must be strings"):
        encode({1: 2})
    with pytest.raises(WireError, match="cannot encode a set"):
        encode({"a": {1, 2}})
    with pytest.raises(WireError, match="msgpack cannot encode"):
        encode({"a": 2**70})
    with pytest.raises(WireError, match="no compressed images"):
        encode_json_numpy({"i": EncodedImage.from_array(smooth_rgb(), "png")})


# --------------------------------------------------------------------------------------------------
# json_numpy (upstream OpenVLA deploy.py)
# --------------------------------------------------------------------------------------------------


def test_decodes_json_numpy_text_as_the_json_numpy_package_writes_it() -> None:
    # What json_numpy.dumps({"image": np.array([[1, 2], [3, 4]], np.uint8), ...}) produces: base64 of the raw
    # C-order bytes, numpy's dtype descr, the shape as a list.
    text = ('{"image": {"__numpy__": "AQIDBA==", "dtype": "|u1", "shape": [2, 2]}, '
            '"instruction": "put the cube in the box", "unnorm_key": "jaka"}')
    decoded = decode_json_numpy(text)
    np.testing.assert_array_equal(decoded["image"], np.array([[1, 2], [3, 4]], np.uint8))
    assert decoded["image"].dtype == np.uint8 and decoded["instruction"] == "put the cube in the box"


def test_encodes_replies_in_the_json_numpy_layout() -> None:
    action = np.array([0.5, -1.0])
    reply = json.loads(encode_json_numpy(action))
    assert reply == {"__numpy__": base64.b64encode(struct.pack("<2d", 0.5, -1.0)).decode(), "dtype": "<f8",
                     "shape": [2]}
    scalar = json.loads(encode_json_numpy(np.float32(2.0)))
    assert scalar["shape"] == [] and scalar["dtype"] == "<f4"
    assert isinstance(decode_json_numpy(json.dumps(scalar)), np.float32)  # json_numpy returns numpy scalars


def test_big_endian_and_plain_dtype_names_are_accepted() -> None:
    text = json.dumps({"__numpy__": base64.b64encode(struct.pack(">2f", 1.5, -2.0)).decode(), "dtype": ">f4",
                       "shape": [2]})
    decoded = decode_json_numpy(text)
    assert decoded.dtype == np.float32 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, [1.5, -2.0])
    plain = json.dumps({"__numpy__": base64.b64encode(b"\x01\x00").decode(), "dtype": "bool", "shape": [2]})
    np.testing.assert_array_equal(decode_json_numpy(plain), [True, False])


def test_openvla_request_plain_and_double_encoded() -> None:
    image = smooth_rgb(8, 8)
    body = encode_json_numpy({"image": image, "instruction": "pick", "unnorm_key": "jaka"})
    for text, double in ((body, False), (json.dumps({"encoded": body}), True)):
        request = decode_openvla_request(text.encode())
        assert request.double_encoded is double
        np.testing.assert_array_equal(request.payload["image"], image)
        assert request.payload["unnorm_key"] == "jaka"
    with pytest.raises(WireError, match="exactly"):
        decode_openvla_request(json.dumps({"encoded": body, "image": 1}))
    with pytest.raises(WireError, match="must be a JSON object"):
        decode_openvla_request("[1, 2]")


def test_openvla_reply_plain_double_encoded_and_error() -> None:
    action = np.linspace(-1, 1, 7)
    for double in (False, True):
        np.testing.assert_array_equal(decode_openvla_reply(encode_openvla_reply(action, double)), action)
    assert json.loads(encode_openvla_reply(action, True)) == encode_openvla_reply(action, False)
    with pytest.raises(WireError, match='answered "error"'):
        decode_openvla_reply('"error"')


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": {"__numpy__": "AQID", "dtype": "<i2", "shape": [3]}}', "not allowed"),
        ('{"a": {"__numpy__": "AQID", "dtype": "|u1", "shape": [4]}}', "base64 text of 4 bytes"),
        ('{"a": {"__numpy__": "AQ!D", "dtype": "|u1", "shape": [3]}}', "not valid base64"),
        ('{"a": {"__numpy__": "AQID", "dtype": "|u1", "shape": [3], "x": 1}}', "exactly the keys"),
        ('{"a": {"__numpy__": 5, "dtype": "|u1", "shape": [3]}}', "base64 text"),
        ('{"a": [1, 2', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
    ],
)
def test_malformed_json_numpy_raises_wire_error(text: str, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode_json_numpy(text)


def test_decode_body_dispatches_on_content_type() -> None:
    message = {"a": np.arange(3, dtype=np.int64)}
    np.testing.assert_array_equal(decode_body(encode(message), CONTENT_TYPE_MSGPACK)["a"], message["a"])
    as_json = encode_json_numpy(message).encode()
    np.testing.assert_array_equal(decode_body(as_json, "application/json; charset=utf-8")["a"], message["a"])
    assert CONTENT_TYPE_JSON == "application/json"
    with pytest.raises(WireError, match="unsupported content type 'text/plain'"):
        decode_body(as_json, "text/plain")
