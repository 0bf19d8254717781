"""The `ldsm` command line: one sub-command per flow.

The sub-commands' options are in :mod:`flows.cli_train`, :mod:`flows.cli_sample` and
:mod:`flows.cli_data`; none of them imports anything heavy: ``ldsm --help`` and
``ldsm CMD --help`` answer without loading torch, RDKit or Prefect. A command's own module
(``flows.<command>``, with ``run(args)`` and optionally ``check(args)``, ``saved_on_stop(args)``)
is imported only to run it. The defaults written there are the configs' own defaults
(``tests/test_cli.py`` holds them equal).

Around every command, :func:`main`:

- refuses bad options and files in one line (exit code 2), other failures in one line (exit
  code 1); ``--debug`` shows the traceback instead;
- chooses the Prefect API (``flows.api_server``: the configured one, a running local server, or
  a temporary server that dies with the command);
- turns SIGTERM into the same clean stop as Ctrl-C: one line saying what was saved, exit code
  130 (SIGINT) or 143 (SIGTERM), within seconds; Ctrl-C reaches a flow command even while
  RDKit runs in its threads (:mod:`flows.interrupt`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
from importlib import metadata

from flows.cli_data import add_ingest, add_screen
from flows.cli_options import HelpFormatter, Parser, join_expression_values
from flows.cli_sample import add_design, add_generate, add_serve, add_server
from flows.cli_train import add_demo, add_train

# Commands whose flows report to a Prefect API (demo is no flow; serve needs a real server).
FLOW_COMMANDS = {"ingest", "train", "generate", "screen", "design"}


def version() -> str:
    """The installed ``ldsm-design`` version (``unknown`` when run from an uninstalled copy)."""
    try:
        return metadata.version("ldsm-design")
    except metadata.PackageNotFoundError:
        return "unknown"


COMMANDS = {
    "demo": add_demo,
    "ingest": add_ingest,
    "train": add_train,
    "generate": add_generate,
    "screen": add_screen,
    "design": add_design,
    "serve": add_serve,
    "server": add_server,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``ldsm`` parser with every sub-command (nothing heavy imported)."""
    parser = Parser(
        prog="ldsm",
        description="Molecule and materials design with local denoising score matching.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"ldsm {version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS.values():
        add(sub)
    for name, command in sub.choices.items():
        command.formatter_class = HelpFormatter
        command.allow_abbrev = False
        command.prog = f"ldsm {name}"
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error",
        )
    return parser


def subcommand(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``ldsm COMMAND``."""
    return parser._subparsers._group_actions[0].choices[command]


def explicit_options(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> set[str]:
    """The ``dest`` of every option of ``command`` that ``argv`` gives (abbreviations are off)."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    return {a.dest for a in subcommand(parser, command)._actions if given & set(a.option_strings)}


class _Stop(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every command stops the same way."""


def _raise_stop(signum, frame):
    raise _Stop()


def _stop_line(args: argparse.Namespace, module) -> str:
    saved = getattr(module, "saved_on_stop", None)
    return saved(args) if saved is not None else "nothing was saved"


def main(argv: list[str] | None = None) -> int:
    """Run ``ldsm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = join_expression_values(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    args.explicit = explicit_options(parser, args.command, argv)
    prog = f"ldsm {args.command}"

    from flows import api_server, console, interrupt

    console.quiet_environment()
    env_before = os.environ.get("PREFECT_API_URL")
    server, saved_ui, module = None, False, None
    rank0 = int(os.environ.get("RANK", "0")) == 0
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with contextlib.ExitStack() as stack:
            if args.command in FLOW_COMMANDS:  # before any thread starts: they inherit it
                stack.enter_context(interrupt.ctrl_c_to_main_thread())
            if args.command in FLOW_COMMANDS and rank0 and getattr(args, "out", None):
                from flows import lock

                # The run owns its folder before anything starts (a one-line refusal, at once).
                stack.enter_context(lock.owned(time.strftime(args.out)))
            needs_api = args.command in FLOW_COMMANDS or args.command == "serve"
            if needs_api and rank0 and not api_in_process():
                # serve needs a server that outlives it: never a temporary one.
                url, server, note = api_server.choose_api(temporary=args.command != "serve")
                if note:
                    print(f"ldsm: {note}", file=sys.stderr)
                # Prefect reads its settings when imported: the URL goes in before the import.
                if url or server:
                    os.environ["PREFECT_API_URL"] = url or server.api_url
                if server is not None and "PREFECT_UI_URL" not in os.environ:
                    # No "View at http://127.0.0.1:PORT/..." line: a temporary server has no UI.
                    os.environ["PREFECT_UI_URL"] = ""
                    saved_ui = True
            module = importlib.import_module(f"flows.{args.command}")
            if hasattr(module, "check"):
                module.check(args)  # bad options and files: refused before waiting for a server
            if server is not None and server.wait() != os.environ["PREFECT_API_URL"]:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                # The retry moved the server to another port.
                stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
            console.quiet_libraries(args.debug)
            stack.enter_context(api_server.heartbeats_as_configured())
            return int(module.run(args) or 0)
    except KeyboardInterrupt as stop:
        name = "SIGTERM" if isinstance(stop, _Stop) else "Ctrl-C"
        line = f"{prog}: stopped by {name}; {_stop_line(args, module) if module else 'nothing was saved'}"
        print(line, file=sys.stderr, flush=True)
        code = 143 if isinstance(stop, _Stop) else 130
        if server is not None:
            api_server.drain_prefect(timeout=2)
            server.stop()
        sys.stdout.flush()
        # Worker threads may be in the middle of a chunk for minutes; what finished is saved.
        os._exit(code)
    except Exception as exc:
        if args.debug:
            raise
        code = 2 if _is_usage_error(exc) else 1
        what = "error" if code == 2 else f"error ({type(exc).__name__})"
        hint = "" if code == 2 else " (run with --debug for the traceback)"
        print(f"{prog}: {what}: {_one_line(exc)}{hint}", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            api_server.drain_prefect(timeout=10)
            server.stop()
        if saved_ui:
            os.environ.pop("PREFECT_UI_URL", None)
        if env_before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = env_before


def api_in_process() -> str | None:
    """The API of an already imported Prefect (a test harness, a caller's settings), if any."""
    settings = sys.modules.get("prefect.settings")
    return settings.PREFECT_API_URL.value() if settings is not None else None


def _is_usage_error(exc: Exception) -> bool:
    from flows.console import UsageError
    from flows.lock import FolderInUse

    if isinstance(exc, UsageError | FolderInUse):
        return True
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


def _one_line(exc: Exception) -> str:
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        # A validator's own message stands alone ("xtb_gap is computed by --xtb, ..."); a
        # field's message is prefixed by the field.
        return "; ".join(
            (".".join(map(str, e["loc"])) + ": " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
