"""What the ``segment`` and ``escnet-evaluate`` command lines share: the one-line usage error, the
server options, and the run that turns a failure into its exit code and one line on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from escnet_client.wire import DEFAULT_MODEL, DEFAULT_PORTS, DEFAULT_TIMEOUT_S, PROTOCOLS
from escnet_export.contract import DEFAULT_VARIANTS

EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class CliError(Exception):
    """A failure with its exit code and one-line reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (pointing at --help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_server_arguments(target: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--url, --protocol, --model, --timeout and --wait: which server, ensemble and patience."""
    target.add_argument(
        "--url",
        default=None,
        help=f"server host:port (default 127.0.0.1:{DEFAULT_PORTS['http']} for HTTP, "
        f"127.0.0.1:{DEFAULT_PORTS['grpc']} for gRPC)",
    )
    target.add_argument("--protocol", choices=PROTOCOLS, default="http")
    target.add_argument("--model", choices=list(DEFAULT_VARIANTS), default=DEFAULT_MODEL, help="ensemble")
    target.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for one request",
    )
    target.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for the server to be ready"
    )


def run_command(
    prog: str,
    run: Callable[[Any], int],
    args: Any,
    explain: Callable[[Exception], CliError | None] = lambda error: None,
) -> int:
    """``run(args)``'s exit code; a CliError, or a failure ``explain`` turns into one, prints
    ``PROG: error: REASON`` on stderr and returns its code; Ctrl-C returns 130. Other failures
    propagate."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        failure = error if isinstance(error, CliError) else explain(error)
        if failure is None:
            raise
        print(f"{prog}: error: {failure.reason}", file=sys.stderr)
        return failure.code
