"""Benchmark: start-up time of the ``mythos-lens`` command line (targets: ``--help`` < 0.5 s,
``tasks list`` < 1.5 s). Each command runs once to warm the file cache, then ``--runs`` times;
the figure is the median wall time of a whole process.

    python analyses/bench_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "tasks list": ["tasks", "list"]}
TARGETS = {"--help": 0.5, "tasks list": 1.5}


def entry_point() -> list[str]:
    """The installed ``mythos-lens`` script beside this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("mythos-lens")
    if script.is_file():
        return [str(script)]
    found = shutil.which("mythos-lens")
    return [found] if found else [sys.executable, "-m", "mythos_lens.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cmd = entry_point()
    for name, argv in COMMANDS.items():
        subprocess.run([*cmd, *argv], check=True, capture_output=True)  # warm-up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([*cmd, *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        ok = "meets" if med < TARGETS[name] else "MISSES"
        print(f"mythos-lens {name:10s}: median {med:.3f} s over {args.runs} runs "
              f"(min {min(times):.3f}, max {max(times):.3f}); {ok} the {TARGETS[name]} s target")  # fmt: skip


if __name__ == "__main__":
    main()
