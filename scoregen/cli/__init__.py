"""The `scoregen` command line. Each subcommand lives in its own module of this package with

    HELP = "one line"
    def add_arguments(parser): ...
    def run(args) -> int | None

and is listed in COMMANDS; `EXAMPLES`, a list of command lines, becomes the epilog of its --help
(every one is run by tests/test_help_examples.py). Nothing in the library imports this package.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

COMMANDS = ["demo", "train", "distill", "sample", "likelihood", "export", "compare", "evaluate", "inpaint", "restore", "edit"]


def _available():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"scoregen.cli.{name}")
        except ModuleNotFoundError as e:  # a command not built yet
            if e.name != f"scoregen.cli.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    from scoregen import __version__

    parser = argparse.ArgumentParser(prog="scoregen", description="Score-based generative modeling: train, sample, "
                                     "measure likelihood and steer score models.")
    parser.add_argument("--version", action="version", version=f"scoregen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available():
        from .common import epilog

        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, epilog=epilog(getattr(mod, "EXAMPLES", ())),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


#: the positional KEY=VALUE lists of the commands (train/demo: config overrides, commands that sample:
#: sampler options); both are parsed by config.parse_value
KEY_VALUE_DESTS = ("overrides", "options")


def _intermix_key_values(parser, args, extra):
    """KEY=VALUE arguments given after an option (`--no-progress train.lr=1e-3`) join the command's list.

    argparse hands a positional list only the arguments before the first option; the rest would be
    'unrecognized'. Anything else left over is still an error.
    """
    dest = next((d for d in KEY_VALUE_DESTS if isinstance(getattr(args, d, None), list)), None)
    bad = [a for a in extra if dest is None or a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        getattr(args, dest).extend(extra)


_KEY_VALUE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def _lift_key_values(parser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv less its KEY=VALUE arguments, those arguments): taken out before parsing, so that a list
    option before them (`--nfe 20 100 churn=40`, `--samplers heun churn=40`) cannot swallow them; the
    value of a one-value option (`--data a=b.csv`) stays put."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = next((a for a in argv if not a.startswith("-")), None)
    if sub is None or command not in sub.choices:
        return argv, []
    p = sub.choices[command]
    if not any(a.dest in KEY_VALUE_DESTS for a in p._actions):
        return argv, []
    single = {o for a in p._actions if a.nargs is None and a.option_strings for o in a.option_strings}
    keep, lifted = [], []
    for i, a in enumerate(argv):
        takes_it = i > 0 and argv[i - 1] in single
        (lifted if _KEY_VALUE.match(a) and not takes_it else keep).append(a)
    return keep, lifted


def main(argv=None) -> int:
    parser = build_parser()
    argv, lifted = _lift_key_values(parser, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    extra = lifted + extra
    _intermix_key_values(parser, args, extra)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # bad input: one clear line, no traceback from deep inside torch
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"scoregen {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
