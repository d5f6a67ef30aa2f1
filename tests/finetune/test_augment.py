"""Augmentation (crop window, colour jitter), the frame cache, and the pixel values the model sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.augment import (
    AugmentParams,
    _hsv_to_rgb,
    _rgb_to_hsv,
    center_windows,
    color_jitter,
    crop_windows,
    normalize_pixels,
    sample_params,
    to_unit_float,
    training_pixels,
)
from finetune.frames import crop_source_size, resize_frame
from policy.processing import ImageSettings, preprocess_image


def _neutral(batch: int) -> AugmentParams:
    return AugmentParams(offsets=np.zeros((batch, 2), np.int64), brightness=np.zeros(batch), contrast=np.ones(batch),
                         saturation=np.ones(batch), hue=np.zeros(batch))


def test_crop_source_size_gives_a_window_of_nine_tenths_of_the_area():
    for size in (56, 112, 224):
        source = crop_source_size(size)
        assert abs((size / source) ** 2 - 0.9) < 2e-3
    assert crop_source_size(112) == 118 and crop_source_size(224) == 236


def test_params_depend_only_on_seed_and_stream_position():
    a = sample_params(3, np.array([10, 11, 12]), max_offset=6)
    b = sample_params(3, np.array([12, 10]), max_offset=6)
    np.testing.assert_array_equal(a.offsets[[2, 0]], b.offsets)
    np.testing.assert_array_equal(a.hue[[2, 0]], b.hue)
    c = sample_params(4, np.array([10, 11, 12]), max_offset=6)
    assert not np.array_equal(a.brightness, c.brightness)
    many = sample_params(0, np.arange(2000), max_offset=6)
    assert many.offsets.min() == 0 and many.offsets.max() == 6
    assert -0.2 <= many.brightness.min() < -0.19 and 0.19 < many.brightness.max() <= 0.2
    assert many.contrast.min() >= 0.8 and many.saturation.max() <= 1.2 and np.abs(many.hue).max() <= 0.05


def test_crop_windows_cut_at_the_offsets():
    frames = np.arange(2 * 10 * 10 * 3, dtype=np.int64).reshape(2, 10, 10, 3).astype(np.uint8)
    windows = crop_windows(frames, np.array([[0, 2], [2, 1]]), 8)
    np.testing.assert_array_equal(windows[0], frames[0, 0:8, 2:10])
    np.testing.assert_array_equal(windows[1], frames[1, 2:10, 1:9])
    np.testing.assert_array_equal(center_windows(frames, 8)[1], frames[1, 1:9, 1:9])


def test_hsv_round_trip_and_neutral_jitter_are_identity():
    images = torch.rand(4, 3, 9, 11)
    images[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # grey: no hue
    images[1, :, 0, 0] = 0.0  # black
    np.testing.assert_allclose(_hsv_to_rgb(*_rgb_to_hsv(images)).numpy(), images.numpy(), atol=1e-6)
    np.testing.assert_allclose(color_jitter(images, _neutral(4)).numpy(), images.numpy(), atol=1e-6)


def test_colour_jitter_moves_what_it_should():
    images = torch.rand(1, 3, 8, 8) * 0.5 + 0.25
    params = _neutral(1)
    brighter = color_jitter(images, AugmentParams(**{**params.__dict__, "brightness": np.array([0.1])}))
    np.testing.assert_allclose(brighter.numpy(), (images + 0.1).numpy(), atol=1e-6)
    flat = color_jitter(images, AugmentParams(**{**params.__dict__, "contrast": np.array([0.8])}))
    assert flat.std() < images.std() and torch.allclose(flat.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-6)
    grey = color_jitter(images, AugmentParams(**{**params.__dict__, "saturation": np.array([0.8])}))
    spread = (images.max(dim=1).values - images.min(dim=1).values).mean()
    assert (grey.max(dim=1).values - grey.min(dim=1).values).mean() < spread
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    shifted = color_jitter(red, AugmentParams(**{**params.__dict__, "hue": np.array([1.0 / 6.0 - 1e-6])}))
    np.testing.assert_allclose(shifted[0, :, 0, 0].numpy(), [1.0, 1.0, 0.0], atol=1e-4)  # red + 60 deg = yellow


def test_unaugmented_pixels_equal_the_inference_preprocessing():
    rng = np.random.default_rng(0)
    recorded = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    settings = ImageSettings(image_size=56)
    for crop in (False, True):
        cached = resize_frame(recorded, 56, center_crop=crop)[None]
        ours = normalize_pixels(to_unit_float(cached), settings)[0]
        reference = preprocess_image(recorded, settings=settings, center_crop=crop)
        assert torch.equal(ours, reference)  # bit-exact: validation sees what the deployed policy sees


def test_training_pixels_shape_and_determinism():
    settings = ImageSettings(image_size=56)
    frames = np.random.default_rng(1).integers(0, 256, (3, 59, 59, 3), dtype=np.uint8)
    a = training_pixels(frames, np.array([5, 6, 7]), seed=0, size=56, settings=settings, augment=True)
    b = training_pixels(frames, np.array([5, 6, 7]), seed=0, size=56, settings=settings, augment=True)
    c = training_pixels(frames, np.array([8, 9, 10]), seed=0, size=56, settings=settings, augment=True)
    assert a.shape == (3, 6, 56, 56) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="cannot give 56 px crops"):
        training_pixels(frames[:, :50], np.array([0, 1, 2]), seed=0, size=56, settings=settings, augment=True)
