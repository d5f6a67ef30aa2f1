"""Fuzzing ``POST /act`` on a live server: whatever arrives, the answer is never a 5xx and the server stays up.

The default run keeps each property to a few dozen examples; ``-m slow`` runs the same properties at length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from policy.client import PolicyClient
from policy.inference import InferenceEngine
from policy.protocol import encode_act_request
from policy.server_validation import RequestLimits
from policy.wire import ALLOWED_DTYPES, EncodedImage, encode, encode_json_numpy
from tests.policy.server_testing import INSTRUCTION, rgb, running_server

QUICK = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
LIMITS = RequestLimits(max_body_bytes=256 * 1024, max_batch=3, max_image_side_px=64, max_instruction_chars=100)
CONTENT_TYPES = ["application/msgpack", "application/json", "application/msgpack; charset=binary", "text/plain", ""]
VALID_MSGPACK = encode_act_request([rgb(16, 16)], [INSTRUCTION], [np.zeros(7)], batch=False, return_probs=True)
VALID_JSON = encode_json_numpy({"image": rgb(16, 16), "instruction": INSTRUCTION}).encode()


@dataclass
class Target:
    url: str
    session: requests.Session


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = InferenceEngine.load(tiny_model_dir, threads=1)
    with running_server(engine, limits=LIMITS) as running, requests.Session() as session:
        yield Target(running.url, session)
        # the server still answers a valid request after everything the module threw at it
        with PolicyClient(running.url) as client:
            assert client.act(rgb(32, 32), INSTRUCTION).action.shape == (7,)


def check(server: Target, body: bytes, content_type: str = "application/msgpack") -> requests.Response:
    """The property: a 2xx with the reply's fields, or a 4xx JSON error saying what is wrong; never a 5xx."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = server.session.post(server.url + "/act", data=body, headers=headers, timeout=60)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["status"] == response.status_code and error["message"]
    return response


small_arrays = st.sampled_from(ALLOWED_DTYPES).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=20)))
images = st.one_of(
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 80), st.integers(0, 80), st.sampled_from([1, 3, 4]))),
    small_arrays,
    st.builds(lambda a, f: EncodedImage.from_array(a, f),
              hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))),
              st.sampled_from(["jpeg", "png"])),
    st.binary(max_size=64), st.text(max_size=10), st.none(), st.integers())
texts = st.one_of(st.text(max_size=120), st.just(""), st.just(INSTRUCTION), st.integers(), st.none(),
                  st.binary(max_size=8))
states = st.one_of(st.none(), hnp.arrays(st.sampled_from([np.float64, np.float32, np.int32, np.bool_]),
                                         st.tuples(st.integers(0, 70)),
                                         elements=None), small_arrays, st.text(max_size=4))


@st.composite
def observations(draw) -> dict:
    observation = {}
    if draw(st.integers(0, 9)):
        observation["image"] = draw(images)
    if draw(st.integers(0, 9)):
        observation["instruction"] = draw(texts)
    state = draw(states)
    if state is not None:
        observation["state"] = state
    if not draw(st.integers(0, 9)):
        observation[draw(st.text(max_size=6))] = draw(st.integers())
    return observation


@st.composite
def requests_documents(draw) -> object:
    document: dict = {}
    shape = draw(st.sampled_from(["single", "batch", "both", "neither", "garbage"]))
    if shape == "garbage":
        return draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5), st.integers(), st.none()))
    if shape in ("single", "both"):
        document["observation"] = draw(st.one_of(observations(), st.integers(), st.lists(observations(), max_size=2)))
    if shape in ("batch", "both"):
        document["observations"] = draw(st.one_of(st.lists(observations(), max_size=5), observations()))
    if draw(st.booleans()):
        document["unnorm_key"] = draw(st.one_of(st.just("untrained"), st.text(max_size=8), st.integers(), st.none()))
    if draw(st.booleans()):
        document["return_probs"] = draw(st.one_of(st.booleans(), st.integers(0, 1), st.text(max_size=2)))
    return document


def property_structured(server, document) -> None:
    try:
        body = encode(document)
    except ValueError:  # not encodable on the client side (e.g. object dtype): nothing to send
        return
    response = check(server, body)
    if response.status_code == 200:
        reply = msgpack.unpackb(response.content)
        assert set(reply) >= {"checkpoint_id", "timing", "unnorm_key"}


def property_mutated(server, data) -> None:
    source = data.draw(st.sampled_from([VALID_MSGPACK, VALID_JSON]))
    body = bytearray(source)
    for _ in range(data.draw(st.integers(0, 6))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    body = bytes(body[: data.draw(st.integers(0, len(body)))])
    check(server, body, data.draw(st.sampled_from(CONTENT_TYPES)))


def property_json(server, document) -> None:
    check(server, json.dumps(document).encode(), "application/json")


json_documents = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["image", "instruction", "unnorm_key", "encoded",
                                                                "__numpy__", "dtype", "shape", "x"]), children,
                                               max_size=4)),
    max_leaves=12)


@QUICK
@given(document=requests_documents())
def test_structured_requests(server, document):
    property_structured(server, document)


@QUICK
@given(data=st.data())
def test_mutated_and_truncated_bodies(server, data):
    property_mutated(server, data)


@QUICK
@given(document=json_documents)
def test_arbitrary_json_documents(server, document):
    property_json(server, document)


@QUICK
@given(body=st.binary(max_size=2048), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes(server, body, content_type):
    check(server, body, content_type)


def test_nan_state_huge_bodies_and_bombs(server):
    state = np.full(7, np.nan)
    nan_state = check(server, encode_act_request([rgb(8, 8)], [INSTRUCTION], [state], batch=False))
    assert nan_state.status_code == 400 and "non-finite" in nan_state.json()["error"]["message"]
    huge = check(server, b"\x91" + b"\0" * (LIMITS.max_body_bytes + 10))
    assert huge.status_code == 413
    header_lies = msgpack.packb({"observation": {"image": {"__ndarray__": True, "dtype": "uint8",
                                                           "shape": [2**40, 2**40, 3], "data": b""},
                                                 "instruction": INSTRUCTION}})
    assert check(server, header_lies).status_code == 400
    bomb = EncodedImage.from_array(np.zeros((4000, 4000), np.uint8), "png")  # a few kB, 16 M pixels
    assert check(server, encode({"observation": {"image": bomb, "instruction": INSTRUCTION}})).status_code == 400
    deep: object = INSTRUCTION
    for _ in range(50):
        deep = [deep]
    assert check(server, encode({"observation": deep})).status_code == 400
    assert check(server, json.dumps({"encoded": "[" * 10000}).encode(), "application/json").status_code == 400


@pytest.mark.slow
@LONG
@given(document=requests_documents())
def test_structured_requests_at_length(server, document):
    property_structured(server, document)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_mutated_and_truncated_bodies_at_length(server, data):
    property_mutated(server, data)


@pytest.mark.slow
@LONG
@given(document=json_documents)
def test_arbitrary_json_documents_at_length(server, document):
    property_json(server, document)
