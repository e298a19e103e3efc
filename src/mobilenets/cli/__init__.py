"""``mobilenets <command>``: a thin shell over the Python API.

Each command group lives in its own module with ``register(subparsers)``; a user error
(`MobilenetsError`) prints one line and exits with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import MobilenetsError

# Every public module under mobilenets.cli registers its subcommands; help lists them in this order.
_ORDER = ("models", "data", "weights", "tasks", "deploy", "train")


def command_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [m for m in _ORDER if m in found] + sorted(found - set(_ORDER))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one ``--help`` away) and help shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        from ._common import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())  # one line, whatever argparse (or a type) put in it
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = _Parser(
        prog="mobilenets",
        description="Google's MobileNet v1 family in PyTorch: official weights, evaluation, export, training.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in command_modules():
        importlib.import_module(f"{__name__}.{mod}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2), --help and --version (0): returned, so main() can be called in-process
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except MobilenetsError as e:
        print(f"mobilenets: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("mobilenets: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mobilenets table | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
