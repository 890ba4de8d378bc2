"""Two cProfile dumps side by side, function by function.

    python -m bench.compare_profiles PROF/pingpong-pure.prof PROF/pingpong-cython.prof [--top 25]

Rows are sorted by the larger of the two internal times (tottime); a function
missing from one side (for example one the Cython build compiled away) shows
"-" there.
"""
from __future__ import annotations

import argparse
import os
import pstats
import sys
from typing import Dict, Tuple

Key = Tuple[str, int, str]
Row = Tuple[int, float, float]  # calls, tottime, cumtime


def load(path: str) -> Dict[Key, Row]:
    stats = pstats.Stats(path)
    table = stats.stats  # type: ignore[attr-defined]
    return {key: (nc, tt, ct) for key, (cc, nc, tt, ct, callers) in table.items()}


def label(key: Key) -> str:
    filename, line, func = key
    if filename == "~":
        return func  # a builtin, already shown as {method ...}
    return f"{os.path.basename(filename)}:{line}({func})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_profiles", description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    a, b = load(args.a), load(args.b)
    keys = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, (0, 0.0, 0.0))[1], b.get(k, (0, 0.0, 0.0))[1]))
    name_a, name_b = os.path.basename(args.a), os.path.basename(args.b)
    print(f"{'calls A':>9} {'tottime A':>10} {'calls B':>9} {'tottime B':>10}  function   (A={name_a}, B={name_b})")
    for key in keys[: args.top]:
        cells = []
        for side in (a, b):
            row = side.get(key)
            cells += [f"{row[0]:>9,}", f"{row[1]:>10.4f}"] if row else [f"{'-':>9}", f"{'-':>10}"]
        print(" ".join(cells) + "  " + label(key))
    total_a = sum(r[1] for r in a.values())
    total_b = sum(r[1] for r in b.values())
    print(f"{'':>9} {total_a:>10.4f} {'':>9} {total_b:>10.4f}  total internal time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
