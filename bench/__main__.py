"""`python -m bench [--quick] [NAME ...]`: runs the named benchmarks (default: all) in turn;
`--quick` runs each in its quick form (fewer rounds; fan-out: one size, no strategies)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("dispatch", "trading", "fanout", "events", "events_agent")
QUICK = {"fanout": ["--sizes", "1000", "--seconds", "3", "--skip-strategies"]}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [name for name in argv if name != "--quick"] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; one of {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== bench.{name}{' (quick)' if quick else ''} ===", flush=True)
        # Each its own arguments, not this command's (a benchmark's name is none of its).
        module.main(QUICK.get(name, ["--quick"]) if quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
