"""Deterministic batches: the sample stream, the split across processes, the token layout, worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.batches import (
    BatchBuilder,
    BatchLayout,
    SampleStream,
    SplitArrays,
    TrainingMicroBatches,
    evaluation_batches,
    evaluation_rows,
    tokenize_actions,
    training_batches,
)
from finetune.data import load_training_data
from finetune.frames import crop_source_size, resize_frame
from policy.prompt import IGNORE_INDEX, build_training_example


def test_stream_visits_every_sample_once_per_epoch_and_is_seeded():
    stream = SampleStream(10, seed=1)
    first, second = stream.rows(np.arange(10)), stream.rows(np.arange(10, 20))
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(SampleStream(10, seed=1).rows(np.arange(15, 25)), stream.rows(np.arange(15, 25)))
    assert not np.array_equal(SampleStream(10, seed=2).rows(np.arange(10)), first)


def test_processes_split_a_micro_batch_like_one_big_batch():
    single = BatchLayout(batch_size=8).positions(3)
    parts = [BatchLayout(batch_size=4, world_size=2, rank=r).positions(3) for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(parts), single)
    assert BatchLayout(batch_size=4).positions(0).tolist() == [0, 1, 2, 3]


def test_evaluation_rows_and_sharding_cover_every_row_once():
    assert evaluation_rows(5, None).tolist() == [0, 1, 2, 3, 4]
    rows = evaluation_rows(100, 10)
    assert len(rows) == 10 and rows[0] == 0 and rows[-1] == 99


@pytest.fixture(scope="module")
def builder(demo_store, tiny_init):
    from policy.openvla import OpenVLA

    model = OpenVLA.from_pretrained(tiny_init)
    data = load_training_data([demo_store], "ee_delta", val_fraction=0.34)
    from collect.store import EpisodeStore

    with EpisodeStore.open(demo_store) as store:
        frames = np.stack([resize_frame(store.array("color")[int(f)], crop_source_size(56)) for f in data.train.frame])
    tokens = tokenize_actions(data.train.actions, data.stats, model.action_tokenizer)
    split = SplitArrays(frames, tokens, data.train.actions, data.train.instruction)
    return BatchBuilder(split, data.instructions, model.tokenizer, model.pad_token_id, model.image_settings, 56), model


def test_batch_tokens_follow_the_training_example_layout(builder):
    batch_builder, model = builder
    rows = np.array([3, 0, 17])
    batch = batch_builder.training_batch(rows, np.array([0, 1, 2]), seed=0, augment=True)
    assert batch["pixel_values"].shape == (3, 6, 56, 56)
    for i, row in enumerate(rows):
        instruction = batch_builder.instructions[batch_builder.split.instruction[row]]
        example = build_training_example(model.tokenizer, instruction, batch_builder.split.action_tokens[row])
        length = len(example.input_ids)
        assert batch["input_ids"][i, :length].tolist() == example.input_ids
        assert batch["labels"][i, :length].tolist() == example.labels
        assert (batch["labels"][i, length:] == IGNORE_INDEX).all()
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert supervised[:7].tolist() == batch_builder.split.action_tokens[row].tolist()
        assert supervised[7] == model.tokenizer.eos_token_id
        np.testing.assert_allclose(batch["actions"][i].numpy(), batch_builder.split.actions[row])


def test_evaluation_batches_are_centre_cut_and_unaugmented(builder):
    batch_builder, _ = builder
    rows = np.arange(7)
    shards = [list(evaluation_batches(batch_builder, rows, 2, world_size=2, rank=r)) for r in (0, 1)]
    assert [len(b["actions"]) for b in shards[0]] == [2, 2] and [len(b["actions"]) for b in shards[1]] == [2, 1]
    again = batch_builder.evaluation_batch(np.array([0, 1]))
    assert torch.equal(shards[0][0]["pixel_values"], again["pixel_values"])


def test_worker_processes_build_the_same_batches(builder):
    batch_builder, _ = builder
    dataset = TrainingMicroBatches(batch_builder, SampleStream(len(batch_builder.split), 5), BatchLayout(4), 5, True)
    here = list(training_batches(dataset, first=2, count=3, workers=0))
    in_workers = list(training_batches(dataset, first=2, count=3, workers=2))
    for a, b in zip(here, in_workers, strict=True):
        for key in ("input_ids", "labels", "attention_mask", "pixel_values", "actions"):
            assert torch.equal(a[key], b[key]), key


def test_prefetch_thread_ends_and_passes_errors_on(builder):
    batch_builder, _ = builder
    dataset = TrainingMicroBatches(batch_builder, SampleStream(len(batch_builder.split), 5), BatchLayout(4), 5, True)
    batches = training_batches(dataset, first=0, count=2, workers=0)
    assert len(list(batches)) == 2 and list(batches) == []
    broken = TrainingMicroBatches(batch_builder, SampleStream(len(batch_builder.split), 5), BatchLayout(4), 5, True)
    broken.builder = None  # building a batch now fails inside the thread
    failing = training_batches(broken, first=0, count=3, workers=0)
    with pytest.raises(AttributeError):
        next(failing)
    failing.close()
