"""The operator console driven by a real headless Chromium (Selenium) through real trials in the twin."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from eval_protocols.calibration import OBJECT_COLOUR, TableCalibration
from eval_protocols.launch import RunOptions, evaluation_config, run_evaluation
from eval_protocols.results import RunStore
from eval_protocols.task_spec import resolve_tasks
from robot.scene import SceneSampler

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900")
WAIT_S = 120


@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not shutil.which("chromium"):
        pytest.skip("Debian chromium/chromium-driver are not installed (scripts/bootstrap.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class EvaluationThread(threading.Thread):
    def __init__(self, config, options: RunOptions) -> None:
        super().__init__(name="evaluation", daemon=True)
        self.config, self.options = config, options
        self.url: str | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.progress = None

    def run(self) -> None:
        def on_console(url: str) -> None:
            self.url = url
            self.ready.set()

        try:
            self.progress = run_evaluation(self.config, self.options, on_console=on_console)
        except BaseException as error:
            self.error = error
            self.ready.set()


def _wait_phase(driver, phase: str, timeout_s: float = WAIT_S) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
        lambda d: d.find_element("id", "phase").text == phase, f"phase never became {phase!r}")


def _marker_pixels_near(jpeg: bytes, centre_px: np.ndarray, radius_px: float = 25.0) -> int:
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    rows, cols = np.indices(image.shape[:2])
    near = np.hypot(cols - centre_px[0], rows - centre_px[1]) < radius_px
    target = np.array(OBJECT_COLOUR)
    close = np.abs(image - target).max(axis=2) < 60
    return int((close & near).sum())


def _login(url: str) -> tuple[requests.Session, str]:
    """A client that opened the console's URL (it carries the run's token; the console answers with a cookie)."""
    operator = requests.Session()
    assert operator.get(url, timeout=30).status_code == 200
    return operator, url.split("?", 1)[0]


def test_operator_runs_and_scores_trials_in_the_browser(browser, tmp_path, hardware_config):
    tasks = resolve_tasks("task1", hardware_config.scene)
    options = RunOptions("sim", "scripted-expert", tasks, 2, 0, tmp_path / "run", console=True, console_port=0)
    evaluation = EvaluationThread(hardware_config, options)
    evaluation.start()
    assert evaluation.ready.wait(WAIT_S) and evaluation.error is None, evaluation.error
    find = lambda element_id: browser.find_element("id", element_id)  # noqa: E731
    browser.get(evaluation.url)
    sampler = SceneSampler(evaluation_config(hardware_config, "sim", {}))
    first, second = (tasks[0].trial(sampler, 0, i) for i in range(2))

    # trial 0: the page shows where to place things, with the marker on the live image
    _wait_phase(browser, "setup")
    assert find("task").text == "task1" and find("trial").text.startswith("1 of 2")
    assert find("operator-text").text == first.scene.operator_text()
    assert find("instruction").text == "put the red cube into the box"
    assert find("start").is_enabled() and not find("stop").is_enabled() and not find("success").is_enabled()
    assert browser.execute_script("return document.getElementById('live').naturalWidth") == 640
    operator, base = _login(evaluation.url)
    frame = operator.get(base + "frame.jpg", timeout=30)
    assert frame.headers["Content-Type"] == "image/jpeg" and frame.headers["Cache-Control"] == "no-store"
    state = operator.get(base + "api/state", timeout=30).json()
    assert state["calibrated"] and state["scene"] == first.scene.to_dict()

    find("start").click()
    _wait_phase(browser, "scoring")
    assert "completed" in find("episode").text
    find("note").send_keys("clean drop into the box")
    find("success").click()

    # trial 1: start, then stop it early and score it as a failure
    _wait_phase(browser, "setup")
    assert find("trial").text.startswith("2 of 2")
    assert find("operator-text").text == second.scene.operator_text()
    find("start").click()
    _wait_phase(browser, "running")
    find("stop").click()
    _wait_phase(browser, "scoring")
    assert "aborted" in find("episode").text and "stopped by the operator" in find("episode").text
    find("note").send_keys("stopped early")
    find("failure").click()
    evaluation.join(WAIT_S)
    assert evaluation.error is None, evaluation.error
    assert evaluation.progress == {"task1": {"trials": 2, "scored": 2, "successes": 1}}

    records = RunStore.read(options.run_dir).records()
    assert [(r["trial"], r["success"], r["scored_by"], r["note"]) for r in records] == [
        (0, True, "operator", "clean drop into the box"), (1, False, "operator", "stopped early")]
    assert records[0]["details"]["twin"]["success"] is True  # the twin agrees with the operator
    assert records[1]["episode"]["status"] == "aborted" and "stopped by the operator" in records[1]["episode"]["reason"]
    assert all((options.run_dir / r["video"]).is_file() for r in records)


def test_placement_marker_is_on_the_live_frame(tmp_path, hardware_config):
    """The console's frame shows the object marker where the calibration projects the trial's object."""
    from eval_protocols.console_app import ConsoleServer, create_console_app
    from eval_protocols.console_session import ConsoleSession
    from robot.factory import open_robot

    config = evaluation_config(hardware_config, "sim", {})
    (task,) = resolve_tasks("task2", hardware_config.scene)
    trial = task.trial(SceneSampler(config), 0, 3)
    with open_robot(config, "sim") as robot:
        robot.twin.reset_scene(trial.scene)
        robot.clock.sleep(0.3)
        calibration = TableCalibration.from_twin(robot.twin)
        session = ConsoleSession()
        session.show_trial(task.name, task.title, 3, 30, trial.instruction, trial.scene.operator_text(),
                           trial.scene.to_dict(), {})
        app = create_console_app(session, lambda: robot.camera.latest().color, calibration)
        with ConsoleServer(app) as server:
            operator, base = _login(server.url)
            jpeg = operator.get(base + "frame.jpg", timeout=30).content
    centre = calibration.project([[*trial.scene.object_xy_mm, 0.0]])[0]
    elsewhere = calibration.project([[*trial.scene.box_xy_mm, 0.0]])[0]
    assert _marker_pixels_near(jpeg, centre) > 30
    assert _marker_pixels_near(jpeg, elsewhere) < 5


def test_the_ab_page_shows_policy_1_and_2_and_nothing_that_names_a_policy(browser, tmp_path, hardware_config,
                                                                          task_file):
    from eval_protocols.ab import ABOptions, run_ab

    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=2)), hardware_config.scene)
    common = RunOptions("sim", "", tasks, 1, 0, tmp_path / "ab", console=True, console_port=0)
    options = ABOptions("scripted-expert", "random", 1, common)
    urls, errors = [], []

    def run() -> None:
        try:
            run_ab(hardware_config, options, on_console=urls.append)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    find = lambda element_id: browser.find_element("id", element_id)  # noqa: E731
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(lambda _: urls or errors, "no console URL")
    assert not errors, errors
    browser.get(urls[0])
    for slot in (1, 2):
        _wait_phase(browser, "setup")
        assert find("policy-label").text == f"· policy {slot}" and find("trial").text.startswith("1 of 1")
        page = browser.find_element("tag name", "body").text
        assert "scripted" not in page and "random" not in page and "expert" not in page
        find("start").click()
        _wait_phase(browser, "scoring")
        find("failure").click()
    thread.join(WAIT_S)
    assert not errors, errors
    assert [len(RunStore.read(tmp_path / "ab" / arm).records()) for arm in ("a", "b")] == [1, 1]
