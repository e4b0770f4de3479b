"""The ``ghostmesh`` command: ``main(argv, env) -> ExitStatus`` (the httpie pattern).

Each subcommand lives in its own module in this package and exposes ``register(subparsers)``, which
adds its parser and sets ``handler=`` to a function ``(args, env) -> ExitStatus``. Exceptions are
mapped to exit codes in one place, here; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .. import __version__
from ..errors import ConfigError, GhostMeshError, ModelUnavailable, UsageError
from .env import Env, ExitStatus

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ["protect", "verify", "models", "service", "run", "control", "batch"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` owns every exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ghostmesh", description="Protect photos from AI identity matching.")
    parser.add_argument("--version", action="version", version=f"ghostmesh {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> ExitStatus:
    env = env or Env.from_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "handler", None):
            env.stderr.write("ghostmesh: a command is needed (see ghostmesh --help)\n")
            return ExitStatus.USAGE
        return ExitStatus(args.handler(args, env))
    except UsageError as e:
        env.stderr.write(f"{e}\n")
        return ExitStatus.USAGE
    except (ConfigError, ModelUnavailable) as e:
        if debug:
            raise
        env.stderr.write(f"ghostmesh: {e}\n")
        return ExitStatus.USAGE
    except GhostMeshError as e:
        if debug:
            raise
        env.stderr.write(f"ghostmesh: {e}\n")
        return ExitStatus.ERROR
    except KeyboardInterrupt:
        env.stderr.write("ghostmesh: interrupted\n")
        return ExitStatus.ERROR


def entry_point() -> None:
    """Console-script entry: ``ghostmesh``."""
    sys.exit(int(main()))
