"""Saving for the full-size path: upstream's shard layout, dtype, the files upstream's own code needs, byte-for-byte
tokenizer files, shards kept inside the model folder, and the memory pre-flight."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from policy import memory
from policy.checkpoint import INDEX_FILE, CheckpointError
from policy.interop import MODEL_AUTO_MAP, PROCESSOR_AUTO_MAP, PROCESSOR_CLASS, TOKENIZER_AUTO_MAP
from policy.openvla import OpenVLA
from policy.processing import ImageSettings
from policy.safetensors_io import read_header
from tests.policy.conftest import random_images


def test_shards_follow_upstream_naming_and_size_limit(tiny_model, tmp_path):
    limit = 300_000
    out = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_bytes=limit)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    count = len(shards)
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    sizes = {}
    for shard in shards:
        entries = read_header(out / shard).entries.values()
        sizes[shard] = sum(entry.nbytes for entry in entries)
        assert sizes[shard] <= limit or len(entries) == 1  # only a single tensor larger than the limit may exceed it
        assert read_header(out / shard).metadata == {"format": "pt"}  # upstream's loader requires it
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert set(index["weight_map"]) == set(tiny_model.state_dict())


def test_the_default_is_one_file_under_five_gigabytes(tiny_model, tmp_path):
    out = tiny_model.save_pretrained(tmp_path / "single")
    assert (out / "model.safetensors").is_file() and not (out / INDEX_FILE).exists()


def test_saving_in_bf16_casts_tensor_by_tensor_and_records_the_dtype(tiny_model, tmp_path):
    out = tiny_model.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    entries = read_header(out / "model.safetensors").entries
    assert {entry.dtype for entry in entries.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = OpenVLA.from_pretrained(out, dtype=torch.float32)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor.to(torch.bfloat16).float()), name


def test_an_export_carries_upstreams_auto_map_and_processor_entries(tiny_model_dir, tmp_path):
    model = OpenVLA.from_pretrained(tiny_model_dir)
    out = model.save_pretrained(tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == MODEL_AUTO_MAP
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == PROCESSOR_AUTO_MAP and preprocessor["processor_class"] == PROCESSOR_CLASS
    # Everything PrismaticImageProcessor reads (upstream processing_prismatic.py), two views for the fused towers.
    for key in ("use_fused_vision_backbone", "image_resize_strategy", "input_sizes", "interpolations", "means",
                "stds", "tvf_resize_params", "tvf_crop_params", "tvf_normalize_params", "tvf_do_letterbox"):
        assert key in preprocessor, key
    assert len(preprocessor["input_sizes"]) == 2 and preprocessor["use_fused_vision_backbone"] is True
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor == {"auto_map": TOKENIZER_AUTO_MAP, "processor_class": PROCESSOR_CLASS}
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"] == TOKENIZER_AUTO_MAP
    assert tokenizer_config["processor_class"] == PROCESSOR_CLASS
    # Fields OpenVLAConfig / OpenVLAForActionPrediction read, as they were.
    for key in ("vision_backbone_id", "llm_backbone_id", "arch_specifier", "use_fused_vision_backbone",
                "image_resize_strategy", "text_config", "llm_max_length", "pad_token_id", "pad_to_multiple_of",
                "n_action_bins", "norm_stats", "timm_model_ids", "image_sizes"):
        assert key in config, key
    OpenVLA.from_pretrained(out)  # and we still read it


def test_a_hub_prefixed_auto_map_is_replaced_by_the_local_one(tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "openvla/openvla-7b--configuration_prismatic.OpenVLAConfig"}
    (base / "config.json").write_text(json.dumps(config))
    out = OpenVLA.from_pretrained(base).save_pretrained(tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["auto_map"] == MODEL_AUTO_MAP


def test_tokenizer_files_and_remote_code_are_copied_byte_for_byte(tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    # Older serialisation (merges as "a b" strings, what tokenizers 0.19 reads) must survive unchanged.
    document = json.loads((base / "tokenizer.json").read_text())
    document["model"]["merges"] = [" ".join(pair) if isinstance(pair, list) else pair
                                   for pair in document["model"]["merges"]]
    (base / "tokenizer.json").write_text(json.dumps(document, indent=1))
    (base / "special_tokens_map.json").write_text('{"pad_token": "<PAD>"}\n')
    for name in ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py"):
        (base / name).write_text(f"# upstream's {name}, never imported by fanvla\nraise SystemExit(1)\n")
    out = OpenVLA.from_pretrained(base).save_pretrained(tmp_path / "export")
    for name in ("tokenizer.json", "special_tokens_map.json", "configuration_prismatic.py", "modeling_prismatic.py",
                 "processing_prismatic.py"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    original = json.loads((base / "tokenizer_config.json").read_text())
    assert {k: v for k, v in tokenizer_config.items() if k not in ("auto_map", "processor_class")} == \
        {k: v for k, v in original.items() if k not in ("auto_map", "processor_class")}
    again = OpenVLA.from_pretrained(out).save_pretrained(tmp_path / "again")  # already marked: left byte for byte
    assert (again / "tokenizer_config.json").read_bytes() == (out / "tokenizer_config.json").read_bytes()


@pytest.mark.parametrize("shard_name", ["../outside.safetensors", "/tmp/outside.safetensors", "link.safetensors"])
def test_shards_outside_the_model_folder_are_refused(tiny_model, tmp_path, shard_name):
    out = tiny_model.save_pretrained(tmp_path / "model", max_shard_bytes=300_000)
    index = json.loads((out / INDEX_FILE).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(out / first, outside)
    if shard_name == "link.safetensors":
        os.symlink(outside, out / shard_name)
    index["weight_map"] = {name: (shard_name if file == first else file) for name, file in index["weight_map"].items()}
    (out / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        OpenVLA.from_pretrained(out)


def test_memory_preflight_says_what_is_needed_and_free(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: (1_000_000, "host memory (test)"))
    with pytest.raises(CheckpointError, match=r"needs about .* GiB .* float32.* only 0\.0 GiB are free on host"):
        OpenVLA.from_pretrained(tiny_model_dir)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    assert OpenVLA.from_pretrained(tiny_model_dir) is not None  # the escape hatch only warns


def test_weights_bytes_count_the_target_dtype(tiny_model_dir):
    from policy.checkpoint import checkpoint_entries, weight_map

    entries = checkpoint_entries(weight_map(tiny_model_dir)).values()
    assert memory.weights_bytes(entries, torch.bfloat16) * 2 == memory.weights_bytes(entries, torch.float32)


def test_stored_normalize_params_win_over_means_as_upstream(tiny_model_dir):
    document = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    document["tvf_normalize_params"][0]["mean"] = [0.484375, 0.455078125, 0.40625]  # openvla-7b's bf16 values
    settings = ImageSettings.from_preprocessor_config(document)
    assert settings.means[0] == (0.484375, 0.455078125, 0.40625)
    assert settings.means[1] == (0.5, 0.5, 0.5)
    del document["tvf_normalize_params"]
    assert ImageSettings.from_preprocessor_config(document).means[0] == (0.485, 0.456, 0.406)


def test_cached_and_recomputed_decoding_agree(tiny_model):
    images = random_images(3, seed=9)
    instructions = ["pick up the red block", "lift the cup", "put the green block on the plate"]
    cached = tiny_model.predict_action(images, instructions)
    recomputed = tiny_model.predict_action(images, instructions, use_cache=False)
    np.testing.assert_array_equal(cached.token_ids, recomputed.token_ids)
    np.testing.assert_allclose(cached.bin_probs, recomputed.bin_probs, atol=1e-5)


def test_allocator_retention_is_bounded_in_a_child_process():
    """glibc only: mallopt accepts the threshold (run in a child, the setting is process-wide)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = "from policy.memory import bound_allocator_retention; print(bound_allocator_retention())"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
