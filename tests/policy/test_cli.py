from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fanvla.cli import main
from policy.openvla import OpenVLA


def test_init_tiny_info_predict(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["policy", "init-tiny", "--out", str(out), "--preset", "test", "--set", "llm_layers=1"]) == 0
    assert OpenVLA.from_pretrained(out).language_model.config.num_hidden_layers == 1
    capsys.readouterr()

    assert main(["policy", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == OpenVLA.from_pretrained(out).num_parameters()
    assert info["tiny_preset"] == "test" and list(info["norm_stats"]) == ["untrained"]
    assert info["vision"]["featurizer"]["num_patches"] == 16

    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    assert main(["policy", "predict", str(out), "--image", str(image), "--instruction", "Lift the cup", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = OpenVLA.from_pretrained(out).predict_action([np.asarray(Image.open(image))], ["lift the cup"])
    np.testing.assert_allclose(result["action"], expected.actions[0])
    assert len(result["spread"]) == 7 and all(s >= 0 for s in result["spread"])

    assert main(["policy", "predict", str(out), "--image", str(image), "--instruction", "lift"]) == 0
    text = capsys.readouterr().out
    assert "spread" in text and len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == 7


def test_info_of_the_reference_fixture(openvla_fixtures, capsys):
    assert main(["policy", "info", str(openvla_fixtures / "tiny")]) == 0
    text = capsys.readouterr().out
    assert "4,451,276" in text and "features of block 1" in text and "'fixture'" in text


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["policy", "info", str(tmp_path)]) == 2
    assert "config.json does not exist" in capsys.readouterr().err
    assert main(["policy", "init-tiny", "--out", str(tmp_path / "m"), "--set", "image_size"]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
    assert main(["policy", "predict", str(tmp_path), "--image", str(tmp_path / "none.png"), "--instruction", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_and_predict_of_an_oft_model(tmp_path, capsys):
    from policy.tiny import build_tiny
    from tests.policy.server_testing import GENTLE_STATS
    from tests.policy.test_oft_serving import PROPRIO_STATS, STATE

    out = build_tiny(tmp_path / "oft", preset="test-oft", seed=1,
                     norm_stats={"jaka_sim": {"action": GENTLE_STATS, "proprio": PROPRIO_STATS}})
    assert main(["policy", "info", str(out)]) == 0
    assert "chunks of 8 actions decoded in parallel, 1 image(s), proprio on (13-D)" in capsys.readouterr().out
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    state = ",".join(f"{v:g}" for v in STATE)
    args = ["policy", "predict", str(out), "--image", str(image), "--instruction", "lift", "--state", state]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = OpenVLA.from_pretrained(out).predict_action([np.asarray(Image.open(image))], ["lift"], states=[STATE])
    np.testing.assert_allclose(result["action"], expected.actions[0])  # the (8, 7) chunk
    assert main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 8 * 7
    assert main(args[:-2]) == 2 and "pass --state with 13" in capsys.readouterr().err
    assert main([*args, "--wrist-image", str(image)]) == 2 and "reads one camera" in capsys.readouterr().err
