"""``train_rl``: PPO or FAN-PPO in the vectorised twin, from a finetuned checkpoint to a servable policy.

Order of work: check the options, load ``--init`` (its statistics, action space and centre crop define the actions),
make it trainable (LoRA or full) with a value head, start the twin's scenes, then per update: a rollout of
``ticks_per_update`` ticks of every scene, one PPO update, a metrics row, and when due a resumable checkpoint
(finetune's format: ``OUT/checkpoints/step-<update>``) and an evaluation (the policy exported to
``OUT/evals/update-<update>/policy`` and handed to ``evaluate``, which runs the trial runner). At the end:
``OUT/final`` (servable), ``OUT/rl_summary.json`` and the plots. docs/rl.md describes the outputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune import checkpointing
from finetune.config import FinetuneError, TrainConfig
from finetune.metrics import MetricsWriter
from finetune.model_setup import describe_parameters, load_initial_model, make_trainable, training_precision
from finetune.rl.actor_critic import ActorCritic
from finetune.rl.config import RLConfig
from finetune.rl.export import export_policy
from finetune.rl.ppo import make_optimizer, ppo_update
from finetune.rl.rollout import ActionDecoder, RolloutStats, collect
from policy.action_space import ACTION_DIM
from robot.sim.vector_env import SceneSource, TwinVectorEnv, VectorEnvSettings, input_render_size

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "rl_config.json"
SUMMARY_FILE = "rl_summary.json"
FINAL_DIR = "final"
EVALS_DIR = "evals"
METRIC_FILES = {"train": "train.csv", "eval": "eval.csv"}

# policy dir, update, env steps -> {task name: success rate}; runs the evaluation trial runner
Evaluator = Callable[[Path, int, int], dict[str, float]]


@dataclass
class RLResult:
    out_dir: Path
    final_dir: Path
    updates: int
    env_steps: int
    wall_s: float
    rollout_success: float
    evaluations: dict[int, dict[str, float]] = field(default_factory=dict)


def eval_dir(out_dir: Path, update: int) -> Path:
    return out_dir / EVALS_DIR / f"update-{update:04d}"


def train_rl(config: RLConfig, hardware, source: SceneSource, evaluate: Evaluator | None = None) -> RLResult:
    """Run (or resume) one RL run; raises ``FinetuneError`` on bad input. ``hardware``: the HardwareConfig of the
    twin (the evaluation's); ``source``: the scenes of the training tasks."""
    config.check()
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _RLRun(config, hardware, source, evaluate).execute()
    finally:
        torch.set_num_threads(previous)


class _RLRun:
    def __init__(self, config: RLConfig, hardware, source: SceneSource, evaluate: Evaluator | None) -> None:
        self.config, self.hardware, self.source, self.evaluate = config, hardware, source, evaluate
        self.out = config.out_dir
        self.device = torch.device(config.device)
        self.evaluations: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------------------------------- set-up
    def _saved(self) -> checkpointing.SavedState | None:
        checkpoints = checkpointing.list_checkpoints(self.out)
        if not self.config.resume:
            if checkpoints or (self.out / RUN_CONFIG_FILE).is_file():
                raise FinetuneError(f"{self.out} already holds an RL run; pass --resume to continue it, or choose a "
                                    f"new --out (nothing was overwritten)")
            return None
        return checkpointing.read_state(checkpoints[-1]) if checkpoints else None

    def _model(self):
        config = self.config
        as_train = TrainConfig(data=(), init=config.init, out=config.out, full=config.full,
                               lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, batch_size=config.minibatch,
                               dtype=config.dtype, device=config.device)
        held, _ = training_precision(as_train, self.device)
        model = load_initial_model(as_train, self.device, held)
        if model.tokenizer is None:
            raise FinetuneError(f"--init {config.init} has no tokenizer files: the instructions cannot be encoded")
        from policy.deployment import DeploymentError, resolve_deployment

        dims = {key: entry.action.dim for key, entry in model.norm_stats.items()}
        try:
            deployment = resolve_deployment(config.init, list(model.norm_stats), dims)
        except DeploymentError as error:
            raise FinetuneError(f"--init {config.init}: {error}") from None
        if dims[deployment.unnorm_key] != ACTION_DIM:
            raise FinetuneError(f"--init {config.init} predicts {dims[deployment.unnorm_key]}-D actions; the twin "
                                f"needs {ACTION_DIM}")
        torch.manual_seed(config.seed)
        trainable = make_trainable(model, as_train)
        actor = ActorCritic(model, trainable, deployment.center_crop).to(self.device)
        actor.eval()
        return actor, deployment

    def _env(self, actor: ActorCritic) -> TwinVectorEnv:
        camera = self.hardware.camera.color
        width, height = input_render_size(camera.width, camera.height, actor.vla.image_settings.image_size)
        settings = VectorEnvSettings(width, height, self.hardware.recording.period_s,
                                     shaping_weight=self.config.shaping_weight)
        workers = min(self.config.workers, self.config.envs)
        return TwinVectorEnv(self.hardware, self.source, self.config.envs, settings, workers)

    # ------------------------------------------------------------------------------------------- the run
    def execute(self) -> RLResult:
        started = time.perf_counter()
        config = self.config
        saved = self._saved()
        actor, deployment = self._model()
        optimizer = make_optimizer(actor, config)
        generator = torch.Generator().manual_seed(config.seed)
        stats = RolloutStats(config.window)
        update, env_steps, first_episodes = 0, 0, None
        if saved is not None:
            differences = config.resume_differences(RLConfig.from_dict(saved.state["config"]))
            if saved.state["init_fingerprint"] != deployment.fingerprint:
                differences.append(f"the initial weights in {config.init} changed since the run started")
            if differences:
                raise FinetuneError(f"cannot resume {saved.path}: " + "; ".join(differences))
            checkpointing.load_checkpoint(saved, actor, optimizer, rank=0)
            generator.set_state(torch.load(saved.path / checkpointing.rng_file(0), weights_only=True)["sampler"])
            update, env_steps = saved.step, int(saved.state["env_steps"])
            stats = RolloutStats.from_dict(saved.state["rollout_stats"])
            first_episodes = saved.state["next_episodes"]
            log.info("resuming %s at update %d (%d environment steps)", saved.path, update, env_steps)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / RUN_CONFIG_FILE).write_text(json.dumps({"config": config.to_dict(), "init_fingerprint":
                                                            deployment.fingerprint}, indent=2))
        log.info("RL %s from %s: %s; %d scenes x %d ticks per update, %d updates", config.method, config.init,
                 describe_parameters(actor), config.envs, config.ticks_per_update, config.updates)
        writer = MetricsWriter(self.out, config.tensorboard, update if saved else None, METRIC_FILES)
        decoder = ActionDecoder(actor.vla.action_tokenizer.bin_values,
                                actor.vla.norm_stats[deployment.unnorm_key].action, deployment.action_space)
        try:
            if update == 0 and config.eval_initial:
                self._evaluate(writer, Path(config.init), 0, 0)
            with self._env(actor) as env:
                observation = env.reset(first_episodes)
                while update < config.updates:
                    rollout, observation = collect(actor, env, observation, config.ticks_per_update, decoder,
                                                   config.temperature, generator)
                    metrics = ppo_update(actor, optimizer, rollout, config, decoder.bin_values, generator)
                    update += 1
                    env_steps += rollout.ticks * rollout.num_envs
                    stats.add(rollout.ends)
                    writer.write("train", update, _row(rollout, metrics, stats, env_steps))
                    log.info("update %d/%d: %d env steps, rollout success %.2f (last %d episodes), width %.3f",
                             update, config.updates, env_steps, stats.windowed_success, len(stats.recent),
                             float(rollout.width_norm.mean()))
                    if update % config.save_every == 0 or update == config.updates:
                        self._checkpoint(update, env_steps, actor, optimizer, generator, stats, env, deployment)
                    if config.eval_every and update % config.eval_every == 0 and update < config.updates:
                        self._export_and_evaluate(writer, actor, deployment, update, env_steps)
            final = export_policy(actor, config, deployment, self.out / FINAL_DIR,
                                  self._record(update, env_steps, stats), keep_adapters=False)
            if self.evaluate is not None and update not in self._evaluated_updates():
                self._evaluate(writer, final, update, env_steps)
        finally:
            writer.close()
        self._plot()
        result = RLResult(self.out, self.out / FINAL_DIR, update, env_steps, time.perf_counter() - started,
                          stats.windowed_success, self.evaluations)
        (self.out / SUMMARY_FILE).write_text(json.dumps(
            {"method": config.method, "updates": update, "env_steps": env_steps, "wall_s": round(result.wall_s, 1),
             "rollout_success_window": stats.windowed_success, "episodes": stats.episodes,
             "final": str(result.final_dir), "evaluations": {str(k): v for k, v in self.evaluations.items()}},
            indent=2))
        return result

    # ------------------------------------------------------------------------------------------- pieces
    def _record(self, update: int, env_steps: int, stats: RolloutStats) -> dict[str, Any]:
        from fanvla import __version__

        return {"rl": {"updates": update, "env_steps": env_steps, "episodes": stats.episodes,
                       "rollout_success_window": stats.windowed_success}, "software_version": __version__}

    def _checkpoint(self, update, env_steps, actor, optimizer, generator, stats, env, deployment) -> None:
        rng = {**checkpointing.rng_state(), "sampler": generator.get_state()}
        # A resumed run starts every scene at its next episode (the running ones are cut short, never replayed).
        state = {"env_steps": env_steps, "next_episodes": [int(e) + 1 for e in env.episodes],
                 "rollout_stats": stats.to_dict(), "config": self.config.to_dict(),
                 "init_fingerprint": deployment.fingerprint}
        checkpointing.save_checkpoint(self.out, update, actor, optimizer, state, [rng], self.config.keep_checkpoints)

    def _export_and_evaluate(self, writer, actor, deployment, update: int, env_steps: int) -> None:
        if self.evaluate is None:
            return
        stats_record = {"rl": {"updates": update, "env_steps": env_steps}}
        policy_dir = export_policy(actor, self.config, deployment, eval_dir(self.out, update) / "policy",
                                   stats_record)
        self._evaluate(writer, policy_dir, update, env_steps)

    def _evaluated_updates(self) -> set[int]:
        return set(self.evaluations)

    def _evaluate(self, writer, policy_dir: Path, update: int, env_steps: int) -> None:
        if self.evaluate is None:
            return
        started = time.perf_counter()
        rates = self.evaluate(policy_dir, update, env_steps)
        self.evaluations[update] = rates
        row = {"env_steps": env_steps, **{f"success_{task}": rate for task, rate in rates.items()},
               "success_mean": float(np.mean(list(rates.values()))) if rates else float("nan"),
               "wall_s": time.perf_counter() - started}
        writer.write("eval", update, row)
        log.info("evaluation after update %d: %s", update, ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))

    def _plot(self) -> None:
        from finetune.rl.plot import plot_rl_runs

        try:
            plot_rl_runs([self.out], self.out / "curves.png")
        except Exception as error:  # a plot must never cost the run its outputs
            log.warning("could not draw %s: %s", self.out / "curves.png", error)


def _row(rollout, metrics: dict[str, float], stats: RolloutStats, env_steps: int) -> dict[str, float]:
    ended = rollout.ends
    row = {"env_steps": env_steps, "episodes": len(ended),
           "rollout_success": float(np.mean([e.success for e in ended])) if ended else float("nan"),
           "rollout_success_window": stats.windowed_success, "window_full": float(stats.window_full),
           "episode_steps": float(np.mean([e.steps for e in ended])) if ended else float("nan"),
           "reward_sum": float(rollout.rewards.sum()), "width_norm": float(rollout.width_norm.mean()),
           "width_bins": float(rollout.width_bins.mean()), "rollout_entropy_nats": float(rollout.entropy_nats.mean()),
           **{f"width_norm_d{d + 1}": float(w) for d, w in enumerate(rollout.width_norm)},
           "policy_s": rollout.policy_s, "env_s": rollout.env_s,
           "env_steps_per_s": rollout.ticks * rollout.num_envs / max(rollout.env_s + rollout.policy_s, 1e-9),
           **metrics}
    for reason in ("success", "step_limit", "watchdog", "hardware_error"):
        row[f"ended_{reason}"] = float(sum(e.reason == reason for e in ended))
    return row
