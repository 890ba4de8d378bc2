"""Requests per second of ``python -m fastserver run`` for 1, 2, ... workers.

    prefork_bench.py [--workers 1,2] [--mode pingpong|perconn] [--conns N]
                     [--duration S] [--threads N] [--backend python|cython]

Starts the command with tests/scripts/prefork_app.py's Echo handler, drives
it with bench's C load generator (bench/_build/loadgen-*, built by
``python -m bench``) and prints one line per worker count. The load
generator runs on the same machine: it takes CPU time from the workers, so
on a small machine the figures understate what more workers buy.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from supervised import Supervised, roundtrip  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_loadgen() -> str:
    found = sorted(glob.glob(os.path.join(ROOT, "bench", "_build", "loadgen-*")),
                   key=os.path.getmtime)
    if not found:
        sys.exit("no bench/_build/loadgen-*: run `python -m bench --quick` first")
    return found[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--mode", default="pingpong", choices=["pingpong", "perconn"])
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--backend", default=None, choices=["python", "cython"])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    loadgen = find_loadgen()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    if args.backend == "python":
        env["FASTSERVER_NO_EXTENSIONS"] = "1"
    elif args.backend == "cython":
        env.pop("FASTSERVER_NO_EXTENSIONS", None)
    handler = "prefork_app:Echo"
    for workers in [int(w) for w in args.workers.split(",")]:
        options = [handler, "--bind", "127.0.0.1:0", "--workers", str(workers),
                   "--log-level", "info"]
        if args.threads:
            options += ["--threads", str(args.threads)]
        for _ in range(args.repeat):
            with Supervised.command(options, env) as sup:
                family, address = sup.address()
                sup.wait_workers(workers)
                roundtrip(family, address)
                backend = "cython" if "cython backend" in sup.log else "python"
                result = subprocess.run(
                    [loadgen, "--mode", args.mode, "--host", address[0],
                     "--port", str(address[1]), "--conns", str(args.conns),
                     "--duration", str(args.duration), "--warmup", "1"],
                    capture_output=True, text=True, timeout=args.duration + 60)
                sup.send_signal(signal.SIGTERM)
                sup.wait(30)
            data = json.loads(result.stdout.strip().splitlines()[-1])
            print("workers=%d backend=%s mode=%s conns=%d: %.0f req/s "
                  "(p50 %s us, p99 %s us, errors %d, valid %s)"
                  % (workers, backend, args.mode, args.conns, data["rate"],
                     data["p50_us"], data["p99_us"], data["errors"],
                     data["valid"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
