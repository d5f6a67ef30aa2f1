"""The one entry point: ``fanvla <command> ...``; each package contributes its own subcommands.

Every package's ``cli.py`` exposes ``register(subparsers)`` and imports its heavy dependencies
(torch, mujoco, pyrealsense2) inside the command handlers, so ``fanvla --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fanvla import __version__

# Order = order in `fanvla --help`.
COMMAND_MODULES = (
    "robot.cli",
    "collect.cli",
    "policy.cli",
    "policy.serve_cli",
    "finetune.cli",
    "eval_protocols.cli",
    "fanvla.demo",
    "fanvla.sweep",
    "fanvla.rl",
)


class UserError(Exception):
    """An error caused by the user's input: printed as one clear message, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fanvla", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fanvla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's start-up chatter
    from fanvla.config import ConfigError
    from robot.errors import RobotError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as error:
        print(f"fanvla: error: {error}", file=sys.stderr)
        return 2
    except RobotError as error:
        print(f"fanvla: {type(error).__name__}: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fanvla: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
