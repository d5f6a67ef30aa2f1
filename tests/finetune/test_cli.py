"""``fanvla finetune`` and ``fanvla finetune plot`` through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fanvla.cli import build_parser, main


def test_finetune_then_plot(demo_store, tiny_init, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_store), "--init", str(tiny_init), "--out", str(run), "--full",
                 "--method", "label-smoothing", "--epsilon", "0.1", "--steps", "4", "--batch-size", "4",
                 "--val-every", "2", "--val-fraction", "0.34", "--no-progress", "--unnorm-key", "twin_demos"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_dir"] == str(run / "final") and summary["steps"] == 4
    document = json.loads((run / "final" / "fanvla.json").read_text())
    assert document["method"] == "label-smoothing" and document["epsilon"] == 0.1 and document["alpha"] is None
    assert document["unnorm_key"] == "twin_demos"
    assert json.loads((run / "final" / "dataset_statistics.json").read_text()).keys() == {"twin_demos"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/accuracy", "val/l1_dx_mm", "val/entropy_nats_gripper"} <= set(tags)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]

    png = tmp_path / "curves.png"
    assert main(["finetune", "plot", str(run), str(run), "--out", str(png)]) == 0
    image = np.asarray(Image.open(png).convert("L"))
    assert image.shape[0] > 500 and image.shape[1] > 500 and image.std() > 10  # drawn, not blank


def test_bad_invocations_exit_with_a_message(demo_store, tiny_init, tmp_path, capsys):
    assert main(["finetune", "--data", str(demo_store), "--init", str(tiny_init), "--out", str(tmp_path / "r"),
                 "--method", "dpo"]) == 2
    assert "--method 'dpo' is unknown; choose one of sft, fan-sft, label-smoothing" in capsys.readouterr().err
    assert main(["finetune", "--init", str(tiny_init)]) == 2
    assert "fanvla finetune needs --data, --out" in capsys.readouterr().err
    assert main(["finetune", "plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no metrics/train.csv" in capsys.readouterr().err


def test_finetune_is_registered_with_its_plot_action():
    parser = build_parser()
    args = parser.parse_args(["finetune", "plot", "a", "b", "--out", "c.png"])
    assert args.runs == ["a", "b"] and args.plot_out == "c.png"
    args = parser.parse_args(["finetune", "--data", "s1", "s2", "--init", "m", "--out", "o", "--lora-rank", "8"])
    assert args.data == ["s1", "s2"] and args.lora_rank == 8 and args.finetune_action is None


def test_registering_the_command_does_not_import_torch():
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("import sys, argparse; import finetune.cli as c; p = argparse.ArgumentParser(); "
            "c.register(p.add_subparsers()); print(sorted(m for m in ('torch', 'transformers', 'peft') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
