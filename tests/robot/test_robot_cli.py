"""`fanvla robot check` / `snapshot` against the twin, and the real backend's missing-SDK message."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fanvla.cli import main
from tests.conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "hardware.yaml")


def test_check_sim_is_healthy_and_measures_the_camera(capsys):
    assert main(["robot", "check", "--backend", "sim", "--json", "--config", CONFIG]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] and report["problems"] == []
    assert abs(report["camera"]["measured_fps"] - 30) < 3 and report["camera"]["time_base"] == "simulated"
    assert report["arm"]["local_vs_controller_fk_mm"] < 0.01
    assert report["safety"]["watchdog_stop_s"] > report["safety"]["watchdog_hold_s"]


def test_check_real_without_sdk_explains_what_to_set(capsys, monkeypatch):
    monkeypatch.delenv("FANVLA_JKRC_PATH", raising=False)
    assert main(["robot", "check", "--backend", "real", "--config", CONFIG]) == 1
    out = capsys.readouterr().out
    assert "FANVLA_JKRC_PATH" in out and "NOT healthy" in out


def test_snapshot_writes_the_twin_camera_image(tmp_path):
    out = tmp_path / "snap.png"
    assert main(["robot", "snapshot", "--backend", "sim", "--out", str(out), "--config", CONFIG]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (480, 640, 3) and image.std() > 10
