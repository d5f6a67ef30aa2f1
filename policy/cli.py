"""``fanvla policy ...``: inspect a model directory, predict one action, create a tiny random model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from policy.precision import DTYPE_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser("policy", help="the OpenVLA model: inspect, predict, create tiny models")
    commands = policy.add_subparsers(dest="policy_command", metavar="POLICY_COMMAND", required=True)

    info = commands.add_parser("info", help="architecture, parameter count, action space, normalisation keys")
    info.add_argument("model_dir", help="an openvla-7b-style model directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)

    predict = commands.add_parser("predict", help="predict the action (OpenVLA-OFT: the chunk) for one image and "
                                                  "instruction")
    predict.add_argument("model_dir")
    predict.add_argument("--image", required=True, help="RGB image file (png, jpg)")
    predict.add_argument("--instruction", required=True)
    predict.add_argument("--unnorm-key", default=None, help="statistics key (default: the only one)")
    predict.add_argument("--center-crop", action="store_true", help="0.9-area centre crop (models trained with "
                                                                     "crop augmentation)")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                         help="weights: auto = the checkpoint's own (docs/policy.md)")
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    predict.add_argument("--no-kv-cache", dest="use_cache", action="store_false",
                         help="recompute the whole sequence for every action token (a benchmark baseline)")
    predict.add_argument("--repeat", type=int, default=1,
                         help="predict N times and report each call's time (the first includes warm-up)")
    predict.add_argument("--state", default=None, metavar="V1,...,V13",
                         help="OpenVLA-OFT with proprio: the robot state (joints_rad x6, tcp_pose x6, gripper opening)")
    predict.add_argument("--wrist-image", default=None, help="OpenVLA-OFT with a wrist camera: its RGB image file")
    predict.set_defaults(func=_predict)

    random = commands.add_parser(
        "init-random", help="write a random-weight model at full size (openvla-7b's geometry and layout)",
        description="Write a model directory shaped exactly like the released openvla-7b (config, 3 bf16 shards, "
                    "Llama-2 tokenizer, processor files) with random weights and placeholder statistics, tensor by "
                    "tensor (memory stays at one tensor). For exercising the full-size path without a download.")
    random.add_argument("--out", required=True, help="new (or empty) directory")
    random.add_argument("--preset", default="openvla-7b", choices=("openvla-7b",))
    random.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    random.add_argument("--seed", type=int, default=0)
    random.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer files to copy (default: the Llama-2 tokenizer built by scripts/bootstrap.sh)")
    random.set_defaults(func=_init_random)

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

    return UserError, (CheckpointError, ConfigError, StatisticsError, FileNotFoundError, FileExistsError, ValueError,
                       OSError)


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
    if info.get("oft"):
        oft = info["oft"]
        print(f"  OpenVLA-OFT      chunks of {oft['chunk_size']} actions decoded in parallel, {oft['num_images']} "
              f"image(s), proprio {'on (' + str(oft['proprio_dim']) + '-D)' if oft['use_proprio'] else 'off'}")
    if "action_space" in info:
        print(f"  action space     {info['action_space']}")
    for key, stats in info["norm_stats"].items():
        print(f"  norm stats '{key}': {stats['action_dim']}-D, mask {stats['mask']}, "
              f"{stats['num_transitions']} transitions / {stats['num_trajectories']} trajectories")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from policy.openvla import OpenVLA

    user_error, known = _user_errors()
    for path in (args.image, args.wrist_image):
        if path is not None and not Path(path).is_file():
            raise user_error(f"image {path} does not exist")
    try:
        image = np.asarray(Image.open(args.image).convert("RGB"))
        if args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        started = time.perf_counter()
        model = OpenVLA.from_pretrained(args.model_dir, dtype=args.dtype, device=args.device)
        loaded = time.perf_counter()
        inputs = _chunk_inputs(model, args)
        calls_s = []
        for _ in range(args.repeat):
            call_started = time.perf_counter()
            with torch.inference_mode():
                prediction = model.predict_action([image], [args.instruction], unnorm_key=args.unnorm_key,
                                                  center_crop=args.center_crop, use_cache=args.use_cache, **inputs)
            calls_s.append(round(time.perf_counter() - call_started, 4))
    except known as error:
        raise user_error(str(error)) from None
    timing = {"load_s": round(loaded - started, 3), "predict_s": calls_s[-1], "calls_s": calls_s,
              "kv_cache": args.use_cache, "weights_dtype": str(model.dtype).removeprefix("torch."),
              "compute_dtype": str(model.input_dtype).removeprefix("torch."), "device": str(model.device)}
    spread = prediction.spread()[0]
    top_prob = prediction.bin_probs[0].max(axis=-1)
    if args.json:
        print(json.dumps({"unnorm_key": prediction.unnorm_key, "action": prediction.actions[0].tolist(),
                          "spread": spread.tolist(), "token_ids": prediction.token_ids[0].tolist(),
                          "top_bin_prob": top_prob.tolist(),
                          "action_token_mass": prediction.action_token_mass[0].tolist(), "timing": timing},
                         indent=2))
        return 0
    print(f"instruction: {args.instruction!r}  statistics: '{prediction.unnorm_key}'")
    chunk = prediction.actions.ndim == 3  # OpenVLA-OFT: (1, K, 7), decoded in one forward pass
    rows = [(k, prediction.actions[0, k], spread[k], top_prob[k], prediction.token_ids[0, k])
            for k in range(prediction.actions.shape[1])] if chunk else \
        [(None, prediction.actions[0], spread, top_prob, prediction.token_ids[0])]
    print(f"{'step ' if chunk else ''}{'dim':>3} {'action':>12} {'spread (std)':>13} {'p(top bin)':>10} {'token':>7}")
    for step, actions, spreads, probs, tokens in rows:
        for dim in range(actions.shape[0]):
            print(f"{'' if step is None else f'{step:>4} '}{dim:>3} {actions[dim]:>12.6f} {spreads[dim]:>13.6f} "
                  f"{probs[dim]:>10.3f} {tokens[dim]:>7d}")
    print(f"probability of an action token per step: min {prediction.action_token_mass[0].min():.3f}")
    print(f"loaded in {timing['load_s']:.1f} s ({timing['weights_dtype']} weights, {timing['compute_dtype']} compute "
          f"on {timing['device']}), predicted in {', '.join(f'{s:.2f}' for s in calls_s)} s"
          f"{'' if args.use_cache else ' without the KV cache'}")
    return 0


def _chunk_inputs(model, args: argparse.Namespace) -> dict:
    """``states`` / ``wrist_images`` for an OpenVLA-OFT model that reads them (refused for a model that does not)."""
    import numpy as np
    from PIL import Image

    settings = getattr(model, "oft", None)
    inputs: dict = {}
    if args.state is not None:
        if settings is None or not settings.use_proprio:
            raise ValueError("--state: this model does not read the robot state")
        try:
            inputs["states"] = [np.array([float(v) for v in args.state.split(",")])]
        except ValueError:
            raise ValueError(f"--state expects comma-separated numbers, got {args.state!r}") from None
    elif settings is not None and settings.use_proprio:
        raise ValueError(f"this OpenVLA-OFT model reads the robot state: pass --state with {settings.proprio_dim} "
                         f"comma-separated values (joints_rad x6, tcp_pose x6, gripper opening)")
    if args.wrist_image is not None:
        if settings is None or not settings.uses_wrist:
            raise ValueError("--wrist-image: this model reads one camera")
        inputs["wrist_images"] = [np.asarray(Image.open(args.wrist_image).convert("RGB"))]
    elif settings is not None and settings.uses_wrist:
        raise ValueError("this OpenVLA-OFT model reads a wrist camera: pass --wrist-image")
    return inputs


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


def _init_random(args: argparse.Namespace) -> int:
    import torch

    from policy.llama_tokenizer import require_tokenizer_dir
    from policy.random_init import PRESETS, write_random_checkpoint

    user_error, known = _user_errors()
    try:
        tokenizer = require_tokenizer_dir(args.tokenizer)
    except FileNotFoundError as error:
        raise user_error(str(error)) from None
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    started = time.perf_counter()
    try:
        out = write_random_checkpoint(args.out, PRESETS[args.preset](), dtype, seed=args.seed, tokenizer_dir=tokenizer,
                                      preset=args.preset)
    except known as error:
        raise user_error(str(error)) from None
    size = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    print(f"wrote a random-initialised '{args.preset}' model ({args.dtype}, {size / 1e9:.2f} GB of weights) to {out} "
          f"in {time.perf_counter() - started:.0f} s")
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
