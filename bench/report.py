"""Turns the raw runs into a summary, a Markdown report and a PNG plot.

Rates are medians over rounds; ratios are gatepost's median over Postfix's.
The plot shows delivered messages over time for every relay round of each system.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench import large
from bench.common import short

KINDS = ("relay", "inbound")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _system_summary(runs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        ok = [r for r in runs[kind] if "rate" in r]
        out[kind] = {"median_rate": _median([r["rate"] for r in ok]),
                     "rates": [round(r["rate"], 1) for r in ok],
                     "median_accept_rate": _median([len_ok(r) for r in ok]),
                     "failed": len(runs[kind]) - len(ok)}
    lat = runs.get("latency", {})
    fields = ("rate", "p50_ms", "p99_ms", "max_ms", "late")
    out["latency"] = {k: lat.get(k) for k in fields}
    same = runs.get("latency_same_rate", {})
    out["latency_same_rate"] = {k: same.get(k) for k in fields}
    rss = [p for r in runs["relay"] + runs["inbound"] + [lat] for p in r.get("rss", [])]
    out["peak_rss_mib"] = round(max((p["vm_hwm_kib"] for p in rss), default=0) / 1024, 1)
    return out


def len_ok(run: dict[str, Any]) -> float:
    """Rate at which smtp-source finished (acceptance only) for one run."""
    return float(run["rate"] * run["seconds"] / run["accept_seconds"])


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {name: _system_summary(r) for name, r in runs.items()}
    if {"gatepost", "postfix"} <= summary.keys():
        for kind in KINDS:
            g, p = (summary[s][kind]["median_rate"] for s in ("gatepost", "postfix"))
            summary.setdefault("ratio", {})[kind] = round(g / p, 3) if g and p else None
    return summary


def _fmt(value: Any, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summary_table(summary: dict[str, Any]) -> str:
    header = ("| | relay msg/s | inbound msg/s | accept msg/s (relay) | latency p50 ms "
              "| p99 ms | at msg/s | sent late | largest peak RSS MiB |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        if name == "ratio":
            continue
        lat = s["latency"]
        rows.append(f"| {name} | {_fmt(s['relay']['median_rate'])} "
                    f"| {_fmt(s['inbound']['median_rate'])} "
                    f"| {_fmt(s['relay']['median_accept_rate'])} | {_fmt(lat['p50_ms'], 2)} "
                    f"| {_fmt(lat['p99_ms'], 2)} | {_fmt(lat['rate'])} | {_fmt(lat['late'])} "
                    f"| {s['peak_rss_mib'] if name == 'gatepost' else '—'} |")
    ratio = summary.get("ratio")
    if ratio:
        rows.append(f"| gatepost/postfix | {_fmt(ratio['relay'], 3)} "
                    f"| {_fmt(ratio['inbound'], 3)} | | | | | | |")
    return "\n".join(rows) + same_rate_table(summary)


def same_rate_table(summary: dict[str, Any]) -> str:
    """Both systems' acceptance latency offered the same rate (half of the slower one's)."""
    rows = [(name, s["latency_same_rate"]) for name, s in summary.items()
            if name != "ratio" and s.get("latency_same_rate", {}).get("rate")]
    if not rows:
        return ""
    lines = ["", "", "Acceptance latency with both systems at the same rate:", "",
             "| | at msg/s | p50 ms | p99 ms | max ms | sent late |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {_fmt(lat['rate'])} | {_fmt(lat['p50_ms'], 2)} "
              f"| {_fmt(lat['p99_ms'], 2)} | {_fmt(lat['max_ms'], 1)} | {_fmt(lat['late'])} |"
              for name, lat in rows]
    return "\n".join(lines)


def _errors(runs: dict[str, Any]) -> list[str]:
    found = []
    for name, by_kind in runs.items():
        for kind, value in by_kind.items():
            for index, run in enumerate(value if isinstance(value, list) else [value]):
                if "error" in run:
                    found.append(f"- {name} {kind} #{index + 1}: {short(run['error'])}")
                if run.get("excess"):
                    found.append(f"- {name} {kind} #{index + 1}: {run['excess']} more than sent")
                if (run.get("log_problems") or {}).get("count"):
                    problems = run["log_problems"]
                    found.append(f"- {name} {kind} #{index + 1}: {problems['count']} log lines "
                                 f"with errors/deferrals, first: {problems['first'][:2]}")
                if any(run.get("exit_codes") or []):
                    found.append(f"- {name} {kind} #{index + 1}: exit codes {run['exit_codes']}")
    return found


def all_ok(runs: dict[str, Any]) -> bool:
    return not _errors(runs)


def _rss_lines(runs: dict[str, Any]) -> list[str]:
    lines = []
    for kind in KINDS:
        for index, run in enumerate(runs.get("gatepost", {}).get(kind, [])):
            procs = ", ".join(f"{p['name']}[{p['pid']}] {p['vm_hwm_kib'] / 1024:.1f} MiB"
                              for p in run.get("rss", []))
            lines.append(f"- {kind} #{index + 1}: {procs or 'not measured'}")
    return lines


def markdown(results: dict[str, Any]) -> str:
    setup, summary, cfg = results["setup"], results["summary"], results["config"]
    m, v = setup["machine"], setup["versions"]
    intro = (f"Run {results['started']}: {cfg['rounds']} round(s), {cfg['messages']} relay "
             f"and {cfg['inbound']} inbound messages of 8 KB, systems alternating; rates are "
             "medians over rounds.")
    parts = [
        "# gatepost benchmark", "", intro, "", summary_table(summary), "",
        "Rates per round: " + "; ".join(
            f"{n} {k} {s[k]['rates']}" + (f" ({s[k]['failed']} failed)" if s[k]["failed"] else "")
            for n, s in summary.items() if n != "ratio" for k in KINDS),
        "", "![delivered over time](latest.png)", "",
        *large.markdown(results["runs"].get("gatepost", {}).get("large", {"error": "not run"})),
        "## Errors", *(_errors(results["runs"]) or ["none"]), "",
        "## gatepost peak RSS (VmHWM) per process", *_rss_lines(results["runs"]), "",
        "## Machine and versions",
        f"- {m['nproc']} CPUs, {m['cpu']}, {m['ram_gib']} GiB RAM, {v['uname']}",
        f"- load average at start (1/5/15 min): {' '.join(m['loadavg'])} (other work skews it)",
        f"- Python {m['python']}, Postfix {v['postfix']}, gatepost {v['gatepost']}", "",
        "## Commands (temp folder and ports vary per run)", "```",
        *[f"{k}: {c}" for k, c in setup["commands"].items()], "```", "",
        "## Postfix main.cf", "```", setup["postfix_main_cf"].rstrip(), "```", "",
        "## Postfix master.cf", "```", setup["postfix_master_cf"].rstrip(), "```", "",
        "## gatepost topology", "```toml", setup["gatepost_topology"].rstrip(), "```", "",
    ]
    return "\n".join(parts)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {"gatepost": "tab:blue", "postfix": "tab:orange"}
    for ax, kind in zip(axes, KINDS):
        for name, by_kind in runs.items():
            for index, run in enumerate(r for r in by_kind[kind] if "timeline" in r):
                xs, ys = zip(*run["timeline"])
                ax.plot(xs, ys, color=colors.get(name), alpha=0.8,
                        label=name if index == 0 else None)
        ax.set(title=f"{kind}: delivered messages", xlabel="seconds", ylabel="messages")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
