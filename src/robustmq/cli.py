"""The `robustmq` command: start a node, run benchmarks."""

from __future__ import annotations

import argparse
import sys

from robustmq import __version__


def _start(args: argparse.Namespace) -> int:
    """Run the node in the foreground under twistd (logs to stdout by default)."""
    from twisted.scripts.twistd import ServerOptions, _SomeApplicationRunner

    from robustmq.config import ConfigError, loadSettings
    from robustmq.startup import ListenError

    try:
        loadSettings(args.config)
    except ConfigError as e:
        print(f"robustmq: configuration error: {e}", file=sys.stderr)
        return 2
    argv = ["--nodaemon", "--pidfile=", "--logger=robustmq.logs.observer"]
    if args.reactor:
        argv.append(f"--reactor={args.reactor}")
    argv.append("robustmq")
    if args.config:
        argv += ["--config", args.config]
    config = ServerOptions()
    config.parseOptions(argv)
    # twistd's runApp re-raises SIGTERM/SIGINT after a clean shutdown (exit
    # status 128+n); `robustmq start` reports a clean stop as 0 instead.
    try:
        _SomeApplicationRunner(config).run()
    except ListenError as e:
        # twistd has sent sys.stderr to the log by now: write to the real one.
        print(f"robustmq: {e}", file=sys.__stderr__ or sys.stderr)
        return 1
    return 0


def _bench(argv: list[str]) -> int:
    from robustmq.bench import main as benchMain

    return benchMain(argv)


def _cert(args: argparse.Namespace) -> int:
    """Write a self-signed test CA, server and client certificate (docs/transports.md)."""
    from robustmq.transports.testcerts import generateTestCertificates

    hosts = tuple(args.host) if args.host else ("localhost", "127.0.0.1", "::1")
    paths = generateTestCertificates(args.dir, hosts, args.client_name, days=args.days)
    for name, path in paths.items():
        print(f"{name:<11} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `robustmq` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    if argv and argv[0] == "ctl":
        from robustmq.ctl import main as ctlMain

        return ctlMain(argv[1:])
    parser = argparse.ArgumentParser(prog="robustmq", description="RobustMQ message broker")
    parser.add_argument("--version", action="version", version=f"robustmq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run a node in the foreground")
    start.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    start.add_argument("--reactor", help="twisted reactor name (default: the platform's best)")
    sub.add_parser("bench", help="load generator: robustmq bench --help")
    sub.add_parser("ctl", help="admin API client: robustmq ctl --help")
    cert = sub.add_parser("cert", help="write a self-signed test CA, server and client certificate")
    cert.add_argument("--dir", default="etc/certs", help="output directory (default: etc/certs)")
    cert.add_argument(
        "--host",
        action="append",
        help="name or IP the server certificate is valid for (repeatable; "
        "default: localhost, 127.0.0.1, ::1)",
    )
    cert.add_argument("--client-name", default="robustmq-client", help="client certificate CN")
    cert.add_argument("--days", type=int, default=365, help="validity in days")
    args = parser.parse_args(argv)
    if args.command == "start":
        return _start(args)
    if args.command == "cert":
        return _cert(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
