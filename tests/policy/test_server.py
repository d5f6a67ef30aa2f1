"""The policy server on loopback with a tiny model: actions equal in-process inference, in every encoding."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from policy.client import PolicyClient
from policy.deployment import DeploymentError
from policy.inference import InferenceEngine
from policy.protocol import TIMING_FIELDS
from policy.wire import CONTENT_TYPE_JSON, decode
from tests.policy.server_testing import INSTRUCTION, rgb, running_server


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return InferenceEngine.load(tiny_model_dir, threads=1)


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine) as running:
        yield running


def expected_actions(engine, images, instructions) -> np.ndarray:
    return engine.model.predict_action(images, instructions).actions


@pytest.mark.parametrize("image_format", ["raw", "png"])
def test_lossless_encodings_give_exactly_the_in_process_action(engine, server, image_format):
    image = rgb(224, 224, seed=1)
    with PolicyClient(server.url, image_format=image_format) as client:
        reply = client.act(image, INSTRUCTION, return_probs=True)
    prediction = engine.model.predict_action([image], [INSTRUCTION])
    np.testing.assert_array_equal(reply.actions, prediction.actions)
    np.testing.assert_array_equal(reply.bin_probs, prediction.bin_probs)
    assert reply.action.shape == (7,) and reply.unnorm_key == "untrained"
    assert reply.checkpoint_id == engine.checkpoint_id and reply.checkpoint_id.startswith("model@")
    assert set(reply.timing) == set(TIMING_FIELDS)
    assert 0 < reply.timing["inference_s"] <= reply.timing["total_s"]


def test_jpeg_images_are_decoded_as_the_client_encoded_them(engine, server):
    image = rgb(120, 160, seed=2)
    with PolicyClient(server.url, image_format="jpeg", jpeg_quality=80) as client:
        reply = client.act(image, INSTRUCTION)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=80)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(reply.actions, expected_actions(engine, [decoded], [INSTRUCTION]))


def test_batch_request_runs_as_one_batch_and_matches_single_requests(engine, server):
    images = [rgb(224, 224, seed=s) for s in range(3)] + [rgb(60, 90, seed=9)]
    instructions = [INSTRUCTION, "pick up the green cylinder", "open the gripper", INSTRUCTION]
    with PolicyClient(server.url) as client:
        batch = client.act_batch(images, instructions, return_probs=True)
        singles = np.stack([client.act(image, text).action for image, text in zip(images, instructions, strict=True)])
    assert batch.actions.shape == (4, 7) and batch.bin_probs.shape == (4, 7, 256)
    np.testing.assert_allclose(batch.actions, singles, atol=1e-12)  # left padding: each row as alone
    np.testing.assert_array_equal(batch.actions, expected_actions(engine, images, instructions))


def test_upstream_json_numpy_request_is_answered_in_upstream_format(engine, server):
    """Built by hand exactly as upstream's json_numpy writes it, independently of policy.wire."""
    image = rgb(224, 224, seed=3)
    array = {"__numpy__": base64.b64encode(image.tobytes()).decode(), "dtype": image.dtype.str,
             "shape": list(image.shape)}
    body = {"image": array, "instruction": INSTRUCTION, "unnorm_key": "untrained"}
    expected = expected_actions(engine, [image], [INSTRUCTION])[0]
    response = requests.post(server.url + "/act", json=body, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(CONTENT_TYPE_JSON)
    answer = response.json()
    assert answer["dtype"] == "<f8" and answer["shape"] == [7]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(answer["__numpy__"]), "<f8"), expected)
    assert "inference;dur=" in response.headers["Server-Timing"]
    # double-encoded request -> double-encoded reply (a JSON string holding the json_numpy text)
    response = requests.post(server.url + "/act", json={"encoded": json.dumps(body)}, timeout=30)
    inner = json.loads(response.json())
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(inner["__numpy__"]), "<f8"), expected)
    with PolicyClient(server.url) as client:
        np.testing.assert_array_equal(client.act_upstream(image, INSTRUCTION), expected)


def test_metadata_describes_the_served_checkpoint(engine, server):
    with PolicyClient(server.url) as client:
        metadata, health = client.metadata(), client.health()
    assert metadata["action_space"]["name"] == "ee_delta"
    assert metadata["action_space"]["units"] == ["mm", "mm", "mm", "rad", "rad", "rad", "opening"]
    assert metadata["unnorm_key"] == "untrained" and metadata["unnorm_keys"] == ["untrained"]
    assert metadata["image_size"] == 56 and metadata["center_crop"] is False
    checkpoint = metadata["checkpoint"]
    assert checkpoint["fingerprint"].startswith("sha256:") and checkpoint["fingerprint_method"] == "weights-sha256"
    assert checkpoint["id"] == engine.checkpoint_id and checkpoint["tiny_preset"] == "test"
    assert metadata["software_version"] and metadata["auth"] == {"required": False, "scheme": "Bearer"}
    assert metadata["limits"]["max_batch"] == 16
    assert health["status"] == "ok" and health["checkpoint_id"] == engine.checkpoint_id


def test_fingerprint_changes_with_the_weights_only(tiny_model_dir, tmp_path):
    from policy.deployment import weights_fingerprint

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert weights_fingerprint(copy) == weights_fingerprint(tiny_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy)[0] != weights_fingerprint(tiny_model_dir)[0]


def test_fanvla_json_sets_the_deployment_and_conflicting_options_are_refused(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "finetuned")
    (model_dir / "fanvla.json").write_text(json.dumps({
        "action_space": {"name": "joint_delta"}, "unnorm_key": "untrained", "center_crop": True,
        "fingerprints": {"weights": "sha256:" + "ab" * 32, "data": "sha256:" + "cd" * 32}}))
    engine = InferenceEngine.load(model_dir, threads=1)
    metadata = engine.metadata()
    assert metadata["action_space"]["name"] == "joint_delta" and metadata["center_crop"] is True
    assert metadata["checkpoint"]["id"] == "finetuned@abababababab"
    assert metadata["checkpoint"]["fingerprints"]["data"] == "sha256:" + "cd" * 32
    image = rgb(100, 100, seed=4)
    crop = engine.model.predict_action([image], [INSTRUCTION], center_crop=True).actions
    np.testing.assert_array_equal(engine.predict([image], [INSTRUCTION]).actions, crop)
    with pytest.raises(DeploymentError, match="joint_delta"):
        InferenceEngine.load(model_dir, action_space="ee_delta")
    with pytest.raises(DeploymentError, match="not in"):
        InferenceEngine.load(tiny_model_dir, unnorm_key="bridge_orig")


def test_concurrent_clients_share_one_model_and_get_their_own_answers(engine, server):
    images = [rgb(224, 224, seed=10 + i) for i in range(6)]
    expected = expected_actions(engine, images, [INSTRUCTION] * len(images))
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with PolicyClient(server.url, timeout_s=60) as client:
                results[index] = [client.act(images[(index + k) % 6], INSTRUCTION).action for k in range(4)]
        except BaseException as error:  # reported below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    for index, actions in results.items():
        for k, action in enumerate(actions):
            np.testing.assert_allclose(action, expected[(index + k) % 6], atol=1e-12)
    assert len(results) == 6


def test_werkzeug_server_answers_the_same(engine):
    image = rgb(224, 224, seed=5)
    with running_server(engine, wsgi="werkzeug") as server, PolicyClient(server.url) as client:
        reply = client.act(image, INSTRUCTION)
        raw = requests.post(server.url + "/act", data=b"\x81\xa1x\x01",
                            headers={"Content-Type": "application/msgpack"}, timeout=10)
    np.testing.assert_array_equal(reply.action, expected_actions(engine, [image], [INSTRUCTION])[0])
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request"


def test_reply_envelope_layout(server):
    from policy.protocol import encode_act_request

    body = encode_act_request([rgb(32, 32)], [INSTRUCTION], batch=False)
    response = requests.post(server.url + "/act", data=body, headers={"Content-Type": "application/msgpack"},
                             timeout=30)
    document = decode(response.content)
    assert sorted(document) == ["action", "checkpoint_id", "timing", "unnorm_key"]
    assert document["action"].dtype == np.float64 and document["action"].shape == (7,)
