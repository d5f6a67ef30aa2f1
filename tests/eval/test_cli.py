"""``fanvla eval tasks|run|calibrate`` from the command line: output and one clear message for bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from eval_protocols.calibration import TableCalibration
from eval_protocols.cli import parse_overrides
from fanvla.cli import main


def test_tasks_lists_and_previews_trials(capsys):
    assert main(["eval", "tasks", "--trials", "2", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "task3: Perturbed manipulator pose (task3.yaml" in out
    assert out.count("  trial 01: Place green_cylinder with its centre at x =") == 4
    assert main(["eval", "tasks", "--tasks", "task2", "--trials", "3", "--json"]) == 0
    (task,) = json.loads(capsys.readouterr().out)
    assert task["name"] == "task2" and [t["trial"] for t in task["trials_preview"]] == [0, 1, 2]
    assert task["perturbation"]["object_dx_mm"] == [-60.0, 60.0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", "task7"], "unknown task 'task7'"),
    (["--policy", "scripted-expert", "--backend", "real"], "runs only with --backend sim"),
    (["--set", "camera.color.fps"], "expected KEY=VALUE"),
    (["--set", "camera.colour.fps=10"], "no such key 'colour'"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--execution", "chunk"], "--policy random answers with single actions"),
    (["--policy-latency-ms", "fast"], "expected milliseconds as N (fixed) or N+-M"),
    (["--policy-latency-ms", "100+-150"], "may not exceed the mean"),
    (["--max-action-age-ms", "0"], "--max-action-age-ms must be > 0"),
    (["--policy", "scripted-expert", "--execution", "chunk", "--chunk-steps", "0"], "--chunk-steps must be >= 1"),
    (["--open-loop-steps", "8"], "--open-loop-steps 8: needs --execution chunk"),
    (["--policy", "scripted-expert", "--execution", "chunk", "--open-loop-steps", "0"], "N >= 1"),
    (["--ensemble-decay", "0.01"], "--ensemble-decay 0.01: needs --execution chunk"),
    (["--policy", "scripted-expert", "--execution", "chunk", "--ensemble-decay", "0.1", "--open-loop-steps", "8"],
     "no --open-loop-steps"),
])
def test_run_refuses_bad_input_with_one_message(tmp_path, capsys, argv, message):
    base = {"--backend": "sim", "--policy": "random", "--tasks": "task1", "--trials": "1", "--out": str(tmp_path / "r")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    args = ["eval", "run", *[item for pair in base.items() for item in pair]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fanvla: error:") and message in err and "Traceback" not in err


def test_overrides_parse_yaml_values():
    assert parse_overrides(["camera.color.fps=30", "camera.depth.enabled=false", "sim.realtime=no"]) == {
        "camera.color.fps": 30, "camera.depth.enabled": False, "sim.realtime": False}


def test_calibrate_in_the_twin_writes_an_exact_calibration_and_a_preview(tmp_path, capsys):
    out, preview = tmp_path / "table_calibration.json", tmp_path / "preview.png"
    assert main(["eval", "calibrate", "--backend", "sim", "--out", str(out), "--preview", str(preview)]) == 0
    assert "twin-exact, reprojection error 0.00 px RMS" in capsys.readouterr().out
    assert TableCalibration.load(out).method == "twin-exact"
    with Image.open(preview) as image:
        assert image.size == (640, 480)


def test_calibrate_from_points_file(tmp_path, capsys, hardware_config):
    from robot.sim.twin import Twin

    with Twin(hardware_config) as twin:
        exact = TableCalibration.from_twin(twin)
    points = [(180, -220), (400, -220), (400, 220), (180, 220), (300, 0)]
    pixels = exact.project([[x, y, 0.0] for x, y in points])
    lines = ["points:"] + [f"  - {{x_mm: {x}, y_mm: {y}, u_px: {u:.2f}, v_px: {v:.2f}}}"
                           for (x, y), (u, v) in zip(points, pixels, strict=True)]
    (tmp_path / "points.yaml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cal.json"
    assert main(["eval", "calibrate", "--backend", "sim", "--points", str(tmp_path / "points.yaml"),
                 "--out", str(out)]) == 0
    assert "table-points-pnp" in capsys.readouterr().out
    assert abs(TableCalibration.load(out).project([[300, -120, 0]]) - exact.project([[300, -120, 0]])).max() < 1.0
