"""Multi-process training: ``torchrun --nproc-per-node 2`` on CPU (gloo) equals one process with the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finetune.checkpointing import list_checkpoints
from finetune.config import TrainConfig
from finetune.metrics import read_metrics
from finetune.trainer import train
from tests.conftest import REPO_ROOT

COMMON = {"steps": 4, "val_every": 2, "save_every": 2, "lr": 2e-3, "val_fraction": 0.34}


@pytest.mark.slow  # two fresh processes import torch + transformers: ~35 s on the 2-core machine
def test_two_processes_match_one_process_with_the_same_global_batch(demo_store, tiny_init, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fanvla",
               "finetune", "--data", str(demo_store), "--init", str(tiny_init), "--out", str(out), "--full",
               "--batch-size", "2", "--steps", "4", "--val-every", "2", "--save-every", "2", "--lr", "2e-3",
               "--val-fraction", "0.34", "--no-tensorboard", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads(finished.stdout[finished.stdout.index("{"):])  # printed once, by rank 0
    assert summary["steps"] == 4 and np.isfinite(summary["train"]["loss"])
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert (out / "checkpoints" / "step-00000004" / "rng-rank1.pt").is_file()  # every rank's RNG state saved
    document = json.loads((out / "final" / "fanvla.json").read_text())
    assert document["world_size"] == 2 and document["ranks_in_sync"] is True

    single = train(TrainConfig(data=(str(demo_store),), init=str(tiny_init), out=str(tmp_path / "one"), full=True,
                               batch_size=4, progress=False, tensorboard=False, **COMMON))
    np.testing.assert_allclose(read_metrics(out / "metrics" / "train.csv")["loss"],
                               read_metrics(tmp_path / "one" / "metrics" / "train.csv")["loss"], rtol=1e-5)
    two = load_file(str(out / "final" / "model.safetensors"))
    one = load_file(str(single.model_dir / "model.safetensors"))
    assert set(two) == set(one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-4, rtol=1e-4, msg=name)
    initial = load_file(str(tiny_init / "model.safetensors"))
    assert not torch.equal(two["projector.fc1.weight"], initial["projector.fc1.weight"])  # it did train
