"""The ``detcon`` command.

Each subcommand parses its arguments, calls one library function and turns library errors
(``ConfigError``, ``ValueError``, ``FileNotFoundError``, ...) into a one-paragraph message and a
non-zero exit code. No logic lives here.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

# Errors that mean "bad input": reported as one paragraph, exit code 2. BlockingIOError: a run
# directory in use by another process (detcon.runs.PointBusyError); FloatingPointError: a
# non-finite loss (detcon.train.NonFiniteLossError); ChildProcessError: sbatch or squeue failed.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    KeyError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    BlockingIOError,
    FloatingPointError,
    ChildProcessError,
)
# A full disk is no bug either (detcon.atomic.DiskFullError names the file).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, _USER_ERRORS) or (isinstance(exc, OSError) and exc.errno in _DISK_FULL)


def path_arg(text: str) -> Path:
    """An argparse ``type`` for paths: an empty one (``--out "$RUN"`` with RUN unset) is refused
    instead of read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: expected a file or folder name")
    return Path(text)


def whole_number_arg(what: str) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number >= 0; an error names the value and ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    return parse


_step_count = whole_number_arg("a step count, a whole number >= 0")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from detcon.config import ConfigError, load_pretrain_config, load_yaml, merge, parse_dotted
    from detcon.train import pretrain

    overrides = load_yaml(args.config) if args.config else {}
    sets = parse_dotted(args.set or [])
    if "profile" in sets:  # evaluate's default tasks follow it: chosen, not overridden
        raise ConfigError(
            f"--set profile={sets['profile']}: choose the profile with --profile (a --config "
            "file's own profile is kept)"
        )
    overrides = merge(overrides, sets)
    cfg = load_pretrain_config(overrides, profile=args.profile)
    result = pretrain(
        cfg,
        args.out,
        progress=None if not args.quiet else False,
        stop_after=args.stop_after,
        lock=True,  # one writer per run directory
    )
    steps = f"{result.steps} steps in"
    if result.resumed_from and result.steps <= result.resumed_from:
        steps = f"{result.steps} steps (already done: nothing trained in this run) in"
    elif result.resumed_from:  # the time is every run's: the checkpoint carries it
        ran = result.steps - result.resumed_from
        steps = (
            f"steps {result.resumed_from + 1}-{result.steps} (resumed; {ran} in this run), "
            f"{result.steps} in"
        )
    print(
        f"pretrained {cfg.method} ({cfg.masks.source} masks) for {steps} "
        f"{result.wall_s:.1f} s ({result.images_per_s:.1f} img/s); final loss "
        f"{result.final_loss:.4f}; run directory {args.out}"
    )
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from detcon.config import PretrainConfig, describe_fields, load_pretrain_config, to_dict

    if args.explain:
        for name, help_text in describe_fields(PretrainConfig):
            print(f"{name}: {help_text}")
        return 0
    cfg = load_pretrain_config({}, profile=args.profile)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detcon",
        description="DetCon ablation lab: pretrain, run ablation grids, report figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "pretrain",
        help="pretrain one configuration into a run directory (resumes from its checkpoint)",
    )
    p.add_argument("--config", type=path_arg, help="YAML file of config overrides")
    p.add_argument(
        "--profile",
        choices=["cpu", "paper"],
        default="cpu",
        help="defaults to start from (default: cpu)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field, e.g. --set method=detcon_s --set optim.epochs=4 (SimCLR and BYOL "
        "also need --set masks.source=image --set masks.num_samples=1)",
    )
    p.add_argument("--out", type=path_arg, required=True, help="run directory")
    p.add_argument(
        "--stop-after",
        type=_step_count,
        default=None,
        help="stop with a checkpoint after this many steps (the schedule still spans "
        "the whole run); rerun without it to resume",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("config", help="print the resolved config of a profile, or explain fields")
    p.add_argument("--profile", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--explain", action="store_true", help="list every field with its meaning")
    p.set_defaults(func=_cmd_config)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add subcommands (grid launcher, reports, mask tools, evaluation) through
# functions with the signature ``register(subparsers) -> None``.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extra_commands() -> None:
    import importlib

    for name in (
        "detcon.launch",
        "detcon.report",
        "detcon.claims",
        "detcon.export",
        "detcon.masks.cli",
        "detcon.evaluate.cli",
        "detcon.official",
    ):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet
            raise
        register = getattr(module, "register_cli", None)
        if register is not None and register not in _EXTRA_COMMANDS:
            _EXTRA_COMMANDS.append(register)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit) raised in the main thread as an interrupt,
    so that a command stops as on Ctrl-C: its ``finally`` blocks run, worker processes are
    stopped, one line is printed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    words = list(sys.argv[1:] if argv is None else argv)
    command = words[0] if words else ""
    try:
        return _main(words)
    except KeyboardInterrupt as exc:  # also while the commands are imported (seconds)
        # a command may say what it kept and how to go on (detcon.train.pretrain)
        kept = f". {exc.args[0]}" if exc.args else ""
        if isinstance(exc, Terminated):
            print(f"detcon {command}: terminated (SIGTERM){kept}", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"detcon {command}: interrupted{kept}", file=sys.stderr)
        return 130
    finally:
        if main_thread:  # None: a handler not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main(argv: list[str]) -> int:
    _load_extra_commands()
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`detcon run --dry-run | head`): not an error of ours; stdout is
        # pointed at devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        msg = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0])
        # One paragraph, not hard-wrapped: a wrap would split paths and URLs (and where it falls
        # would depend on their length); terminals and log viewers wrap it for display.
        print(f"detcon {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
