"""Fuzzing policy.wire: any input decodes correctly or raises WireError, never anything else."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from policy.wire import (
    ALLOWED_DTYPES,
    EncodedImage,
    WireError,
    decode,
    decode_json_numpy,
    decode_openvla_request,
    encode,
    encode_json_numpy,
)
from tests.conftest import REPO_ROOT

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMITS = {"max_bytes": 1 << 20, "max_array_elements": 4096, "max_total_elements": 8192, "max_depth": 8}


def decode_or_wire_error(decoder, data, **limits):
    """The property under test: a value or WireError. Any other exception fails the test."""
    try:
        return decoder(data, **limits)
    except WireError:
        return None


def small_image() -> np.ndarray:
    y, x = np.mgrid[0:16, 0:20]
    return np.stack([x * 12, y * 15, (x + y) * 7], -1).astype(np.uint8)


def valid_message() -> dict:
    return {"image": np.arange(60, dtype=np.uint8).reshape(4, 5, 3), "instruction": "put the cube in the box",
            "state": np.linspace(-1, 1, 7).astype(np.float32), "png": EncodedImage.from_array(small_image(), "png"),
            "jpeg": EncodedImage.from_array(small_image(), "jpeg"), "meta": {"step": 3, "ok": True, "ids": [1, 2]}}


VALID_MSGPACK = encode(valid_message())
VALID_JSON = encode_json_numpy({"image": small_image(), "instruction": "pick", "unnorm_key": "jaka"})

arrays = st.sampled_from(ALLOWED_DTYPES).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
                             elements=None if dtype != "float16" else st.floats(width=16, allow_nan=True)))


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    decode_or_wire_error(decode, data, **SMALL_LIMITS)
    decode_or_wire_error(decode_json_numpy, data, **SMALL_LIMITS)


@FUZZ
@given(st.data())
def test_truncated_and_mutated_msgpack_envelopes(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(VALID_MSGPACK)))
    decode_or_wire_error(decode, VALID_MSGPACK[:cut], **SMALL_LIMITS)
    mutated = bytearray(VALID_MSGPACK)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    decode_or_wire_error(decode, bytes(mutated), **SMALL_LIMITS)


@FUZZ
@given(st.data())
def test_truncated_and_mutated_json_numpy(data: st.DataObject) -> None:
    text = VALID_JSON.encode()
    decode_or_wire_error(decode_json_numpy, text[:data.draw(st.integers(0, len(text)))], **SMALL_LIMITS)
    mutated = bytearray(text)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.sampled_from(b'"{}[],:0aA=+/\\ \xff'))
    decode_or_wire_error(decode_openvla_request, bytes(mutated), **SMALL_LIMITS)


int64s = st.integers(-(2**63), 2**63 - 1)  # what msgpack can carry
dtype_names = st.one_of(st.sampled_from(ALLOWED_DTYPES), st.sampled_from(["int16", "object", "<f4", "V8", "O", ""]),
                        int64s, st.none())
shapes = st.one_of(st.lists(st.integers(-3, 2**62), max_size=6), st.lists(st.integers(0, 6), max_size=4),
                   st.text(max_size=3), int64s, st.lists(st.booleans(), max_size=3))


@FUZZ
@given(dtype=dtype_names, shape=shapes, payload=st.one_of(st.binary(max_size=256), st.text(max_size=8), st.none()),
       marker=st.sampled_from([True, 1, False, "yes"]))
def test_arbitrary_array_declarations(dtype, shape, payload, marker) -> None:
    packed = msgpack.packb({"a": {"__ndarray__": marker, "dtype": dtype, "shape": shape, "data": payload}})
    decoded = decode_or_wire_error(decode, packed, **SMALL_LIMITS)
    if decoded is not None:  # then it must be exactly what was declared
        array = decoded["a"]
        assert marker is True and array.dtype == np.dtype(dtype) and list(array.shape) == list(shape)
        assert array.nbytes == len(payload)


@FUZZ
@given(dtype=st.one_of(st.sampled_from(["|u1", "<u2", ">i4", "<i8", "<f2", ">f8", "|b1", "<i2", "float32"]),
                       int64s),
       shape=shapes, payload=st.binary(max_size=64), mangle=st.booleans())
def test_arbitrary_json_numpy_declarations(dtype, shape, payload: bytes, mangle: bool) -> None:
    text = base64.b64encode(payload).decode()
    if mangle:
        text = text[::-1]
    document = json.dumps({"x": {"__numpy__": text, "dtype": dtype, "shape": shape}})
    decoded = decode_or_wire_error(decode_json_numpy, document, **SMALL_LIMITS)
    if decoded is not None:
        assert np.asarray(decoded["x"]).nbytes == len(base64.b64decode(text))


@FUZZ
@given(arrays)
def test_arrays_round_trip_bit_exactly_in_both_formats(array: np.ndarray) -> None:
    for decoded in (decode(encode({"a": array}))["a"], decode_json_numpy(encode_json_numpy({"a": array}))["a"]):
        decoded = np.asarray(decoded)
        assert decoded.dtype == array.dtype and decoded.shape == array.shape
        assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()  # NaN payloads included


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png"]))
def test_arbitrary_image_payloads(payload: bytes, kind: str) -> None:
    valid = EncodedImage.from_array(small_image(), kind).data
    for data in (payload, valid[: len(payload) % len(valid)], valid[:20] + payload):
        decode_or_wire_error(decode, msgpack.packb({"i": {"__image__": kind, "data": data}}), **SMALL_LIMITS)


def test_wire_does_not_import_torch() -> None:
    code = "import sys, policy.wire; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
