from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policy.processing import (
    ImageSettings,
    center_crop_box,
    preprocess_image,
    preprocess_image_array,
)
from tests.policy.conftest import random_images


def test_reproduces_fixture_pixel_values_bit_exactly(openvla_fixtures, fixture_reference):
    settings = ImageSettings.from_directory(openvla_fixtures / "tiny")
    for index in (0, 1):  # 256x320 (downscaling) and 180x240 (upscaling)
        pixels = preprocess_image(fixture_reference[f"image_{index}"], settings=settings)
        assert pixels.dtype == torch.float32 and pixels.shape == (6, 224, 224)
        np.testing.assert_array_equal(pixels.numpy(), fixture_reference[f"pixel_values_{index}"][0])


def test_writes_the_upstream_preprocessor_config(openvla_fixtures):
    written = ImageSettings().to_preprocessor_config()
    assert written == json.loads((openvla_fixtures / "openvla7b_preprocessor_config.json").read_text())
    small = ImageSettings(image_size=112)
    assert ImageSettings.from_preprocessor_config(small.to_preprocessor_config()) == small


def test_small_image_size_and_per_backbone_normalisation():
    image = np.full((40, 60, 3), 255, dtype=np.uint8)
    pixels = preprocess_image(image, image_size=56)
    assert pixels.shape == (6, 56, 56)
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406, 0.5, 0.5, 0.5), (0.229, 0.224, 0.225, 0.5, 0.5, 0.5),
                                            strict=True)]
    np.testing.assert_allclose(pixels.mean(dim=(1, 2)).numpy(), expected, rtol=1e-6)


def test_center_crop_keeps_ninety_percent_of_the_area():
    left, top, right, bottom = center_crop_box(100, 200, 0.9)
    assert (right - left) * (bottom - top) == pytest.approx(0.9 * 100 * 200)
    assert (left + right) / 2 == pytest.approx(100) and (top + bottom) / 2 == pytest.approx(50)
    image = random_images(1, seed=3, shape=(120, 160))[0]
    cropped = preprocess_image_array(image, center_crop=True)
    np.testing.assert_array_equal(cropped, preprocess_image_array(image, crop_box=center_crop_box(120, 160)))
    assert np.abs(cropped - preprocess_image_array(image)).max() > 0.1


def test_crop_zooms_in():
    # A centred white square on black covers more of the output after the centre crop.
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    image[30:70, 30:70] = 255
    plain = preprocess_image_array(image, ImageSettings(image_size=56))
    cropped = preprocess_image_array(image, ImageSettings(image_size=56), center_crop=True)
    assert (cropped[3] > 0).sum() > (plain[3] > 0).sum()


def test_bad_images_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="not both"):
        preprocess_image_array(np.zeros((10, 10, 3), dtype=np.uint8), center_crop=True, crop_box=(0, 0, 5, 5))


def test_unsupported_resize_strategy_is_refused():
    config = ImageSettings().to_preprocessor_config() | {"image_resize_strategy": "letterbox"}
    with pytest.raises(ValueError, match="letterbox"):
        ImageSettings.from_preprocessor_config(config)
