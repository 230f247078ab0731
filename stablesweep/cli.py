"""`stablesweep <command>`: thin. Parses, calls the library, prints.

Each command lives in a module with `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Bad input raises an `InputError` (ConfigError, DataError, SpaceError, ...: a
message that names the place); it is printed as `error: ...` and the exit status is 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from stablesweep import __version__
from stablesweep.signals import EXIT_INTERRUPTED, ray_start_broken, stop_status, stop_word, take_sigint, take_sigterm
from stablesweep.vocab import InputError

# command modules, in the order `--help` lists them
COMMANDS = (
    "stablesweep.commands.init",
    "stablesweep.commands.train",
    "stablesweep.commands.data",
    "stablesweep.commands.sweep",
    "stablesweep.commands.ramp",
    "stablesweep.commands.diagnose",
    "stablesweep.commands.compare",
    "stablesweep.commands.cluster",
    "stablesweep.commands.explain",
)

EPILOG = """\
Start here:
  stablesweep init data/mine                              # a starting config for your own datasets
  stablesweep data synth --out data/synth --scale 0.02   # a small multi-dataset as real files
  stablesweep train configs/demo.yaml                   # one guarded run, ends with a verdict
  stablesweep sweep configs/demo.yaml --space search_spaces/quick.yaml

Every command takes --help. Exit status: 0 ok, 1 findings or a diverged run, 2 bad input,
3 a stalled run (train), 74 a sweep whose output could not be written (resume it), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, handled as Ctrl-C; a sweep or ramp continues with --resume).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablesweep",
        description="Find where training is stable: guarded multi-dataset training, stability "
                    "sweeps with Ray Tune + Optuna, the stable region in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stablesweep {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings and INFO lines (Ray, Tune, MLflow, tensorboardX), "
                             "hidden by default; accepted after the command too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command not built yet
                continue
            raise
        mod.register(sub)
    _name_parsers(parser)
    return parser


def _name_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser records itself as the `_parser` default, so a bad flag is
    answered with the usage of the command it was given to, not the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.set_defaults(_parser=p)
                _name_parsers(p)


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """`--verbose` anywhere before a `--`: after the command as well as before it."""
    end = argv.index("--") if "--" in argv else len(argv)
    verbose = "--verbose" in argv[:end]
    return [a for i, a in enumerate(argv) if not (i < end and a == "--verbose")], verbose


def main(argv: list[str] | None = None) -> int:
    rc = _main(argv)
    if ray_start_broken():  # a stop cut ray.init short: the interpreter's teardown may crash (signals.py)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def run() -> None:
    """The command line (`stablesweep`, `python -m stablesweep`): `main()`, then the process ends
    without the interpreter's teardown of its modules, which after a command that loaded torch and
    Ray takes 1.5-2 s on the 2-core machine and does nothing a finished command needs. What the
    interpreter's exit does first is done: the threads that are not daemons are waited for, the
    exit handlers (MLflow's, Ray's, logging's) run, and the output is flushed."""
    import atexit
    import threading

    rc = main()
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`), a closed stream: nothing more to say
            pass
    os._exit(rc)


def _main(argv: list[str] | None) -> int:
    from stablesweep.quiet import quiet

    take_sigint()  # a Ctrl-C is one at any moment, even in a process started ignoring SIGINT
    take_sigterm()  # SIGTERM stops a run as Ctrl-C does (stablesweep.signals); exit 143
    parser = build_parser()
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    quiet(verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
        return stop_status() if rc == EXIT_INTERRUPTED else rc
    except KeyboardInterrupt:
        print(stop_word(), file=sys.stderr)
        return stop_status()
    except InputError as e:  # ConfigError, DataError, SpaceError, ...: bad input, named
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    run()
