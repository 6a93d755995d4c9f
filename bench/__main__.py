"""Run the benchmarks: ``python -m bench [--smoke] [NAME ...]`` (all of them by default).

Each runs in a process of its own, one after the other, and prints its figures and its
``ratio`` lines (see BENCHMARKS.md). The exit status is non-zero when a benchmark failed
to run; a missed goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from ._support import ROOT, machine

BENCHMARKS = ("fast_path", "release_latency", "startup_storm", "fleet_scale",
              "lease_throughput", "memory", "rolling_deploy", "parser", "forged_fleet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", "--tiny", dest="smoke", action="store_true",
                        help="run each very small: checks that it works, measures nothing")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="benchmarks to run, of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    print(f"machine: {machine()}", flush=True)
    failed = []
    for name in args.names or BENCHMARKS:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}",
                               *(["--smoke"] if args.smoke else [])], cwd=ROOT, check=False)
        print(f"   ({name}: {time.monotonic() - started:.0f} s)", flush=True)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
