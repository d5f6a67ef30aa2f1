"""Bad requests get a 4xx JSON error naming the field; the server keeps answering afterwards."""

from __future__ import annotations

import base64
import json

import msgpack
import numpy as np
import pytest
import requests

from policy.client import PolicyClient, PolicyRequestError
from policy.inference import InferenceEngine
from policy.server_validation import RequestLimits
from policy.wire import EncodedImage, encode, encode_json_numpy
from tests.policy.server_testing import INSTRUCTION, rgb, running_server

MSGPACK = {"Content-Type": "application/msgpack"}
LIMITS = RequestLimits(max_body_bytes=2 * 1024 * 1024, max_batch=4, max_image_side_px=512, max_instruction_chars=200,
                       state_dim=13)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = InferenceEngine.load(tiny_model_dir, threads=1)
    with running_server(engine, limits=LIMITS) as running:
        yield running


def observation(**changes) -> dict:
    return {"image": rgb(32, 32), "instruction": INSTRUCTION, **changes}


def post(server, body: bytes, headers=None) -> requests.Response:
    return requests.post(server.url + "/act", data=body, headers=headers or MSGPACK, timeout=30)


def grey_png() -> EncodedImage:
    return EncodedImage.from_array(rgb(16, 16)[..., 0], "png")


CASES = [
    ({"observation": observation(image=rgb(32, 32).astype(np.float32))}, "observation.image", "RGB uint8"),
    ({"observation": observation(image=rgb(32, 32)[..., :1].copy())}, "observation.image", "(H, W, 3)"),
    ({"observation": observation(image=grey_png())}, "observation.image", "grey or RGBA"),
    ({"observation": observation(image=rgb(600, 20))}, "observation.image", "1..512 px"),
    ({"observation": observation(image=np.zeros((0, 5, 3), np.uint8))}, "observation.image", "1..512 px"),
    ({"observation": observation(image="a picture")}, "observation.image", "got str"),
    ({"observation": observation(instruction="")}, "observation.instruction", "is empty"),
    ({"observation": observation(instruction="   ")}, "observation.instruction", "is empty"),
    ({"observation": observation(instruction="x" * 201)}, "observation.instruction", "201 characters"),
    ({"observation": observation(instruction=7)}, "observation.instruction", "must be a string"),
    ({"observation": observation(state=np.zeros(12))}, "observation.state", "13 values"),
    ({"observation": observation(state=np.full(13, np.nan))}, "observation.state", "non-finite"),
    ({"observation": observation(state=np.zeros((13, 1)))}, "observation.state", "1-D state"),
    ({"observation": observation(state=np.zeros(13, bool))}, "observation.state", "numeric array"),
    ({"observation": {"image": rgb(8, 8)}}, "observation.instruction", "missing"),
    ({"observation": observation(depth=rgb(8, 8))}, "observation", "unknown fields ['depth']"),
    ({"observation": observation(), "unnorm_key": "bridge_orig"}, "unnorm_key", "not a statistics key"),
    ({"observation": observation(), "unnorm_key": 3}, "unnorm_key", "non-empty string"),
    ({"observation": observation(), "return_probs": "yes"}, "return_probs", "true or false"),
    ({"observation": observation(), "observations": [observation()]}, "", "exactly one of"),
    ({}, "", "exactly one of"),
    ({"observations": []}, "observations", "1..4 observations"),
    ({"observations": [observation()] * 5}, "observations", "1..4 observations"),
    ({"observations": [observation(), observation(image=rgb(4, 4, 1)[..., :2].copy())]}, "observations[1].image",
     "(H, W, 3)"),
    ({"observation": observation(), "extra": 1}, "", "unknown fields ['extra']"),
    ([1, 2, 3], "", "must be a map"),
]


@pytest.mark.parametrize(("document", "field", "problem"), CASES)
def test_invalid_msgpack_requests_name_the_field(server, document, field, problem):
    response = post(server, encode(document))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == 400 and error["field"] == field and problem in error["message"], error


@pytest.mark.parametrize(("body", "field", "problem"), [
    (b"", "", "not a valid msgpack document"),
    (b"\xc1\xc1", "", "not a valid msgpack document"),
    (msgpack.packb({"observation": {"image": {"__ndarray__": True, "dtype": "uint8", "shape": [4, 4, 3],
                                              "data": b"\0" * 47}, "instruction": "x"}}), "observation.image",
     "48"),
    (msgpack.packb({"observation": {"image": {"__image__": "jpeg", "data": b"\xff\xd8 broken"}, "instruction": "x"}}),
     "observation.image", "not a valid jpeg"),
    (msgpack.packb({"observation": {"image": {"__ndarray__": True, "dtype": "uint8", "shape": [1000, 1000, 3],
                                              "data": b""}, "instruction": "x"}}), "observation.image", "limit"),
])
def test_malformed_envelopes_are_400(server, body, field, problem):
    response = post(server, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == field and problem in error["message"], error


def json_array(array: np.ndarray) -> dict:
    return {"__numpy__": base64.b64encode(array.tobytes()).decode(), "dtype": array.dtype.str,
            "shape": list(array.shape)}


@pytest.mark.parametrize(("document", "field", "problem"), [
    ({"image": json_array(rgb(8, 8)), "instruction": "\ud800 lone surrogate"}, "instruction", "not valid Unicode"),
    ({"image": json_array(rgb(8, 8).astype("<f8")), "instruction": "x"}, "image", "RGB uint8"),
    ({"image": json_array(rgb(8, 8))}, "instruction", "missing"),
    ({"image": json_array(rgb(8, 8)), "instruction": "x", "proprio": [1, 2]}, "", "unknown fields ['proprio']"),
    ({"image": json_array(rgb(8, 8)), "instruction": "x", "state": [1, 2]}, "state", "numeric array"),
    ({"image": json_array(rgb(8, 8)), "instruction": "x", "wrist_image": json_array(rgb(8, 8))}, "wrist_image",
     "one camera"),
    ({"image": [[1, 2, 3]], "instruction": "x"}, "image", "got list"),
    ({"encoded": 5}, "encoded", "double-encoded"),
])
def test_invalid_upstream_requests_name_the_field(server, document, field, problem):
    body = json.dumps(document).encode()
    response = post(server, body, {"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == field and problem in error["message"], error


def test_size_content_type_and_routing_errors_are_json(server):
    big = post(server, b"\0" * (LIMITS.max_body_bytes + 1))
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_entity_too_large"
    wrong_type = post(server, encode({"observation": observation()}), {"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/msgpack" in wrong_type.json()["error"]["message"]
    no_type = requests.post(server.url + "/act", data=b"x", timeout=10)
    assert no_type.status_code == 415
    missing = requests.get(server.url + "/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404
    wrong_method = requests.get(server.url + "/act", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_server_keeps_answering_after_bad_requests(server):
    for document, _, _ in CASES[:6]:
        post(server, encode(document))
    post(server, b"\xc1")
    post(server, encode_json_numpy({"image": rgb(8, 8), "instruction": ""}).encode(), {"Content-Type":
                                                                                         "application/json"})
    with PolicyClient(server.url) as client:
        assert client.act(rgb(64, 64), INSTRUCTION, state=np.zeros(13)).action.shape == (7,)
        health = client.health()
        with pytest.raises(PolicyRequestError) as caught:
            client.act(rgb(64, 64), INSTRUCTION, state=np.zeros(3))
    assert health["requests_failed"] >= 8 and health["requests_served"] >= 1
    assert caught.value.status == 400 and caught.value.field == "observation.state"
