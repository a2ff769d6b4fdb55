"""The `caeadmm` command line: one small module per subcommand.

Each module in SUBCOMMANDS exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed args and returning the exit code. Modules are imported
only when the CLI starts, so `caeadmm compress` never imports Ray.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from caeadmm.cli import flags

# (module under caeadmm.cli, present once the feature exists)
SUBCOMMANDS = ["compress", "decompress", "info", "models", "train", "eval", "compare"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caeadmm",
        description="CAE-ADMM sparse-latent learned image codec.",
    )
    flags.add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"caeadmm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"caeadmm.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    for command in sub.choices.values():  # `caeadmm compress --version` works too
        if "--version" not in command._option_string_actions:
            flags.add_version(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the exit
        return code
    except BrokenPipeError:  # the reader went away (`caeadmm models | head -2`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what the shell reports for a command that SIGPIPE stopped
    except KeyboardInterrupt:  # commands that count files report "N of M done" themselves
        print(f"caeadmm {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # a one-line failure, e.g. session.ClusterUnreachable
        if not isinstance(exc.code, str):
            raise
        print(f"caeadmm {args.command}: {exc.code}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
