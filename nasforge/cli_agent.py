"""``nasforge agent serve`` and ``nasforge agent token`` (see :mod:`nasforge.cli`).

Runs on the board: neither this module nor the agent imports PyTorch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nasforge.cli_args import finite_float, int_between, positive_float

__all__ = ["add_commands"]

_MIB = 1024 * 1024


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``agent serve`` and ``agent token`` to the ``nasforge`` subcommands ``sub``."""
    agent = sub.add_parser("agent", parents=[common], help="the profiling agent that runs on a board",
                           description="Serve latency measurements of uploaded ONNX files (on the board), or "
                                       "create its token file.")
    actions = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    _add_serve(actions, common)
    token = actions.add_parser("token", parents=[common], help="write a new random token file (mode 600)")
    token.add_argument("--out", type=Path, required=True, help="token file to create")
    token.add_argument("--force", action="store_true", help="replace an existing file")
    token.set_defaults(func=_cmd_token)
    agent.set_defaults(func=lambda args: _usage(agent))


def _add_serve(actions: Any, common: argparse.ArgumentParser) -> None:
    serve = actions.add_parser(
        "serve", parents=[common], help="run the agent (loopback only; reach it through ssh -L)",
        description="Measure ONNX files POSTed with the token of --token-file, one at a time, each in a child "
                    "process. Listens on 127.0.0.1; reach it from another machine through an SSH tunnel: "
                    "ssh -L 8765:127.0.0.1:8765 BOARD. Another --host needs --allow-remote.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; a non-loopback one needs --allow-remote)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="let --host be a non-loopback address (unencrypted HTTP: the token travels in clear)")
    serve.add_argument("--port", type=int_between(0, 65535), default=8765,
                       help="TCP port (default 8765; 0 picks a free one)")
    serve.add_argument("--token-file", type=Path, required=True,
                       help="file holding the shared token (mode 600; see `nasforge agent token`)")
    serve.add_argument("--max-mb", type=finite_float(above=0.0, hint="a size in MiB"), default=64.0,
                       help="largest accepted upload in MiB (default 64)")
    serve.add_argument("--timeout", type=positive_float, default=300.0,
                       help="seconds one measurement may take (default 300)")
    serve.add_argument("--read-timeout", type=positive_float, default=10.0,
                       help="an upload must arrive within max(this, 1 s per MiB) seconds (default 10); a "
                            "slower client gets 408 and frees the one job slot")
    serve.add_argument("--cache-dir", type=Path, help="also keep results here across restarts")
    serve.set_defaults(func=_cmd_serve)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cmd_serve(args: argparse.Namespace) -> int:
    from nasforge.export import AgentConfig, read_token_file, serve

    config = AgentConfig(token=read_token_file(args.token_file), host=args.host, port=args.port,
                         allow_remote=args.allow_remote, max_bytes=max(1, int(args.max_mb * _MIB)),
                         timeout_s=args.timeout, read_timeout_s=args.read_timeout, cache_dir=args.cache_dir)
    serve(config)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from nasforge.export import write_token_file

    path = write_token_file(args.out, overwrite=args.force)
    print(f"wrote a new token to {path} (mode 600); copy it to the client, then: nasforge agent serve "
          f"--token-file {path}")
    return 0
