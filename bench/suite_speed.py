"""Wall time of the unit suite and of the local end-to-end suite, each run as .ci/test runs it.

Usage, from the repository root:

    .venv/bin/python bench/suite_speed.py [--repeat N] [--suite unit|unit-serial|e2e]
        [-- EXTRA PYTEST ARGS]

Each suite runs in a subprocess exactly as a user would run it: `unit` as
`pytest -m unit -n 4 --dist loadfile` (pytest-xdist, as .ci/test does), `unit-serial` as
plain `pytest -m unit`, `e2e` as `pytest -m e2e` (it starts and stops its sandbox). They
run one after the other, never in parallel: they share the machine's two cores with
everything else. The table shows each run's wall time, the best and the budget (30 s for the
unit suite, 60 s for the local e2e suite, sandbox start and stop included). Default: `unit`
and `e2e`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = {"unit": 30.0, "unit-serial": 30.0, "e2e": 60.0}
SELECTIONS = {"unit": ["-m", "unit", "-n", "4", "--dist", "loadfile"],
              "unit-serial": ["-m", "unit"], "e2e": ["-m", "e2e"]}


@dataclass(frozen=True)
class Run:
    """One pytest run: which suite, how long it took, its exit status, summary and failures."""

    suite: str
    seconds: float
    status: int
    summary: str
    failures: tuple[str, ...]


def run_suite(suite: str, extra: list[str]) -> Run:
    """Run the SUITE's pytest command (SELECTIONS) from the repository root and time it."""
    command = [sys.executable, "-m", "pytest", *SELECTIONS[suite], "-q", "-p",
               "no:cacheprovider", *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    failures = tuple(line for line in lines if line.startswith(("FAILED ", "ERROR ")))
    if done.returncode != 0:
        # Keep the whole output of a failed run: a failure under load may not come back.
        kept = Path(tempfile.mkdtemp(prefix="suite-speed-")) / f"{suite}.log"
        kept.write_bytes(done.stdout)
        failures += (f"full output: {kept}",)
    return Run(suite, seconds, done.returncode, lines[-1] if lines else "(no output)", failures)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per suite (default 1)")
    parser.add_argument("--suite", action="append", choices=sorted(BUDGETS),
                        help="only this suite (repeatable; default both)")
    parser.add_argument("extra", nargs="*", help="extra pytest arguments, after --")
    arguments = parser.parse_args(argv)
    if arguments.repeat < 1:
        parser.error(f"--repeat {arguments.repeat}: expected 1 or more")
    return arguments


def main(argv: list[str]) -> int:
    arguments = _arguments(argv)
    suites = arguments.suite or ["unit", "e2e"]
    runs = [run_suite(suite, arguments.extra)
            for _ in range(arguments.repeat) for suite in suites]
    print(f"{'suite':<6} {'wall s':>8}  {'status':>6}  pytest summary")
    for run in runs:
        print(f"{run.suite:<6} {run.seconds:8.1f}  {run.status:>6}  {run.summary}")
        for failure in run.failures:
            print(f"{'':<18}{failure}")
    print()
    failed = False
    for suite in suites:
        times = [run.seconds for run in runs if run.suite == suite]
        statuses = {run.status for run in runs if run.suite == suite}
        verdict = "within" if max(times) <= BUDGETS[suite] else "OVER"
        failed |= verdict == "OVER" or statuses != {0}
        print(f"{suite}: best {min(times):.1f} s, median {statistics.median(times):.1f} s, "
              f"worst {max(times):.1f} s; {verdict} the {BUDGETS[suite]:.0f} s budget")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
