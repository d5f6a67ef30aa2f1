"""``fanvla finetune export RUN``: write the policy directory of a finished (or any checkpointed) run afterwards.

For runs trained with ``--no-export`` (on a GPU whose memory is better spent on training than on merging) or to ship
an earlier checkpoint than the last. The run's own configuration says how: the same --init (its fingerprint must
match the one the run recorded), the same LoRA layout and data (the stores are read again for the statistics and
the action space; their fingerprint must match too), then the adapter of the chosen checkpoint is merged into the
base and the directory written exactly as at the end of training (``model_setup.export_final``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from finetune import checkpointing
from finetune.config import FinetuneError, TrainConfig
from finetune.data import default_unnorm_key, load_training_data
from finetune.model_kind import model_kind
from finetune.model_setup import (
    check_model_fits,
    export_final,
    load_initial_model,
    make_trainable,
    resolve_device,
    training_precision,
)
from policy.openvla import OpenVLA

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "train_config.json"
EXPORT_RECORD_FILE = "export_record.json"
FINAL_DIR = "final"


def _run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise FinetuneError(f"{run_dir} is not a finetuning run ({RUN_CONFIG_FILE} is missing)")
    return TrainConfig.from_dict(json.loads(path.read_text())["config"])


def _checkpoint(run_dir: Path, step: int | None) -> checkpointing.SavedState:
    checkpoints = checkpointing.list_checkpoints(run_dir)
    if not checkpoints:
        raise FinetuneError(f"{run_dir} has no checkpoints ({checkpointing.CHECKPOINTS_DIR}/step-*) to export")
    if step is None:
        return checkpointing.read_state(checkpoints[-1])
    chosen = checkpointing.checkpoint_dir(run_dir, step)
    if chosen not in checkpoints:
        steps = [checkpointing.read_state(path).step for path in checkpoints]
        raise FinetuneError(f"{run_dir} has no checkpoint at step {step}; it has steps {steps}")
    return checkpointing.read_state(chosen)


def _out_dir(run_dir: Path, saved: checkpointing.SavedState, config: TrainConfig, out: str | None) -> Path:
    if out is not None:
        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise FinetuneError(f"--out {target} is not empty; choose a new directory (nothing was overwritten)")
        return target
    final = saved.step == config.steps
    target = run_dir / (FINAL_DIR if final else f"export-step-{saved.step:08d}")
    if target.exists():
        raise FinetuneError(f"{target} already exists; remove it or pass --out (nothing was overwritten)")
    return target


def export_run(run_dir: str | Path, step: int | None = None, out: str | None = None, device: str = "auto",
               dtype: str | None = None) -> tuple[Path, OpenVLA]:
    """Write the policy directory of ``run_dir`` at ``step`` (default: its latest checkpoint); see the module
    docstring. ``dtype`` overrides the run's --dtype (e.g. to merge a GPU run on a CPU without bf16). Returns the
    directory and the merged model."""
    run_dir = Path(run_dir)
    config = _run_config(run_dir).replace(device=device, **({"dtype": dtype} if dtype else {}))
    config.check()
    saved = _checkpoint(run_dir, step)
    target = _out_dir(run_dir, saved, config, out)
    data = load_training_data(config.data, config.action_space, config.val_fraction, config.skip_noops,
                              config.max_episodes)
    if data.fingerprint["sha256"] != saved.state["data_sha256"]:
        raise FinetuneError(f"the stores {list(config.data)} are not the data {run_dir} was trained on (fingerprint "
                            f"changed); the statistics of the export would be wrong")
    torch_device = resolve_device(config.device)
    held, save_dtype = training_precision(config, torch_device)
    kind = model_kind(config)
    model = kind.prepare_model(load_initial_model(config, torch_device, held, for_training=False), data)
    from policy.deployment import weights_fingerprint

    init_fingerprint = weights_fingerprint(Path(config.init))[0]
    if init_fingerprint != saved.state["init_fingerprint"]:
        raise FinetuneError(f"--init {config.init} changed since {run_dir} was trained; its adapter belongs to the "
                            f"weights the run started from")
    check_model_fits(model, data, config.init)
    module = make_trainable(model, config.replace(gradient_checkpointing=False))
    checkpointing.load_trainable(saved, module)
    record_path = run_dir / EXPORT_RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"steps": config.steps}
    record.update(init_fingerprint=init_fingerprint, exported_from_step=saved.step, **kind.export_fields())
    with torch.no_grad():
        final, merged = export_final(module, config, data, config.unnorm_key or default_unnorm_key(config.data),
                                     target, record, save_dtype)
    log.info("exported %s (step %d) to %s", run_dir, saved.step, final)
    return final, merged
