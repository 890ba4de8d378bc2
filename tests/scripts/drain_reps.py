"""Repeat the SIGTERM-under-load drain scenario and count lost clients.

    drain_reps.py REPETITIONS [python|cython] [HANDLER] [WORKERS]

Each repetition starts prefork_app.py (ThreadingTCPServer, 16 clients that
connect / send one line / read the echo / close in a loop), sends SIGTERM
0.5 s into the load and counts outcomes. Prints one line per repetition
and a total; exits 1 if any client whose connect succeeded lost its answer
or if the supervisor did not exit 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from supervised import DrainLoad, Supervised, roundtrip  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    backend = sys.argv[2] if len(sys.argv) > 2 else "python"
    handler = sys.argv[3] if len(sys.argv) > 3 else "SlowEcho"
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    if backend == "python":
        env["FASTSERVER_NO_EXTENSIONS"] = "1"
    else:
        env.pop("FASTSERVER_NO_EXTENSIONS", None)
    totals = {"ok": 0, "refused": 0, "lost": 0}
    bad_exits = 0
    for rep in range(reps):
        with Supervised.app(handler, "ThreadingTCPServer", workers, 10, env) as sup:
            family, address = sup.address()
            roundtrip(family, address)
            load = DrainLoad(family, address).start()
            time.sleep(0.5)
            sup.send_signal(signal.SIGTERM)
            status = sup.wait(30)
            counts = load.join(15)
            bad_exits += status != 0
            for key in totals:
                totals[key] += counts[key]
            print("rep %d: exit %d %s %s" % (rep, status, counts,
                                             load.errors[:3]), flush=True)
    print("total over %d repetitions: %s, bad exits %d"
          % (reps, totals, bad_exits))
    return 1 if totals["lost"] or bad_exits else 0


if __name__ == "__main__":
    sys.exit(main())
