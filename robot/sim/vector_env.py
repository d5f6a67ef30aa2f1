"""Vectorised twin for reinforcement learning: N scenes stepped in lock-step, spread over worker processes.

Each scene is a sim-backend robot bundle (``robot.factory.open_robot(..., with_camera=False)``): the MuJoCo twin,
the fake ``jkrc`` controller, ``JakaArm``'s 125 Hz servo streaming, the gripper driver and the safety layer, i.e.
the control path of an evaluation trial. Only the software RealSense is left out: the image a policy reads is
rendered straight from the twin at the size the policy needs (``input_render_size``), by one renderer per process
serving all of that process's scenes (rendering at the camera's full size is the twin's main cost).

One tick of a scene is one control period, run as ``robot.runtime.ControlLoop`` runs it in sync mode:

    command -> safety.filter -> arm.servo_joints + gripper.command (a rejected command holds the arm; the watchdog
    holds after ``watchdog_hold_s`` and ends the episode after ``watchdog_stop_s`` without a fresh command)
    -> simulated time advances one period
    -> the episode ends at success (``Twin.task_success``), at the step limit, at a watchdog stop or a hardware error
    -> an ended episode is scored as the evaluation's ``TwinJudge`` scores a trial: the arm holds and leaves servo
       mode, the scene settles for ``settle_s``, and ``Twin.task_success()`` is the verdict; the reward is 1 for a
       success and 0 otherwise (sparse), and the scene starts its next episode at once (auto-reset)
    -> the next observation: the image rendered now and the measured arm state.

Scenes come from a ``SceneSource``: episode ``k`` of scene ``i`` is ``source.scene(i, k)``, so the sequence of
situations is the same whatever the number of worker processes and however fast each scene finishes. Scene
placement follows the evaluation's ``place_in_twin``: reset the twin to the spec, open the gripper, wait
``reset_wait_s``.

Reward shaping (off by default): ``shaping_weight`` > 0 adds the potential-based term w * (phi(s') - phi(s)) with
phi = 1 while both fingers hold the object (0 at the end of an episode), which leaves the optimal policy unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from robot.errors import RobotError
from robot.interfaces import ArmState
from robot.safety import Command, Watchdog, WatchdogStatus
from robot.scene import SceneSpec

log = logging.getLogger(__name__)

# As eval_protocols.judges (SETTLE_S, FRESH_FRAME_S): an RL episode is set up and scored like an evaluation trial
# (tests/robot/test_vector_env.py checks that the two agree).
DEFAULT_SETTLE_S = 1.0
DEFAULT_RESET_WAIT_S = 0.25
END_REASONS = ("success", "step_limit", "watchdog", "hardware_error")


@dataclass(frozen=True)
class EnvScene:
    """One episode's situation: where things start, what the robot is told, and how many ticks it gets."""

    spec: SceneSpec
    instruction: str
    max_steps: int
    label: str = ""  # e.g. the task name, reported with the episode's end

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"an episode needs max_steps >= 1, got {self.max_steps}")


class SceneSource(Protocol):
    def scene(self, env_index: int, episode: int) -> EnvScene:
        """Episode ``episode`` (0, 1, ...) of scene ``env_index``: deterministic in both arguments."""


@dataclass(frozen=True)
class VectorEnvSettings:
    image_width: int
    image_height: int
    period_s: float  # one tick: the recording / control period
    settle_s: float = DEFAULT_SETTLE_S
    reset_wait_s: float = DEFAULT_RESET_WAIT_S
    shaping_weight: float = 0.0  # potential-based grasp shaping (module docstring); 0 = sparse success only

    def __post_init__(self) -> None:
        if self.image_width < 1 or self.image_height < 1:
            raise ValueError(f"image size must be positive, got {self.image_width}x{self.image_height}")
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")
        if self.settle_s < 0 or self.reset_wait_s < 0 or self.shaping_weight < 0:
            raise ValueError("settle_s, reset_wait_s and shaping_weight must be >= 0")


@dataclass(frozen=True)
class EpisodeEnd:
    """How one episode ended: ``reason`` is one of ``END_REASONS``; ``success`` is the judge's verdict."""

    env_index: int
    episode: int
    label: str
    steps: int
    reason: str
    success: bool
    detail: str = ""


@dataclass
class VectorObservation:
    images: np.ndarray  # (N, H, W, 3) uint8
    arms: list[ArmState]
    instructions: list[str]


@dataclass
class VectorStep:
    """The result of one tick of every scene. Where ``done[i]``, ``observation`` already shows scene i's next
    episode and ``ends`` holds the finished one."""

    observation: VectorObservation
    rewards: np.ndarray  # (N,) float32
    done: np.ndarray  # (N,) bool
    ends: list[EpisodeEnd] = field(default_factory=list)


def input_render_size(camera_width: int, camera_height: int, input_px: int) -> tuple[int, int]:
    """(width, height) with the camera's aspect ratio whose shorter side is ``input_px``: the smallest render that the
    policy's square resize (resize-naive) shrinks on one axis only and never enlarges."""
    if min(camera_width, camera_height, input_px) < 1:
        raise ValueError(f"sizes must be positive, got camera {camera_width}x{camera_height}, input {input_px}")
    if camera_width >= camera_height:
        return max(input_px, round(input_px * camera_width / camera_height)), input_px
    return input_px, max(input_px, round(input_px * camera_height / camera_width))


# ------------------------------------------------------------------------------------------------------------
# One scene
# ------------------------------------------------------------------------------------------------------------


class _Scene:
    """A robot bundle running one episode after another."""

    def __init__(self, config, settings: VectorEnvSettings, index: int) -> None:
        from robot.factory import open_robot

        self.robot = open_robot(config, "sim", seed=index, realtime=False, with_camera=False)
        self.settings, self.index = settings, index
        self.current: EnvScene | None = None
        self.steps = 0
        self.tick_s = 0.0
        self.state: ArmState | None = None
        self.potential = 0.0
        safety = config.safety
        self.watchdog = Watchdog(safety.watchdog_hold_s, safety.watchdog_stop_s, self.robot.clock)

    def start(self, scene: EnvScene) -> None:
        """Place the next episode's scene (as eval_protocols.judges.place_in_twin) and enter servo mode."""
        robot = self.robot
        robot.twin.reset_scene(scene.spec)
        robot.gripper.open()
        robot.clock.sleep(self.settings.reset_wait_s)
        robot.arm.start_servo()
        self.current, self.steps = scene, 0
        self.watchdog.reset()
        self.tick_s = robot.clock.now_s()
        self.state = robot.arm.state()
        self.potential = self._potential()

    def tick(self, command: Command | None) -> tuple[float, EpisodeEnd | None]:
        """Apply ``command`` for one period; (reward, how the episode ended or None)."""
        robot, period = self.robot, self.settings.period_s
        try:
            status = self._apply(command)
            self.steps += 1
            if status is WatchdogStatus.STOP:
                return self._end("watchdog", "no fresh command within safety.watchdog_stop_s")
            self.tick_s += period
            robot.clock.sleep_until(self.tick_s)
            if robot.twin.task_success().success:
                return self._end("success")
            if self.steps >= self.current.max_steps:
                return self._end("step_limit")
            self.state = robot.arm.state()
        except RobotError as error:
            return self._end("hardware_error", f"{type(error).__name__}: {error}")
        potential = self._potential()
        reward = self.settings.shaping_weight * (potential - self.potential)
        self.potential = potential
        return reward, None

    def _apply(self, command: Command | None) -> WatchdogStatus:
        """ControlLoop._apply: a safe command moves the arm and feeds the watchdog; anything else holds."""
        robot = self.robot
        sent = None
        if command is not None:
            sent = robot.safety.filter(command, self.state, self.settings.period_s)
            if sent.rejected:
                sent = None
            else:
                self.watchdog.feed()
        status = self.watchdog.status()
        if status is WatchdogStatus.OK and sent is not None:
            robot.arm.servo_joints(sent.joints_rad, reach_in_s=self.settings.period_s)
            robot.gripper.command(sent.gripper)
        else:
            robot.arm.hold()
        return status

    def _end(self, reason: str, detail: str = "") -> tuple[float, EpisodeEnd]:
        """Leave servo mode, let the scene settle and score it (eval_protocols.judges.TwinJudge.score)."""
        robot = self.robot
        try:
            robot.arm.hold()
            robot.arm.stop_servo()
        except RobotError as error:  # already failing: the verdict below still scores the scene
            log.debug("scene %d: leaving servo mode: %s", self.index, error)
        robot.clock.sleep(self.settings.settle_s)
        success = bool(robot.twin.task_success().success)
        reward = float(success) - self.settings.shaping_weight * self.potential  # phi = 0 at the end
        end = EpisodeEnd(self.index, -1, self.current.label, self.steps, reason, success, detail)  # episode: parent
        return reward, end

    def _potential(self) -> float:
        if self.settings.shaping_weight <= 0:
            return 0.0
        return float(self.robot.twin.object_in_gripper())

    def close(self) -> None:
        self.robot.close()


class _SceneGroup:
    """The scenes of one process and the renderer they share (built on the first scene's model: the scenes'
    models differ only in which object collides, which rendering does not read)."""

    def __init__(self, config, settings: VectorEnvSettings, indices: Sequence[int]) -> None:
        from robot.sim import model as sim_model
        from robot.sim.renderer import CameraRenderer

        self.settings = settings
        self.scenes: list[_Scene] = []
        try:
            for index in indices:
                self.scenes.append(_Scene(config, settings, index))
            self.renderer = CameraRenderer(self.scenes[0].robot.twin.model, sim_model.CAMERA)
        except BaseException:
            self.close()
            raise

    def _image(self, scene: _Scene) -> np.ndarray:
        twin = scene.robot.twin
        return self.renderer.render(twin.data, twin.lock, self.settings.image_width, self.settings.image_height,
                                    False)[0]

    def _observation(self) -> tuple[list[np.ndarray], list[ArmState], list[str]]:
        return ([self._image(scene) for scene in self.scenes], [scene.state for scene in self.scenes],
                [scene.current.instruction for scene in self.scenes])

    def start(self, first: Sequence[EnvScene]):
        for scene, env_scene in zip(self.scenes, first, strict=True):
            scene.start(env_scene)
        return self._observation()

    def step(self, commands: Sequence[Command | None], next_scenes: Sequence[EnvScene]):
        rewards, ends = [], []
        for scene, command, following in zip(self.scenes, commands, next_scenes, strict=True):
            reward, end = scene.tick(command)
            rewards.append(reward)
            ends.append(end)
            if end is not None:
                scene.start(following)
        return (*self._observation(), rewards, ends)

    def close(self) -> None:
        renderer = getattr(self, "renderer", None)
        if renderer is not None:
            renderer.close()
        for scene in self.scenes:
            scene.close()


def _worker_main(connection, config, settings: VectorEnvSettings, indices: list[int]) -> None:
    """A worker process: builds its scenes, then answers ("start"|"step"|"close", ...) requests in order."""
    group = None
    try:
        group = _SceneGroup(config, settings, indices)
        connection.send(("ready", None))
        while True:
            request = connection.recv()
            if request[0] == "close":
                break
            method = group.start if request[0] == "start" else group.step
            connection.send(("ok", method(*request[1:])))
    except EOFError:  # the parent went away
        pass
    except BaseException:
        with contextlib.suppress(BrokenPipeError, OSError):
            connection.send(("error", traceback.format_exc()))
    finally:
        if group is not None:
            group.close()
        connection.close()


class _Worker:
    def __init__(self, context, config, settings: VectorEnvSettings, indices: list[int]) -> None:
        self.indices = indices
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, config, settings, indices),
                                       name=f"twin-scenes-{indices[0]}-{indices[-1]}", daemon=True)
        self.process.start()
        child.close()

    def request(self, *message) -> None:
        self.connection.send(message)

    def answer(self):
        try:
            kind, value = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the twin worker for scenes {self.indices} exited (exit code "
                               f"{self.process.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"the twin worker for scenes {self.indices} failed:\n{value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.connection.send(("close",))
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


# ------------------------------------------------------------------------------------------------------------
# The vector of scenes
# ------------------------------------------------------------------------------------------------------------


class TwinVectorEnv:
    """``num_envs`` twin scenes stepped together; ``workers`` > 0 spreads them over that many processes (0: all in
    this process). ``reset()`` starts every scene's first episode; ``step(commands)`` runs one tick of each."""

    def __init__(self, config, source: SceneSource, num_envs: int, settings: VectorEnvSettings,
                 workers: int = 0) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.config, self.source, self.num_envs, self.settings = config, source, num_envs, settings
        self.episodes = np.full(num_envs, -1, dtype=np.int64)  # the episode each scene is running
        self._next: list[EnvScene] = []
        self._local: _SceneGroup | None = None
        self._workers: list[_Worker] = []
        chunks = [list(map(int, chunk)) for chunk in np.array_split(np.arange(num_envs), min(workers, num_envs))
                  ] if workers else []
        try:
            if workers:
                context = multiprocessing.get_context("spawn")  # no fork after torch/GL initialisation
                self._workers = [_Worker(context, config, settings, chunk) for chunk in chunks]
                for worker in self._workers:
                    worker.answer()  # "ready": the scenes exist
            else:
                self._local = _SceneGroup(config, settings, range(num_envs))
        except BaseException:
            self.close()
            raise

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.settings.image_height, self.settings.image_width, 3

    def reset(self, first_episodes: Sequence[int] | None = None) -> VectorObservation:
        """Start every scene's episode ``first_episodes[i]`` (default 0; a resumed run continues its sequences)."""
        start = np.zeros(self.num_envs, dtype=np.int64) if first_episodes is None \
            else np.asarray(first_episodes, dtype=np.int64)
        if start.shape != (self.num_envs,) or (start < 0).any():
            raise ValueError(f"first_episodes must be {self.num_envs} episode numbers >= 0, got {first_episodes}")
        first = [self.source.scene(i, int(start[i])) for i in range(self.num_envs)]
        self.episodes[:] = start
        self._next = [self.source.scene(i, int(start[i]) + 1) for i in range(self.num_envs)]
        return self._gather("start", [first])[0]

    def step(self, commands: Sequence[Command | None]) -> VectorStep:
        if len(commands) != self.num_envs:
            raise ValueError(f"step needs one command (or None) per scene: {self.num_envs}, got {len(commands)}")
        if not self._next:
            raise RuntimeError("call reset() before step()")
        observation, rewards, ends = self._gather("step", [list(commands), self._next])
        done = np.zeros(self.num_envs, dtype=bool)
        finished = []
        for index, end in enumerate(ends):
            if end is None:
                continue
            done[index] = True
            finished.append(replace(end, episode=int(self.episodes[index])))
            self.episodes[index] += 1
            self._next[index] = self.source.scene(index, int(self.episodes[index]) + 1)
        return VectorStep(observation, np.asarray(rewards, dtype=np.float32), done, finished)

    def _gather(self, kind: str, per_scene_args: list[list]):
        """Run ``kind`` on every group with its slice of each per-scene argument list; join the answers in order."""
        if self._local is not None:
            parts = [getattr(self._local, kind)(*per_scene_args)]
        else:
            for worker in self._workers:
                worker.request(kind, *[[args[i] for i in worker.indices] for args in per_scene_args])
            parts = [worker.answer() for worker in self._workers]
        images, arms, instructions = [], [], []
        extras: list[list] = [[] for _ in range(len(parts[0]) - 3)]
        for part in parts:
            images += part[0]
            arms += part[1]
            instructions += part[2]
            for column, values in zip(extras, part[3:], strict=True):
                column += values
        observation = VectorObservation(np.stack(images), arms, instructions)
        return (observation, *extras)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> TwinVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
