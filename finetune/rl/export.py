"""Servable policy directories of an RL run: the checkpoint format of ``fanvla finetune`` (weights, statistics,
tokenizer, fanvla.json), so ``fanvla serve`` and ``fanvla eval run --policy DIR`` take them as they are.

The statistics, action space, statistics key and centre crop are those of ``--init`` (RL changes the weights, not
what an action means). LoRA adapters are merged into a copy of the model while the run goes on (the training model
keeps its adapters) and into the training model itself for the run's final export; the value head is not part of a
policy. A directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from finetune.model_setup import ADAPTER_DIR, FANVLA_FORMAT
from finetune.rl.actor_critic import ActorCritic
from finetune.rl.config import RLConfig
from policy.deployment import DeploymentInfo, read_fanvla_json, weights_fingerprint
from policy.model_info import FANVLA_FILE


def export_policy(actor: ActorCritic, config: RLConfig, deployment: DeploymentInfo, out_dir: Path,
                  record: dict[str, Any], keep_adapters: bool = True) -> Path:
    """``keep_adapters``: merge into a copy (training goes on); False merges into the training model itself (the
    run's last export: no second copy of the weights in memory, which matters for the 7B)."""
    temp = out_dir.with_name(f".{out_dir.name}.writing")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if config.full:
        model = actor.vla
    else:
        peft = copy.deepcopy(actor.peft) if keep_adapters else actor.peft
        peft.save_pretrained(str(temp / ADAPTER_DIR), save_embedding_layers=False)
        model = peft.merge_and_unload()
    model.save_pretrained(temp)
    weights, method = weights_fingerprint(temp)
    init = read_fanvla_json(Path(config.init)) or {}
    document = {
        "format": FANVLA_FORMAT,
        "action_space": deployment.action_space.describe(),
        "unnorm_key": deployment.unnorm_key,
        "center_crop": deployment.center_crop,
        "image_size": model.image_settings.image_size,
        "method": config.method,
        "alpha": config.fan_alpha if config.method == "fan-ppo" else None,
        "sigma_normalized_units": config.fan_sigma if config.method == "fan-ppo" else None,
        "finetuning": "full" if config.full else {"lora_rank": config.lora_rank, "lora_alpha":
                                                  config.lora_alpha or min(config.lora_rank, 16),
                                                  "merged": True, "adapter": ADAPTER_DIR},
        "rl_config": config.to_dict(),
        "init": {"path": str(Path(config.init).resolve()), "method": init.get("method"),
                 "data": init.get("data")},
        "fingerprints": {"weights": weights, "weights_method": method, "init": deployment.fingerprint},
        **record,
    }
    (temp / FANVLA_FILE).write_text(json.dumps(document, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    temp.rename(out_dir)
    return out_dir
