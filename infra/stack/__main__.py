"""`python -m infra.stack up|status|down`: the command line behind `make stack`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra import stack as package
from infra.stack.compose import ROOT, STATE_FILE, StackError
from infra.stack.lifecycle import down, status, up
from infra.stack.state import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.stack", description=(package.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
    )
    parser.add_argument(
        "--prefect-setting",
        action="append",
        default=[],
        metavar="PREFECT_X=VALUE",
        help="an extra setting for the Prefect server and the workers (repeatable)",
    )
    parser.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        help="Prometheus' scrape and rule-evaluation interval (default: prometheus.yml's 15s)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="any free ports (tests) instead of compose's + 10000",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.command != "up" and not (args.dir / STATE_FILE).is_file():
        print(f"no stack in {args.dir}")
        return 0 if args.command == "down" else 1
    try:
        extra = dict(item.split("=", 1) for item in args.prefect_setting)
        stack = Stack.open(
            args.dir,
            free_ports=args.free_ports,
            prefect_settings=extra,
            scrape_interval=args.scrape_interval,
        )
        lines = {"up": up, "down": down, "status": status}[args.command](stack)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.command == "status":
        return 0 if all(line.split()[1] == "up" for line in lines) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
