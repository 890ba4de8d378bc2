"""python -m bench: fastserver (cython, pure) vs stdlib socketserver vs two C echo servers.

Run from the checkout root.  See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import build, instructions, machine, report, tls
from .runner import REPO_ROOT, Outcome, RunConfig, machine_busy_seconds, run_once
from .workloads import (
    C_IMPLS,
    IMPLS,
    OPTIONAL_WORKLOADS,
    PYTHON_IMPLS,
    WORKLOADS,
    Workload,
    customized,
    family_of_server_class,
)

QUICK = {"reps": 2, "duration": 0.6, "warmup": 0.2}
FULL = {"reps": 5, "duration": 2.0, "warmup": 0.5}
DEFAULT_WORKLOAD_FOR_FAMILY = {"tcp": "pingpong", "udp": "udp", "unix": "unix"}


def comma_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark fastserver against the stdlib socketserver and two C echo servers"
        " (epoll; thread per connection).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['reps']} reps x {QUICK['duration']} s after {QUICK['warmup']} s warm-up (under 2 minutes in all)",
    )
    p.add_argument(
        "--workload",
        action="append",
        metavar="NAME[,NAME]",
        help=f"one of {', '.join(WORKLOADS)} (default: all of them), or {', '.join(OPTIONAL_WORKLOADS)}",
    )
    p.add_argument("--impl", action="append", metavar="NAME[,NAME]", help=f"one of {', '.join(IMPLS)}")
    p.add_argument(
        "--reps",
        type=int,
        help=f"repetitions per impl (default {FULL['reps']}, quick {QUICK['reps']}; 0 with --instructions: no timed runs)",
    )
    p.add_argument("--duration", type=float, help=f"measured seconds per run (default {FULL['duration']})")
    p.add_argument("--warmup", type=float, help=f"unmeasured seconds before each run (default {FULL['warmup']})")
    p.add_argument("--json", metavar="FILE", help="write every run and summary as JSON")
    p.add_argument("--png", metavar="FILE", help="bar chart (needs matplotlib)")
    p.add_argument("--markdown", metavar="FILE", help="the tables as markdown")
    p.add_argument("--handler", metavar="MODULE:CLASS", help="benchmark your own handler instead of the echo ones")
    p.add_argument("--server", metavar="CLASS", help="socketserver class for --handler, e.g. ThreadingTCPServer")
    p.add_argument(
        "--verify-echo", action="store_true", help="with --handler: it echoes, so check replies byte for byte"
    )
    p.add_argument("--profile", metavar="DIR", help="run Python servers under cProfile: DIR/<workload>-<impl>.prof")
    p.add_argument(
        "--retry-busy",
        type=int,
        default=0,
        metavar="N",
        help="repeat a run up to N times while other processes used the CPUs during it",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="also count the server's instructions per request (perf, else valgrind): two more runs per row,"
        " minutes under valgrind",
    )
    p.add_argument(
        "--instructions-requests",
        type=int,
        metavar="N",
        help="with --instructions: requests answered in the shorter counted run (the longer one answers 3 N;"
        " bulk: 64 KiB writes); default sized per workload",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter for the Python servers (%(default)s)")
    args = p.parse_args(argv)

    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.reps < (0 if args.instructions else 1) or args.duration <= 0 or args.warmup < 0:
        p.error("--reps must be >= 1 (0 with --instructions: counts only), --duration > 0, --warmup >= 0")
    if args.instructions_requests is not None and (args.instructions_requests < 1 or not args.instructions):
        p.error("--instructions-requests takes a count >= 1, and goes with --instructions")
    impls = comma_list(args.impl) or (list(PYTHON_IMPLS) if args.handler else list(IMPLS))
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        p.error(f"unknown impl(s) {', '.join(unknown)}; choose from {', '.join(IMPLS)}")
    args.impls = list(dict.fromkeys(impls))

    if args.handler and ":" not in args.handler:
        p.error("--handler must look like module:Class")
    try:
        names = comma_list(args.workload)
        if not names and (args.handler or args.server):
            names = [DEFAULT_WORKLOAD_FOR_FAMILY[family_of_server_class(args.server or "ThreadingTCPServer")]]
        names = names or list(WORKLOADS)
        known = {**WORKLOADS, **OPTIONAL_WORKLOADS}
        unknown = sorted(set(names) - set(known))
        if unknown:
            p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        args.workloads = [
            customized(known[n], args.handler, args.server, verify=args.verify_echo or not args.handler)
            for n in dict.fromkeys(names)
        ]
    except ValueError as exc:
        p.error(str(exc))
    return args


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        line = f"[{self.done + 1}/{self.total}] {text}..."
        if self.tty:
            sys.stderr.write(f"\r\033[K{line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def skip(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def git_head() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def new_row(impl: str) -> dict[str, Any]:
    return {"impl": impl, "status": "pending", "reason": "", "runs": [], "failures": []}


def merge_profiles(parts: list[Path], target: Path) -> None:
    import pstats

    existing = [p for p in parts if p.exists()]
    if not existing:
        return
    stats = pstats.Stats(str(existing[0]))
    for p in existing[1:]:
        stats.add(str(p))
    stats.dump_stats(str(target))
    for p in existing:
        p.unlink()


def run_all(args: argparse.Namespace, cfg: RunConfig) -> dict[str, Any]:
    workloads: list[Workload] = args.workloads
    doc: dict[str, Any] = {
        "schema": 1,
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_head": git_head(),
        "machine": machine.describe(args.python),
        "config": {
            "reps": args.reps,
            "duration": args.duration,
            "warmup": args.warmup,
            "impls": args.impls,
            "handler": args.handler,
            "server": args.server,
            "profile": args.profile,
            "server_python": args.python,
            "retry_busy": args.retry_busy,
            "port_range": list(cfg.port_range),
        },
        "workloads": {},
    }
    unavailable: dict[str, str] = {}
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    counter: instructions.Counter | None = args.counter
    doc["config"]["instructions_counter"] = counter.name if counter else None
    progress = Progress(len(workloads) * (args.reps + (counter is not None)) * len(args.impls))
    try:
        for w in workloads:
            rows = {impl: new_row(impl) for impl in args.impls}
            doc["workloads"][w.name] = {
                "name": w.name,
                "description": w.describe(),
                "mode": w.mode,
                "server_class": w.server_class,
                "handler": w.handler,
                "unit": w.unit,
                "has_latency": w.has_latency,
                "tls": w.tls,
                "silent": w.silent,
                "rows": rows,
            }
            profile_parts: dict[str, list[Path]] = {impl: [] for impl in args.impls}
            # Alternate impls within each repetition so drift hits them all alike.
            for rep in range(1, args.reps + 1):
                for impl in args.impls:
                    row = rows[impl]
                    if w.unsupported(impl):
                        # This workload's alone: the impl still runs the others.
                        row.update(status="unavailable", reason=w.unsupported(impl))
                        progress.skip(1)
                        continue
                    if impl in unavailable:
                        row.update(status="unavailable", reason=unavailable[impl])
                        progress.skip(1)
                        continue
                    progress.show(f"{w.name} {impl} rep {rep}/{args.reps}")
                    profile = None
                    if profile_dir and impl not in C_IMPLS:
                        profile = profile_dir / f"{w.name}-{impl}.rep{rep}.prof"
                        profile_parts[impl].append(profile)
                    outcome: Outcome = run_once(w, impl, cfg, profile)
                    for _ in range(args.retry_busy):
                        if outcome.status != "ok" or outcome.result.get("foreign_cpus", 0.0) <= report.BUSY_CPUS:
                            break
                        row["busy_retries"] = row.get("busy_retries", 0) + 1
                        progress.show(f"{w.name} {impl} rep {rep}/{args.reps} (again: machine was busy)")
                        outcome = run_once(w, impl, cfg, profile)
                    progress.skip(1)
                    if outcome.status == "unavailable":
                        unavailable[impl] = outcome.reason
                        row.update(status="unavailable", reason=outcome.reason)
                    elif outcome.status == "failed":
                        row["failures"].append(f"rep {rep}: {outcome.reason}")
                        row.setdefault("failure_details", []).append(outcome.detail)
                    else:
                        outcome.result["rep"] = rep
                        row["runs"].append(outcome.result)
            if counter is not None:
                for impl, row in rows.items():
                    progress.show(f"{w.name} {impl}: instructions ({counter.name})")
                    if w.unsupported(impl):
                        row.update(status="unavailable", reason=w.unsupported(impl))
                    elif impl in w.zero_ok:
                        # It serves nobody here: there is no request to count.
                        why = f"no instruction count: {w.zero_why}"
                        if row["runs"]:
                            row["instructions_error"] = why
                        else:
                            row.update(status="unavailable", reason=why)
                    elif row["status"] != "unavailable":
                        row.update(instructions.count(w, impl, cfg, counter, args.instructions_requests))
                    progress.skip(1)
            for impl, row in rows.items():
                report.finish_row(row)
                if profile_dir and profile_parts[impl]:
                    merge_profiles(profile_parts[impl], profile_dir / f"{w.name}-{impl}.prof")
            report.add_ratios(rows)
            doc["workloads"][w.name]["tls_agreed"] = report.tls_agreed(rows)
    finally:
        progress.close()
    doc["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    doc["mismatches"] = report.total_mismatches(doc)
    doc["invalid"] = list(report.invalid_rows(doc))
    doc["failed"] = list(report.failed_rows(doc))
    return doc


def idle_check(seconds: float = 0.5) -> float:
    """CPUs' worth of work other processes are doing right now."""
    start_busy, start_own = machine_busy_seconds(), sum(os.times()[:4])
    time.sleep(seconds)
    own = sum(os.times()[:4]) - start_own
    return max(0.0, (machine_busy_seconds() - start_busy - own) / seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("bench: --png needs matplotlib (pip install matplotlib); no chart will be drawn", file=sys.stderr)
            args.png = None
    with tempfile.TemporaryDirectory(prefix="fsbench-tls-") as cert_dir:
        try:
            cfg = RunConfig(
                duration=args.duration,
                warmup=args.warmup,
                loadgen=build.binary("loadgen"),
                echo_ref=build.binary("echo_ref"),
                python=args.python,
            )
            if any(w.tls for w in args.workloads):
                cfg.tls_files = tls.make_certificate(Path(cert_dir))
            args.counter = instructions.choose_counter() if args.instructions else None
        except (build.BuildError, instructions.NoCounter) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        return run_and_report(args, cfg)


def run_and_report(args: argparse.Namespace, cfg: RunConfig) -> int:
    busy = idle_check()
    if busy > report.BUSY_CPUS:
        print(
            f"bench: warning: other processes are using {busy:.1f} CPUs right now; expect noisy numbers",
            file=sys.stderr,
        )
    started = time.monotonic()
    try:
        doc = run_all(args, cfg)
    except KeyboardInterrupt:
        print("\nbench: interrupted; servers stopped", file=sys.stderr)
        return 130
    doc["machine"]["other_cpus_at_start"] = round(busy, 2)
    doc["machine"]["load_average_at_end"] = machine.load_average()
    doc["elapsed_s"] = round(time.monotonic() - started, 1)

    print(report.render_report(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(report.render_report(doc, markdown=True))
    if args.png:
        report.draw_png(doc, args.png)
    if args.profile:
        profiles = Path(args.profile)
        print(f"profiles in {profiles}{os.sep}  (compare: python -m pstats {profiles / '<workload>-pure.prof'})")
    print(f"elapsed {doc['elapsed_s']}s")
    if doc["mismatches"]:
        print(f"bench: {doc['mismatches']} mismatched replies: results are INVALID", file=sys.stderr)
    if doc["invalid"]:
        print(f"bench: INVALID runs (a mismatch, or no replies) in {', '.join(doc['invalid'])}", file=sys.stderr)
        return 1
    if doc["failed"]:
        print(f"bench: runs failed in {', '.join(doc['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
