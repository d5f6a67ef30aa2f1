"""``fanvla policy ...``: inspect a model directory, predict one action, create a tiny random model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser("policy", help="the OpenVLA model: inspect, predict, create tiny models")
    commands = policy.add_subparsers(dest="policy_command", metavar="POLICY_COMMAND", required=True)

    info = commands.add_parser("info", help="architecture, parameter count, action space, normalisation keys")
    info.add_argument("model_dir", help="an openvla-7b-style model directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)

    predict = commands.add_parser("predict", help="predict the action for one image and instruction")
    predict.add_argument("model_dir")
    predict.add_argument("--image", required=True, help="RGB image file (png, jpg)")
    predict.add_argument("--instruction", required=True)
    predict.add_argument("--unnorm-key", default=None, help="statistics key (default: the only one)")
    predict.add_argument("--center-crop", action="store_true", help="0.9-area centre crop (models trained with "
                                                                     "crop augmentation)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=_predict)

    init = commands.add_parser("init-tiny", help="write a random-initialised tiny model (checkpoint format of "
                                                 "openvla-7b)")
    init.add_argument("--out", required=True, help="new (or empty) directory")
    init.add_argument("--preset", default="test", help="tiny preset: test, demo")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a preset field, e.g. --set image_size=128 (repeatable)")
    init.add_argument("--instructions", default=None, help="text file, one instruction per line, to train the "
                                                           "tokenizer on (default: built-in tabletop phrases)")
    init.set_defaults(func=_init_tiny)

    tokenizer = commands.add_parser("build-tokenizer", help="write openvla-7b's Llama-2 tokenizer files from the npm "
                                                            "package llama-tokenizer-js (no hub access needed)")
    tokenizer.add_argument("--npm-tarball", required=True, help="llama-tokenizer-js-1.2.2.tgz, from `npm pack "
                                                                "llama-tokenizer-js@1.2.2`")
    tokenizer.add_argument("--out", required=True, help="directory for the tokenizer files")
    tokenizer.add_argument("--overwrite", action="store_true", help="replace tokenizer files already in --out")
    tokenizer.set_defaults(func=_build_tokenizer)


def _user_errors():
    from fanvla.cli import UserError
    from policy.checkpoint import CheckpointError
    from policy.config import ConfigError
    from policy.normalization import StatisticsError

    return UserError, (CheckpointError, ConfigError, StatisticsError, FileNotFoundError, FileExistsError, ValueError)


def _info(args: argparse.Namespace) -> int:
    from policy.model_info import describe_model_dir

    user_error, known = _user_errors()
    try:
        info = describe_model_dir(args.model_dir)
    except known as error:
        raise user_error(str(error)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    vision, llm = info["vision"], info["language_model"]
    print(f"{info['directory']}" + (f"  (tiny preset '{info['tiny_preset']}')" if info["tiny_preset"] else ""))
    print(f"  parameters       {info['parameters']:,} in {info['tensors']} tensors")
    for name, tower in vision.items():
        print(f"  {name:16s} ViT width {tower['embed_dim']} depth {tower['depth']} heads {tower['num_heads']}, "
              f"{tower['img_size']} px / patch {tower['patch_size']} = {tower['num_patches']} patches, "
              f"features of block {tower['feature_block']}")
    print(f"  projector        {' -> '.join(str(d) for d in info['projector'])}")
    print(f"  language model   {llm['model_type']} hidden {llm['hidden_size']} layers {llm['num_hidden_layers']} "
          f"heads {llm['num_attention_heads']} vocab {llm['vocab_size']}")
    print(f"  action tokens    ids {info['action_tokens'][0]}..{info['action_tokens'][1]} (reversed: "
          f"{info['action_tokens'][1]} = bin 0 = -1)")
    print(f"  tokenizer        {'present' if info['tokenizer'] else 'MISSING (token ids only)'}")
    if "action_space" in info:
        print(f"  action space     {info['action_space']}")
    for key, stats in info["norm_stats"].items():
        print(f"  norm stats '{key}': {stats['action_dim']}-D, mask {stats['mask']}, "
              f"{stats['num_transitions']} transitions / {stats['num_trajectories']} trajectories")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from policy.openvla import OpenVLA

    user_error, known = _user_errors()
    image_path = Path(args.image)
    if not image_path.is_file():
        raise user_error(f"image {image_path} does not exist")
    try:
        image = np.asarray(Image.open(image_path).convert("RGB"))
        model = OpenVLA.from_pretrained(args.model_dir)
        prediction = model.predict_action([image], [args.instruction], unnorm_key=args.unnorm_key,
                                          center_crop=args.center_crop)
    except known as error:
        raise user_error(str(error)) from None
    spread = prediction.spread()[0]
    top_prob = prediction.bin_probs[0].max(axis=-1)
    if args.json:
        print(json.dumps({"unnorm_key": prediction.unnorm_key, "action": prediction.actions[0].tolist(),
                          "spread": spread.tolist(), "token_ids": prediction.token_ids[0].tolist(),
                          "top_bin_prob": top_prob.tolist(),
                          "action_token_mass": prediction.action_token_mass[0].tolist()}, indent=2))
        return 0
    print(f"instruction: {args.instruction!r}  statistics: '{prediction.unnorm_key}'")
    print(f"{'dim':>3} {'action':>12} {'spread (std)':>13} {'p(top bin)':>10} {'token':>7}")
    for dim in range(prediction.actions.shape[1]):
        print(f"{dim:>3} {prediction.actions[0, dim]:>12.6f} {spread[dim]:>13.6f} {top_prob[dim]:>10.3f} "
              f"{prediction.token_ids[0, dim]:>7d}")
    print(f"probability of an action token per step: min {prediction.action_token_mass[0].min():.3f}")
    return 0


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--set expects FIELD=VALUE, got '{pair}'")
        overrides[key.strip()] = value.strip()
    return overrides


def _init_tiny(args: argparse.Namespace) -> int:
    from policy.tiny import build_tiny

    user_error, known = _user_errors()
    try:
        instructions = None
        if args.instructions:
            lines = Path(args.instructions).read_text().splitlines()
            instructions = [line.strip() for line in lines if line.strip()]
        out = build_tiny(args.out, preset=args.preset, seed=args.seed, instructions=instructions,
                         overrides=_parse_overrides(args.overrides))
    except known as error:
        raise user_error(str(error)) from None
    print(f"wrote a random-initialised '{args.preset}' model to {out}")
    return 0


def _build_tokenizer(args: argparse.Namespace) -> int:
    from policy.llama_tokenizer import build_llama2_tokenizer

    user_error, known = _user_errors()
    try:
        out = build_llama2_tokenizer(args.npm_tarball, args.out, overwrite=args.overwrite)
    except known as error:
        raise user_error(str(error)) from None
    print(f"wrote the Llama-2 tokenizer (32000 pieces, <PAD> = 32000) to {out}")
    return 0
