"""What upstream OpenVLA's own Hugging Face code needs to open a directory we write.

Upstream loads checkpoints with ``AutoConfig`` / ``AutoModelForVision2Seq`` / ``AutoProcessor`` and
``trust_remote_code=True``, reading three Python files (``configuration_prismatic.py``, ``modeling_prismatic.py``,
``processing_prismatic.py`` from github.com/openvla/openvla ``prismatic/extern/hf/``) that sit beside the weights.
transformers finds them through ``auto_map`` entries, which the released openvla-7b carries in ``config.json``,
``preprocessor_config.json``, ``processor_config.json`` and ``tokenizer_config.json`` (see docs/policy.md,
"Opening an export with upstream's code"). Without them ``AutoConfig`` fails with "model type `openvla` ...
not recognised" and ``AutoProcessor`` with "Unrecognized image processor".

We never import or run those files. When the base model directory has them (a snapshot of openvla-7b does), they
are copied byte for byte so the export is complete for upstream users; otherwise the user places them there.
Tokenizer files are copied byte for byte from the base as well: re-serialising ``tokenizer.json`` with today's
``tokenizers`` writes BPE merges as pairs, which upstream's pinned tokenizers 0.19 cannot parse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from policy.processing import PREPROCESSOR_CONFIG_FILE

MODEL_AUTO_MAP = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                  "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}
PROCESSOR_CLASS = "PrismaticProcessor"
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                      "AutoProcessor": "processing_prismatic.PrismaticProcessor"}
TOKENIZER_AUTO_MAP = {"AutoProcessor": "processing_prismatic.PrismaticProcessor"}
REMOTE_CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
PROCESSOR_CONFIG_FILE = "processor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Copied unchanged from the base model; tokenizer_config.json is copied and only gains the processor entries.
TOKENIZER_DATA_FILES = ("tokenizer.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json")


def with_model_auto_map(config: dict) -> dict:
    """config.json content with upstream's local ``auto_map`` (a base loaded from the Hub may carry
    'openvla/openvla-7b--...' entries, which would send upstream's loader to the network)."""
    return {**config, "auto_map": dict(MODEL_AUTO_MAP)}


def _with_processor_entries(document: dict, auto_map: dict) -> dict:
    return {**document, "auto_map": dict(auto_map), "processor_class": PROCESSOR_CLASS}


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_processor_files(out_dir: Path, generated_preprocessor: dict, source: Path | None) -> None:
    """preprocessor_config.json (the base's own when it has one, so values such as upstream's stored
    ``tvf_normalize_params`` survive; else ``generated_preprocessor``) and processor_config.json, both with the
    processor's auto_map."""
    base = source / PREPROCESSOR_CONFIG_FILE if source is not None else None
    preprocessor = json.loads(base.read_text()) if base is not None and base.is_file() else generated_preprocessor
    _write_json(out_dir / PREPROCESSOR_CONFIG_FILE, _with_processor_entries(preprocessor, PROCESSOR_AUTO_MAP))
    _write_json(out_dir / PROCESSOR_CONFIG_FILE, _with_processor_entries({}, TOKENIZER_AUTO_MAP))


def mark_tokenizer_config(out_dir: Path) -> None:
    """Give tokenizer_config.json upstream's processor entries; the file is left byte for byte when it has them."""
    path = out_dir / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    document = json.loads(path.read_text())
    if document.get("auto_map") == TOKENIZER_AUTO_MAP and document.get("processor_class") == PROCESSOR_CLASS:
        return
    _write_json(path, _with_processor_entries(document, TOKENIZER_AUTO_MAP))


def copy_tokenizer_files(source: Path, out_dir: Path) -> list[str]:
    """The base's tokenizer files, byte for byte (tokenizer_config.json marked); returns the names copied."""
    copied = []
    for name in (*TOKENIZER_DATA_FILES, TOKENIZER_CONFIG_FILE):
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
            copied.append(name)
    mark_tokenizer_config(out_dir)
    return copied


def copy_remote_code(source: Path, out_dir: Path) -> list[str]:
    """Upstream's three remote-code files when the base directory has them (copied, never imported)."""
    copied = []
    for name in REMOTE_CODE_FILES:
        if (source / name).is_file() and source.resolve() != out_dir.resolve():
            shutil.copyfile(source / name, out_dir / name)
            copied.append(name)
    return copied
