"""What the agent's Python end-to-end tests share: named checks that print as they go, the exit status they add up
to, and the command line that names leanrotor, the scripted Lean server and the Lake fixture."""

import argparse
import sys

FAILURES = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        FAILURES.append(what)


def finish():
    """Exits 1 when a check failed, after saying how many."""
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


def arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("--leanrotor", required=True)
    parser.add_argument("--lean-server", required=True)
    parser.add_argument("--fixture", required=True)
    return parser.parse_args()
