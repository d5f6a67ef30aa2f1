"""--dtype resolution, the bf16 support check, and bf16 weights computed in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy import precision
from policy.checkpoint import CheckpointError
from policy.openvla import OpenVLA
from policy.precision import Precision, PrecisionError, checkpoint_dtype, resolve_precision
from policy.upcast import blockwise_linear, upcast_compute
from tests.policy.conftest import random_images

INSTRUCTIONS = ["pick up the red block", "lift the cup"]


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("bf16") / "model", dtype=torch.bfloat16)


@pytest.fixture
def bf16_arithmetic(monkeypatch):
    """Pretend the device has (True) or lacks (False) bf16 arithmetic."""
    def set_support(value: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16", lambda device: value)
    return set_support


def test_checkpoint_dtype_comes_from_config_or_headers(tiny_model_dir, bf16_model_dir, tmp_path):
    assert checkpoint_dtype(tiny_model_dir) == torch.float32
    assert checkpoint_dtype(bf16_model_dir) == torch.bfloat16
    (tmp_path / "model.safetensors").write_bytes((bf16_model_dir / "model.safetensors").read_bytes())
    assert checkpoint_dtype(tmp_path) == torch.bfloat16  # no config.json: the headers decide


def test_resolution_of_each_choice(tiny_model_dir, bf16_model_dir, bf16_arithmetic):
    bf16_arithmetic(False)
    assert resolve_precision("fp32", bf16_model_dir, "cpu") == Precision(torch.float32, torch.float32)
    assert resolve_precision("auto", tiny_model_dir, "cpu") == Precision(torch.float32, torch.float32)
    assert resolve_precision("auto", bf16_model_dir, "cpu") == Precision(torch.bfloat16, torch.float32)
    with pytest.raises(PrecisionError, match=r"--dtype bf16: this CPU .* has no bf16 arithmetic.*--dtype auto"):
        resolve_precision("bf16", tiny_model_dir, "cpu")
    bf16_arithmetic(True)
    assert resolve_precision("bf16", tiny_model_dir, "cpu") == Precision(torch.bfloat16, torch.bfloat16)
    assert resolve_precision("auto", bf16_model_dir, "cpu") == Precision(torch.bfloat16, torch.bfloat16)
    with pytest.raises(PrecisionError, match="one of auto, bf16, fp32"):
        resolve_precision("float16", tiny_model_dir, "cpu")


def test_an_unsupported_bf16_request_is_refused_before_loading(tiny_model_dir, bf16_arithmetic):
    bf16_arithmetic(False)
    with pytest.raises(CheckpointError, match="no bf16 arithmetic"):
        OpenVLA.from_pretrained(tiny_model_dir, dtype="bf16")


def test_bf16_weights_computed_in_float32_equal_a_float32_model_of_the_rounded_weights(tiny_model, bf16_model_dir,
                                                                                   bf16_arithmetic):
    bf16_arithmetic(False)
    upcast = OpenVLA.from_pretrained(bf16_model_dir, dtype="auto")
    assert upcast.dtype == torch.bfloat16 and upcast.input_dtype == torch.float32
    reference = OpenVLA.from_pretrained(bf16_model_dir, dtype=torch.float32)  # the same rounded values, widened
    images = random_images(2, seed=3)
    a = upcast.predict_action(images, INSTRUCTIONS)
    b = reference.predict_action(images, INSTRUCTIONS)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_allclose(a.bin_probs, b.bin_probs, atol=1e-5)
    stored = {name: p for name, p in upcast.named_parameters()}
    assert all(p.dtype == torch.bfloat16 for p in stored.values())  # the float32 copies were dropped again
    for name, parameter in reference.named_parameters():
        assert torch.equal(stored[name].float(), parameter), name


def test_upcast_leaves_trainable_parameters_alone_and_gradients_reach_them(tiny_model):
    model = OpenVLA(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.to(torch.bfloat16)
    model.projector.fc3.weight.data = model.projector.fc3.weight.data.float()
    assert upcast_compute(model) > 10 and upcast_compute(model) == 0  # idempotent
    assert not model.projector.fc1.weight.requires_grad  # bf16 weights are frozen
    model.projector.fc3.weight.requires_grad_(True)
    model.compute_dtype = torch.float32
    pixels = model.preprocess(random_images(1, seed=1))
    ids = torch.tensor([tiny_model.encode_instructions(["lift the cup"])[0]])
    model(input_ids=ids, pixel_values=pixels).logits.float().sum().backward()
    assert model.projector.fc3.weight.grad is not None and model.projector.fc3.weight.grad.abs().sum() > 0
    assert model.projector.fc1.weight.dtype == torch.bfloat16 and model.projector.fc1.weight.grad is None


def test_blockwise_linear_equals_a_float32_linear_and_its_input_gradient():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3000, 700, generator=generator).to(torch.bfloat16)  # 4 blocks of 748 rows
    bias = torch.randn(3000, generator=generator).to(torch.bfloat16)
    x = torch.randn(2, 5, 700, generator=generator, requires_grad=True)
    y = blockwise_linear(x, weight, bias)
    expected_x = x.detach().clone().requires_grad_(True)
    expected = torch.nn.functional.linear(expected_x, weight.float(), bias.float())
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-5)
    upstream = torch.randn(2, 5, 3000, generator=generator)
    y.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, expected_x.grad, atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="frozen"):
        blockwise_linear(x, weight.float().requires_grad_(True).to(torch.bfloat16).detach().requires_grad_(True))
