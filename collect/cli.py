"""``fanvla collect ...``: inspect, verify, repair, view, merge and filter episode stores.

Each subcommand is added by one ``_add_<name>(commands)`` function listed in :data:`SUBCOMMANDS`; the
recorder adds ``record`` the same way. Handlers import their heavy modules lazily and turn store
errors into one clear message (exit code 2).
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable

from robot.cli import add_config_argument


def _store_errors_as_user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        from collect.errors import StoreError
        from fanvla.cli import UserError

        try:
            return handler(args)
        except StoreError as error:
            raise UserError(str(error)) from None
        except (IndexError, KeyError, ValueError) as error:
            raise UserError(str(error).strip("'\"")) from None

    return wrapped


def _add_info(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="episodes, frames, no-ops, per instruction/object counts, duration")
    info.add_argument("store", help="episode store (a .zarr directory)")
    info.add_argument("--json", action="store_true",
                      help="print one JSON object (keys episodes, frames, noop_frames, ...)")
    info.set_defaults(func=_info)


@_store_errors_as_user_errors
def _info(args: argparse.Namespace) -> int:
    from collect.store import EpisodeStore
    from collect.summary import format_summary, integrity_summary, store_summary
    from collect.verify import verify_store

    with EpisodeStore.open(args.store, mode="r") as store:
        summary = store_summary(store)
    # Every low-dim and metadata chunk is read and checked, and every image frame must exist (reading all image
    # files is `collect verify`'s job: it can take minutes on a large store).
    report = verify_store(args.store, images="presence")
    summary["integrity"] = integrity_summary(report)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        if not report.ok:
            print(report.text())
    return 0 if report.ok else 1


def _add_verify(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="read and check every chunk of a store; report damaged episodes (exit code 1 if any)",
        description="Read every saved chunk of the store: it must exist, match its CRC32C checksum (stores written "
                    "since checksums) and decode. Prints each damaged episode with the chunk and the problem, the "
                    "intact episodes, and what could not be checked (stores written before checksums). Exit code 0: "
                    "all intact; 1: damage found; 2: not a store.")
    verify.add_argument("store", help="episode store (a .zarr directory)")
    verify.add_argument("--decode", action="store_true", help="also decode every image frame (slower; the checksum "
                                                              "already proves the bytes are the ones written)")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.set_defaults(func=_verify)


@_store_errors_as_user_errors
def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from collect.store_access import check_is_store
    from collect.verify import verify_store

    check_is_store(Path(args.store))
    report = verify_store(args.store, images="decode" if args.decode else "checksum")
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.ok else 1


def _add_repair(commands: argparse._SubParsersAction) -> None:
    repair = commands.add_parser(
        "repair", help="keep the intact episodes of a damaged store; move the original aside (--quarantine)",
        description="Verify the store, copy its intact episodes into a new store (verified, with checksums) that "
                    "takes the store's name, and move the original directory, with the damaged episodes and a "
                    "repair_report.json, to a quarantine path beside it. Nothing is deleted. Refused while a "
                    "recorder has the store open.")
    repair.add_argument("store", help="episode store (a .zarr directory)")
    repair.add_argument("--quarantine", action="store_true",
                        help="required: set the damaged episodes aside (the only repair there is)")
    repair.add_argument("--to", default=None, help="quarantine path for the original store (default "
                                                   "<name>.quarantine-<UTC time>.zarr beside it)")
    repair.set_defaults(func=_repair)


@_store_errors_as_user_errors
def _repair(args: argparse.Namespace) -> int:
    from collect.repair import repair_store
    from fanvla.cli import UserError

    if not args.quarantine:
        raise UserError("repair needs --quarantine: it keeps the intact episodes and moves the original store, with "
                        "the damaged ones, aside (`fanvla collect verify STORE` only reports)")
    result = repair_store(args.store, args.to)
    print(result.report.text())
    print(result.text())
    return 0


def _add_view(commands: argparse._SubParsersAction) -> None:
    view = commands.add_parser("view", help="an episode as an MP4 with state/action overlay, and a PNG action plot")
    view.add_argument("store")
    view.add_argument("--episode", type=int, required=True, help="episode index (negative counts from the end)")
    view.add_argument("--out", required=True, help="output video, e.g. ep.mp4")
    view.add_argument("--plot", default=None, help="output plot (default: the video path with .png)")
    view.set_defaults(func=_view)


@_store_errors_as_user_errors
def _view(args: argparse.Namespace) -> int:
    from collect.store import EpisodeStore
    from collect.video import write_episode_video

    with EpisodeStore.open(args.store, mode="r") as store:
        written = write_episode_video(store, args.episode, args.out, args.plot)
    print(f"wrote {written['video']} ({written['frames']} frames) and {written['plot']}")
    return 0


def _add_merge(commands: argparse._SubParsersAction) -> None:
    merge = commands.add_parser("merge", help="copy the episodes of several compatible stores into a new store")
    merge.add_argument("out", help="the new store (must not exist)")
    merge.add_argument("stores", nargs="+", help="source stores, copied in this order")
    merge.set_defaults(func=_merge)


@_store_errors_as_user_errors
def _merge(args: argparse.Namespace) -> int:
    from collect.merge import merge_stores

    with merge_stores(args.out, args.stores) as out:
        print(f"wrote {out.path}: {out.num_episodes} episodes, {out.num_frames} frames from {len(args.stores)} stores")
    return 0


def _add_filter(commands: argparse._SubParsersAction) -> None:
    filter_ = commands.add_parser(
        "filter", help="recompute the no-op mask with other thresholds (raw data untouched)",
        description="Recompute the per-step no-op mask (collect/noop.py) of every episode. Thresholds default to "
                    "hardware.yaml recording.noop_joint_eps_deg / noop_gripper_eps. Only the mask is rewritten, "
                    "atomically: an interrupted filter leaves the old mask.")
    filter_.add_argument("store")
    eps = filter_.add_mutually_exclusive_group()
    eps.add_argument("--joint-eps-deg", type=float, default=None, help="joint motion below this is no motion (deg)")
    eps.add_argument("--joint-eps-rad", type=float, default=None, help="the same threshold in rad")
    filter_.add_argument("--gripper-eps", type=float, default=None,
                         help="gripper command changes up to this are no change (0..1)")
    add_config_argument(filter_)
    filter_.set_defaults(func=_filter)


@_store_errors_as_user_errors
def _filter(args: argparse.Namespace) -> int:
    from collect.merge import recompute_noop
    from collect.noop import NoopThresholds
    from robot.units import deg_to_rad

    needs_config = args.gripper_eps is None or (args.joint_eps_deg is None and args.joint_eps_rad is None)
    if needs_config:
        from fanvla.config import load_hardware_config

        defaults = NoopThresholds.from_config(load_hardware_config(args.config))
    if args.joint_eps_deg is not None:
        joint_eps_rad = deg_to_rad(args.joint_eps_deg)
    else:
        joint_eps_rad = args.joint_eps_rad if args.joint_eps_rad is not None else defaults.joint_eps_rad
    gripper_eps = args.gripper_eps if args.gripper_eps is not None else defaults.gripper_eps
    result = recompute_noop(args.store, NoopThresholds(joint_eps_rad, gripper_eps))
    share = 100.0 * result["noop_frames"] / result["frames"] if result["frames"] else 0.0
    print(f"{result['path']}: {result['noop_frames']} of {result['frames']} frames are no-ops ({share:.1f} %; "
          f"was {result['noop_frames_before']}) with joint_eps {joint_eps_rad:.4g} rad, gripper_eps {gripper_eps:g}")
    return 0


def _add_record(commands: argparse._SubParsersAction) -> None:
    record = commands.add_parser(
        "record", help="record demonstrations (teleop device or, in the twin, the scripted expert) into a store",
        description="Record episodes into an episode store at hardware.yaml recording.rate_hz. STORE is created, or "
                    "resumed when it exists (refused if it was recorded with another configuration). --episodes is "
                    "the number of episodes the store holds at the end, so re-running the same command after an "
                    "interruption records only what is missing. Objects cycle over scene.objects unless --object "
                    "is given (--episodes 150 with three objects = 50 per object).")
    record.add_argument("--backend", choices=("sim", "real"), required=True)
    record.add_argument("--teleop", choices=("keyboard", "spacemouse", "gamepad", "scripted"), required=True,
                        help="input device; scripted = the twin's scripted expert (sim only, non-interactive)")
    record.add_argument("--episodes", type=int, required=True, help="episodes the store should hold at the end")
    record.add_argument("--out", required=True, help="episode store (a .zarr directory), created or resumed")
    record.add_argument("--instruction", default=None, help="task text (default: scene.instruction_template)")
    record.add_argument("--object", default=None, help="record only this object of scene.objects")
    record.add_argument("--seed", type=int, default=0, help="scene and expert seed (sim)")
    record.add_argument("--resume", action="store_true", help="STORE must already exist (append to it)")
    record.add_argument("--keyboard", choices=("auto", "pynput", "terminal"), default="auto",
                        help="keyboard backend: pynput needs an X display; terminal reads raw keys (SSH, Wayland)")
    record.add_argument("--max-episode-s", type=float, default=None,
                        help="episode time limit (default 60 s scripted, 600 s teleop)")
    add_config_argument(record)
    record.set_defaults(func=_record)


@_store_errors_as_user_errors
def _record(args: argparse.Namespace) -> int:
    from pathlib import Path

    from collect.session import RecordingSession, SessionOptions
    from collect.teleop import TeleopUnavailableError
    from fanvla.cli import UserError
    from fanvla.config import load_hardware_config

    config = load_hardware_config(args.config)
    options = SessionOptions(backend=args.backend, teleop=args.teleop, episodes=args.episodes, store=Path(args.out),
                             instruction=args.instruction, object_name=args.object, seed=args.seed,
                             keyboard=args.keyboard, require_existing=args.resume, max_episode_s=args.max_episode_s)
    try:
        summary = RecordingSession(config, options).run()
    except TeleopUnavailableError as error:
        raise UserError(str(error)) from None
    print(summary.text())
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_info, _add_verify, _add_repair, _add_view, _add_merge, _add_filter, _add_record)


def register(subparsers: argparse._SubParsersAction) -> None:
    collect = subparsers.add_parser("collect", help="demonstration episode stores: record, info, verify, repair, "
                                                    "view, merge, filter")
    commands = collect.add_subparsers(dest="collect_command", metavar="COLLECT_COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(commands)
