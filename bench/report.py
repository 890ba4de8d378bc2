"""Summaries of the runs: medians with min-max, ratios, text/markdown tables, a chart."""
from __future__ import annotations

import statistics
from typing import Any, Iterable

from .runner import BUSY_CPUS

METRICS = ("rate", "p50_us", "p99_us", "rss_kb", "shutdown_ms", "switches_per_request")
NOTE_COUNTERS = ("errors", "mismatches", "lost", "late", "server_errors", "closed_by_server", "silent_closed")
# A ratio to a reference that served nothing (the stdlib with silent TLS
# clients): shown as such, and stored as None with this flag beside it.
ZERO_BASE = "{key}_base_zero"


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if values:
            summary[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


def finish_row(row: dict[str, Any]) -> None:
    """Fill in a row's status and summary once all its repetitions are in."""
    if row["status"] == "unavailable":
        return
    runs = row["runs"]
    row["summary"] = summarize(runs)
    row["mismatches"] = sum(r.get("mismatches", 0) for r in runs)
    # With --reps 0 a row is its instruction count alone.
    row["status"] = "ok" if runs or "instructions_per_request" in row else "failed"


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    def median_rate(impl: str) -> float | None:
        row = rows.get(impl)
        rate = row and row.get("summary", {}).get("rate")
        return rate["median"] if rate else None

    for row in rows.values():
        mine = median_rate(row["impl"])
        for key, ref in (("vs_stdlib", "stdlib"), ("vs_c_reference", "c-reference")):
            base = median_rate(ref)
            row[key] = mine / base if mine is not None and base else None
            if base == 0 and mine:
                row[ZERO_BASE.format(key=key)] = ref


def tls_agreed(rows: dict[str, dict[str, Any]]) -> str:
    """The protocol and cipher the load generator's handshakes agreed, or ""."""
    for row in rows.values():
        for run in row.get("runs", []):
            if run.get("tls_version"):
                return f"{run['tls_version']} {run.get('tls_cipher', '')}".strip()
    return ""


def _num(value: float, unit: str) -> str:
    if unit == "bytes/s":
        return f"{value / 2**20:,.0f}"
    return f"{value:,.0f}"


def _spread(metric: dict[str, float] | None, unit: str = "", reps: int = 1) -> str:
    if not metric:
        return "-"
    text = _num(metric["median"], unit)
    if reps > 1:
        text += f" ({_num(metric['min'], unit)}-{_num(metric['max'], unit)})"
    return text


def _shutdown(metric: dict[str, float] | None) -> str:
    """Median and worst time for server.shutdown() to return after the run."""
    if not metric:
        return "-"
    return f"{metric['median']:.2f} (max {metric['max']:.2f})"


def _ratio(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    zero_base = row.get(ZERO_BASE.format(key=key))
    if zero_base:
        return f"inf ({zero_base} 0)"
    return "-" if value is None else f"{value:.2f}x"


def _notes(row: dict[str, Any]) -> str:
    notes = []
    runs = row.get("runs", [])
    for counter in NOTE_COUNTERS:
        total = sum(r.get(counter) or 0 for r in runs)
        if total:
            notes.append(f"{counter}={total:,}")
    silent = [r["invalid_reason"] for r in runs if r.get("invalid_reason")]
    if silent:
        notes.insert(0, f"INVALID ({silent[0]})")
    expected_zero = [r["expected_zero"] for r in runs if r.get("expected_zero")]
    if expected_zero:
        notes.insert(0, f"0 replies in {len(expected_zero)} of {len(runs)} rep(s), {expected_zero[0]}")
    short = [r for r in runs if r.get("silent_open_at_start", 0) < r.get("silent", 0)]
    if short:
        worst = min(r["silent_open_at_start"] for r in short)
        notes.append(f"only {worst} of {short[0]['silent']} silent clients connected in {len(short)} rep(s)")
    if any(r.get("mismatches") for r in runs):
        notes.insert(0, "INVALID (mismatch)")
    if any(r.get("verified") is False for r in runs):
        notes.append("replies counted, not verified")
    for exit_note in sorted({r.get("server_exit", "clean") for r in runs} - {"clean"}):
        notes.append(f"server {exit_note}")
    foreign = max((r.get("foreign_cpus") or 0.0 for r in runs), default=0.0)
    if foreign > BUSY_CPUS:
        notes.append(f"other processes used up to {foreign:.1f} CPU")
    if row.get("busy_retries"):
        notes.append(f"{row['busy_retries']} busy run(s) repeated")
    if row.get("failures"):
        notes.append(f"{len(row['failures'])} rep(s) failed: {row['failures'][0][:120]}")
    if row.get("instructions_error"):
        notes.append(f"no instruction count: {row['instructions_error'][:160]}")
    return "; ".join(notes)


def _switches(metric: dict[str, float] | None) -> str:
    return "-" if not metric else f"{metric['median']:.2f}"


def _instructions(row: dict[str, Any], stdlib: dict[str, Any] | None) -> str:
    """The count, and its share of the stdlib's (below 1 is fewer)."""
    if row.get("instructions_error"):
        return "failed"
    value = row.get("instructions_per_request")
    if value is None:
        return "-"
    base = stdlib.get("instructions_per_request") if stdlib else None
    return f"{value / 1000:,.1f}k" + (f" ({value / base:.2f})" if base else "")


def table_cells(workload: dict[str, Any], reps: int) -> tuple[list[str], list[list[str]]]:
    unit = workload["unit"]
    shown_unit = "MiB/s" if unit == "bytes/s" else unit
    per = "64KiB" if unit == "bytes/s" else "req"
    header = ["impl", shown_unit, "vs stdlib", "vs c-ref"]
    latency = workload["has_latency"]
    if latency:
        header += ["p50 us", "p99 us"]
    rows = workload["rows"].values()
    counted = any("instructions_per_request" in r or "instructions_error" in r for r in rows)
    if counted:
        header += [f"instr/{per} (of stdlib)"]
    header += [f"csw/{per}", "peak RSS MiB", "shutdown ms", "notes"]
    body = []
    for impl, row in workload["rows"].items():
        if row["status"] in ("unavailable", "failed") and not row.get("runs"):
            reason = row.get("reason") or (row.get("failures") or ["no successful run"])[0]
            body.append([impl, f"{row['status']}: {reason}"])
            continue
        s = row.get("summary", {})
        rss = s.get("rss_kb")
        rss_mib = {k: v / 1024 for k, v in rss.items()} if rss else None
        cells = [impl, _spread(s.get("rate"), unit, reps), _ratio(row, "vs_stdlib"), _ratio(row, "vs_c_reference")]
        if latency:
            cells += [_spread(s.get("p50_us"), reps=reps), _spread(s.get("p99_us"), reps=reps)]
        if counted:
            cells += [_instructions(row, workload["rows"].get("stdlib"))]
        cells += [_switches(s.get("switches_per_request"))]
        cells += [f"{rss_mib['median']:.1f}" if rss_mib else "-", _shutdown(s.get("shutdown_ms")), _notes(row)]
        body.append(cells)
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    full = [r for r in body if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header] + full) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in [header] + body)
    lines = []
    for r in [header] + body:
        if len(r) != len(header):  # an unavailable/failed row: impl plus one message
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]}")
            continue
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 2) + ["---"]) + "|"]
    for r in body:
        if len(r) != len(header):
            r = [r[0], r[1]] + [""] * (len(header) - 2)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def workload_title(workload: dict[str, Any], reps: int) -> str:
    what = f"median of {reps}, (min-max)" if reps > 1 else "1 repetition" if reps else "instruction counts only"
    agreed = f" ({workload['tls_agreed']})" if workload.get("tls_agreed") else ""
    return f"{workload['name']}: {workload['description']}{agreed}  [{what}]"


def machine_lines(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    c = doc["config"]
    load = m.get("load_average_at_start")
    return [
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['kernel']}, {m['python']}",
        f"before the run: other processes used {m.get('other_cpus_at_start', 0):.1f} CPUs"
        + (f", load average {load[0]:.2f}" if load else ""),
        f"pinning: {m['pinning']}",
        f"runs: {c['reps']} reps x {c['duration']}s after {c['warmup']}s warm-up, impls alternated within each rep",
        "csw/req: the server process's context switches (voluntary + involuntary) per request in the measured window",
    ] + (
        [
            f"instr/req: the server's user-space instructions per request, counted by {c['instructions_counter']}"
            " (the difference between two runs of a fixed number of requests, over that difference)"
        ]
        if c.get("instructions_counter")
        else []
    )


def render_report(doc: dict[str, Any], markdown: bool = False) -> str:
    reps = doc["config"]["reps"]
    parts = []
    if markdown:
        parts.append("\n".join(f"- {line}" for line in machine_lines(doc)))
    else:
        parts.append("\n".join(machine_lines(doc)))
    for workload in doc["workloads"].values():
        header, body = table_cells(workload, reps)
        if markdown:
            parts.append(f"### {workload_title(workload, reps)}\n\n{render_markdown(header, body)}")
        else:
            parts.append(f"== {workload_title(workload, reps)}\n{render_text(header, body)}")
    return "\n\n".join(parts) + "\n"


COLORS = {
    "cython": "#1f77b4",
    "pure": "#ff7f0e",
    "stdlib": "#7f7f7f",
    "c-reference": "#2ca02c",
    "c-threaded": "#98df8a",
}


def draw_png(doc: dict[str, Any], path: str) -> None:
    """Bar chart, one panel per workload; needs matplotlib (raises ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def short(value: float, _pos: int) -> str:
        for limit, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= limit:
                return f"{value / limit:g}{suffix}"
        return f"{value:g}"

    workloads = list(doc["workloads"].values())
    cols = min(4, len(workloads))
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(workloads) :]:
        ax.set_visible(False)
    for ax, w in zip(axes.flat, workloads):
        scale, unit = (2**20, "MiB/s") if w["unit"] == "bytes/s" else (1, w["unit"])
        names, medians, lows, highs = [], [], [], []
        for impl, row in w["rows"].items():
            rate = row.get("summary", {}).get("rate")
            names.append(impl)
            if rate:
                medians.append(rate["median"] / scale)
                lows.append((rate["median"] - rate["min"]) / scale)
                highs.append((rate["max"] - rate["median"]) / scale)
            else:
                medians.append(0.0)
                lows.append(0.0)
                highs.append(0.0)
        bars = ax.bar(names, medians, yerr=[lows, highs], capsize=3, color=[COLORS.get(n, "#999999") for n in names])
        for bar, impl, value in zip(bars, names, medians):
            if value == 0.0:
                ax.text(bar.get_x() + bar.get_width() / 2, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_title(w["name"], fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.tick_params(axis="y", labelsize=8)
        ax.yaxis.set_major_formatter(FuncFormatter(short))
    m = doc["machine"]
    fig.suptitle(f"fastserver bench: {m['cpu_model']}, {m['python']} (median, min-max bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def total_mismatches(doc: dict[str, Any]) -> int:
    return sum(row.get("mismatches", 0) for w in doc["workloads"].values() for row in w["rows"].values())


def invalid_rows(doc: dict[str, Any]) -> Iterable[str]:
    """workload/impl of every row with a run that counts for nothing: a
    mismatched reply, or no replies at all."""
    for w in doc["workloads"].values():
        for impl, row in w["rows"].items():
            if any(not r.get("valid", True) for r in row.get("runs", [])):
                yield f"{w['name']}/{impl}"


def failed_rows(doc: dict[str, Any]) -> Iterable[str]:
    for w in doc["workloads"].values():
        for impl, row in w["rows"].items():
            if row["status"] == "failed" or row.get("failures"):
                yield f"{w['name']}/{impl}"
