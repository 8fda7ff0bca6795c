"""`python -m bench [NAME ...]`: runs the named benchmarks (default: all) in turn."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("dispatch", "trading", "fanout", "events", "events_agent")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== bench.{name} ===", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
