"""The finetuning pieces of the full-size path on a tiny model: activation recomputation gives the same step,
LoRA over a bf16 base, the in-place merge, --no-export followed by 'fanvla finetune export', and the memory
pre-flight with its training estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finetune.config import FinetuneError, TrainConfig
from finetune.export import export_run
from finetune.model_setup import make_trainable, training_reserve_bytes
from finetune.trainer import train
from policy import memory, precision
from policy.openvla import OpenVLA
from policy.precision import Precision
from policy.safetensors_io import read_header
from tests.finetune.store_factory import INSTRUCTIONS

FP32 = Precision(torch.float32, torch.float32)


def _config(store, init, out, **changes) -> TrainConfig:
    base = {"data": (str(store),), "init": str(init), "out": str(out), "steps": 4, "batch_size": 4, "full": False,
            "lora_rank": 4, "lr": 5e-3, "val_fraction": 0.0, "val_every": 0, "save_every": 0, "progress": False,
            "tensorboard": False}
    return TrainConfig(**{**base, **changes})


def _batch(model: OpenVLA, seed: int = 0) -> dict:
    from policy.prompt import build_training_example, collate_training_batch

    rng = np.random.default_rng(seed)
    tokens = model.action_tokenizer.vocab_end - 256 + rng.integers(0, 256, size=(2, 7))
    examples = [build_training_example(model.tokenizer, text, row) for text, row in zip(INSTRUCTIONS, tokens,
                                                                                       strict=True)]
    batch = collate_training_batch(examples, model.pad_token_id)
    size = model.image_settings.image_size
    batch["pixel_values"] = torch.from_numpy(rng.normal(size=(2, 6, size, size)).astype(np.float32))
    return batch


def _loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    output = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"])
    loss = output.logits.float().logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("full", [True, False])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_init, full, tmp_path):
    config = _config(tiny_init, tiny_init, tmp_path, full=full)
    plain = make_trainable(OpenVLA.from_pretrained(tiny_init), config).train()
    batch = _batch(OpenVLA.from_pretrained(tiny_init))
    torch.manual_seed(0)
    loss, grads = _loss_and_grads(plain, batch)
    recomputing = make_trainable(OpenVLA.from_pretrained(tiny_init),
                                 config.replace(gradient_checkpointing=True)).train()
    recomputing.load_state_dict(plain.state_dict())
    assert recomputing.get_base_model().language_model.model.gradient_checkpointing if not full else \
        recomputing.language_model.model.gradient_checkpointing
    torch.manual_seed(0)
    loss_again, grads_again = _loss_and_grads(recomputing, batch)
    torch.testing.assert_close(loss_again, loss)
    assert set(grads_again) == set(grads) and len(grads) > 4
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_lora_over_a_bf16_base_trains_float32_adapters(tiny_init, tmp_path):
    bf16_init = OpenVLA.from_pretrained(tiny_init).save_pretrained(tmp_path / "bf16-init", dtype=torch.bfloat16)
    config = _config(tiny_init, bf16_init, tmp_path)
    model = OpenVLA.from_pretrained(bf16_init, dtype=Precision(torch.bfloat16, torch.float32))
    module = make_trainable(model, config).train()
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name and p.dtype == torch.float32 for name, p in trainable.items())
    frozen = [p for p in module.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    _, grads = _loss_and_grads(module, _batch(model))
    # Every adapter of the layers OpenVLA runs gets a gradient (the towers' last block and heads are not run).
    used = {name for name in trainable if ".language_model." in name or ".projector." in name}
    assert used and used <= set(grads) <= set(trainable)
    assert all(grads[name].abs().sum() > 0 for name in used if "lora_B" in name)


def test_the_merge_writes_into_the_base_weights_in_place(tiny_init, tmp_path):
    model = OpenVLA.from_pretrained(tiny_init)
    module = make_trainable(model, _config(tiny_init, tiny_init, tmp_path))
    wrapped = {name.replace(".base_layer", ""): p for name, p in module.get_base_model().named_parameters()
               if ".base_layer." in name}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_()
    pointers = {name: p.data_ptr() for name, p in wrapped.items()}
    merged = module.merge_and_unload()
    state = dict(merged.named_parameters())
    assert len(pointers) > 10
    for name, pointer in pointers.items():
        assert state[name].data_ptr() == pointer, name  # no second copy of any weight was made


def test_no_export_then_export_equals_the_run_that_exported(demo_store, tiny_init, tmp_path):
    exported = train(_config(demo_store, tiny_init, tmp_path / "a"))
    deferred = train(_config(demo_store, tiny_init, tmp_path / "b", export=False))
    assert deferred.model_dir is None and not (tmp_path / "b" / "final").exists()
    assert (tmp_path / "b" / "export_record.json").is_file()
    final, merged = export_run(tmp_path / "b", device="cpu")
    assert isinstance(merged, OpenVLA)
    assert final == tmp_path / "b" / "final"
    one, two = (load_file(str(path / "model.safetensors")) for path in (exported.model_dir, final))
    for name in one:
        assert torch.equal(one[name], two[name]), name
    document = json.loads((final / "fanvla.json").read_text())
    assert document["exported_from_step"] == 4 and document["metrics"]["train"]["loss"] > 0
    with pytest.raises(FinetuneError, match="already exists"):
        export_run(tmp_path / "b", device="cpu")
    with pytest.raises(FinetuneError, match="no checkpoint at step 2; it has steps \\[4\\]"):
        export_run(tmp_path / "b", step=2, device="cpu")
    with pytest.raises(FinetuneError, match="not a finetuning run"):
        export_run(tmp_path, device="cpu")


def test_a_bf16_run_exports_bf16_shards_and_full_finetuning_keeps_float32_masters(demo_store, tiny_init, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    bf16_init = OpenVLA.from_pretrained(tiny_init).save_pretrained(tmp_path / "bf16-init", dtype=torch.bfloat16)
    lora = train(_config(demo_store, bf16_init, tmp_path / "lora"))
    full = train(_config(demo_store, bf16_init, tmp_path / "full", full=True))
    for result in (lora, full):
        entries = read_header(result.model_dir / "model.safetensors").entries.values()
        assert {entry.dtype for entry in entries} == {torch.bfloat16}
        assert np.isfinite(result.train_metrics["loss"])
    trained = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000004" / "trainable.safetensors"))
    assert {tensor.dtype for tensor in trained.values()} == {torch.float32}  # float32 master weights
    with pytest.raises(FinetuneError, match="no bf16 arithmetic"):
        train(_config(demo_store, bf16_init, tmp_path / "refused", dtype="bf16"))


def test_memory_preflight_counts_what_training_needs(demo_store, tiny_init, tmp_path, monkeypatch):
    config = _config(demo_store, tiny_init, tmp_path / "run")
    model_config = OpenVLA.from_pretrained(tiny_init).config
    with torch.device("meta"):
        skeleton = OpenVLA(model_config)
    lean = training_reserve_bytes(config.replace(gradient_checkpointing=True), skeleton)
    assert lean < training_reserve_bytes(config, skeleton) < training_reserve_bytes(config.replace(full=True),
                                                                                     skeleton)
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2_000_000, "host memory (test)"))
    with pytest.raises(FinetuneError, match=r"needs about .* for the rest of the run.* are free on host memory"):
        train(config)


def test_export_command_line(demo_store, tiny_init, tmp_path, capsys):
    from fanvla.cli import main

    train(_config(demo_store, tiny_init, tmp_path / "run", export=False, save_every=2))
    assert main(["finetune", "export", str(tmp_path / "run"), "--step", "2", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["model_dir"] == str(tmp_path / "run" / "export-step-00000002")
    assert main(["finetune", "export", str(tmp_path / "run"), "--step", "3"]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err
