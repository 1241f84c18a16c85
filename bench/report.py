"""Turns the raw runs into a summary, a Markdown report and a PNG plot.

Systems are "gatepost-STORE" (one per store: sqlite, postgresql) and "postfix".
Rates are medians over rounds; ratios are each gatepost store's median over
Postfix's. For the PostgreSQL store the database's counters per message
(commits, WAL syncs, WAL bytes) are medians over rounds too. The plot shows
delivered messages over time for every round of each system.
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
        cpu = [r["cpu_ms_per_msg"] for r in ok if r.get("cpu_ms_per_msg")]
        out[kind] = {"median_rate": _median([r["rate"] for r in ok]),
                     "rates": [round(r["rate"], 1) for r in ok],
                     "median_accept_rate": _median([len_ok(r) for r in ok]),
                     "failed": len(runs[kind]) - len(ok),
                     "cpu_ms_per_msg": _median([sum(c.values()) for c in cpu]),
                     "cpu_parts": {part: _median([c.get(part, 0.0) for c in cpu])
                                   for part in (cpu[0] if cpu else {})}}
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


def gateposts(names: Any) -> list[str]:
    return [name for name in names if str(name).startswith("gatepost")]


def store_of(name: str) -> str:
    return name.removeprefix("gatepost-")


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Per system its summary; "ratio": per gatepost store, its median rates over
    Postfix's; "postgresql": the database's counters per message."""
    summary: dict[str, Any] = {name: _system_summary(r) for name, r in runs.items()}
    if "postfix" in summary:
        for name in gateposts(runs):
            ratios = summary.setdefault("ratio", {}).setdefault(name, {})
            for kind in KINDS:
                g, p = summary[name][kind]["median_rate"], summary["postfix"][kind]["median_rate"]
                ratios[kind] = round(g / p, 3) if g and p else None
    if "gatepost-postgresql" in runs:
        summary["postgresql"] = _db_summary(runs["gatepost-postgresql"])
    return summary


PER_MESSAGE = ("xact_commit", "xact_rollback", "wal_sync", "wal_write", "wal_bytes",
               "wal_records", "tup_inserted", "tup_updated", "tup_deleted")


def _db_summary(runs: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds, per message sent, of the run's database counters."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        ok = [r for r in runs.get(kind, []) if "rate" in r and r.get("db_stats")]
        out[kind] = {
            counter: _median([r["db_stats"][counter] / (r["rate"] * r["seconds"]) for r in ok
                              if counter in r["db_stats"]])
            for counter in PER_MESSAGE}
        out[kind]["per_second_commits"] = _median(
            [r["db_stats"]["xact_commit"] / r["seconds"] for r in ok])
    return out


def _is_system(name: str) -> bool:
    return name not in ("ratio", "postgresql")


def _fmt(value: Any, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


LABELS = {"gatepost-sqlite": "gatepost, SQLite", "gatepost-postgresql": "gatepost, PostgreSQL",
          "postfix": "Postfix"}


def headline_table(summary: dict[str, Any]) -> str:
    """The medians side by side, one column per system, and each store's ratio to Postfix."""
    names = [name for name in summary if _is_system(name)]
    rows = ["| median msg/s | " + " | ".join(LABELS.get(n, n) for n in names) + " |",
            "|---|" + "---|" * len(names)]
    for kind in KINDS:
        rows.append(f"| {kind} | " + " | ".join(_fmt(summary[n][kind]["median_rate"])
                                                  for n in names) + " |")
    for kind in KINDS:
        rows.append(f"| {kind}: CPU ms per message | " + " | ".join(
            _cpu_cell(summary[n][kind]) for n in names) + " |")
    ratio = summary.get("ratio", {})
    for kind in KINDS:
        if ratio:
            cells = [f"{_fmt(ratio[n][kind], 2)}×" if n in ratio and ratio[n][kind] else
                     ("1.00×" if n == "postfix" else "—") for n in names]
            rows.append(f"| {kind} / Postfix | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cpu_cell(kind: dict[str, Any]) -> str:
    """Total CPU ms per message, and its parts when there are several."""
    total, parts = kind.get("cpu_ms_per_msg"), kind.get("cpu_parts") or {}
    if total is None:
        return "—"
    shown = f"{total:.2f}"
    if len(parts) > 1:
        shown += " (" + " + ".join(f"{name} {ms:.2f}" for name, ms in parts.items()) + ")"
    return shown


def summary_table(summary: dict[str, Any]) -> str:
    header = ("| | relay msg/s | inbound msg/s | accept msg/s (relay) | latency p50 ms "
              "| p99 ms | at msg/s | sent late | largest peak RSS MiB |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        if not _is_system(name):
            continue
        lat = s["latency"]
        rows.append(f"| {name} | {_fmt(s['relay']['median_rate'])} "
                    f"| {_fmt(s['inbound']['median_rate'])} "
                    f"| {_fmt(s['relay']['median_accept_rate'])} | {_fmt(lat['p50_ms'], 2)} "
                    f"| {_fmt(lat['p99_ms'], 2)} | {_fmt(lat['rate'])} | {_fmt(lat['late'])} "
                    f"| {s['peak_rss_mib'] if name.startswith('gatepost') else '—'} |")
    for name, ratio in summary.get("ratio", {}).items():
        rows.append(f"| {name}/postfix | {_fmt(ratio['relay'], 3)} "
                    f"| {_fmt(ratio['inbound'], 3)} | | | | | | |")
    return "\n".join(rows) + same_rate_table(summary)


def db_table(summary: dict[str, Any]) -> list[str]:
    """The PostgreSQL store's database work per message (relay and inbound)."""
    db = summary.get("postgresql")
    if not db:
        return []
    names = {"xact_commit": "transactions (a read in autocommit is one)",
             "xact_rollback": "rollbacks", "wal_sync": "WAL syncs",
             "wal_write": "WAL writes", "wal_bytes": "WAL bytes", "wal_records": "WAL records",
             "tup_inserted": "rows inserted", "tup_updated": "rows updated",
             "tup_deleted": "rows deleted"}
    about = ("Medians over rounds of the run's counters (pg_stat_database of its database, "
             "less the bench's own counting queries; pg_stat_wal of the cluster) divided by "
             "the messages sent.")
    rows = ["## PostgreSQL store: database work per message", about, "",
            "| per message | relay | inbound |", "|---|---|---|"]
    digits = {"wal_bytes": 0, "wal_records": 1}
    for counter, label in names.items():
        rows.append(f"| {label} | {_fmt(db['relay'][counter], digits.get(counter, 2))} "
                    f"| {_fmt(db['inbound'][counter], digits.get(counter, 2))} |")
    rows.append(f"| transactions per second | {_fmt(db['relay']['per_second_commits'])} "
                f"| {_fmt(db['inbound']['per_second_commits'])} |")
    return [*rows, ""]


def same_rate_table(summary: dict[str, Any]) -> str:
    """Both systems' acceptance latency offered the same rate (half of the slower one's)."""
    rows = [(name, s["latency_same_rate"]) for name, s in summary.items()
            if _is_system(name) and s.get("latency_same_rate", {}).get("rate")]
    if not rows:
        return ""
    lines = ["", "", "Acceptance latency with all systems at the same rate:", "",
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
    for name in gateposts(runs):
        for kind in KINDS:
            for index, run in enumerate(runs[name].get(kind, [])):
                procs = ", ".join(f"{p['name']}[{p['pid']}] {p['vm_hwm_kib'] / 1024:.1f} MiB"
                                  for p in run.get("rss", []))
                lines.append(f"- {name} {kind} #{index + 1}: {procs or 'not measured'}")
    return lines


def _large(runs: dict[str, Any]) -> list[str]:
    return [line for name in gateposts(runs) if "large" in runs[name]
            for line in large.markdown(runs[name]["large"], store_of(name))]


def _postgresql(setup: dict[str, Any]) -> list[str]:
    settings = setup.get("postgresql")
    if not settings:
        return []
    about = ("One private cluster (tests/pg.py `Cluster.start()`: its default settings, on "
             "this machine, over TCP on 127.0.0.1) for all gatepost-postgresql runs, a fresh "
             "database per run. gatepost commits an enqueue (what its 250 acknowledges) with "
             "synchronous_commit on and its other writes with synchronous_commit off "
             "(src/gatepost/store/postgres_db.py).")
    return ["## PostgreSQL cluster", about, "",
            *[f"- {name} = {value}" for name, value in settings.items()], ""]


def markdown(results: dict[str, Any]) -> str:
    setup, summary, cfg = results["setup"], results["summary"], results["config"]
    m, v = setup["machine"], setup["versions"]
    intro = (f"Run {results['started']}: {cfg['rounds']} round(s), {cfg['messages']} relay "
             f"and {cfg['inbound']} inbound messages of 8 KB, systems alternating; rates are "
             "medians over rounds. Command: `" + results.get("command", "bench/run.py") + "`.")
    load = m["loadavg"]
    end = results.get("loadavg_end")
    cpu_note = ("CPU ms per message: the system's own processes (gatepost's, with the "
                "PostgreSQL cluster's; Postfix's master and services) over the run, not "
                "smtp-source or the sink; the medians over rounds. On a machine with "
                "other work this is steadier than the rates.")
    parts = [
        "# gatepost benchmark", "", intro, "", headline_table(summary), "", cpu_note, "",
        f"Load average (1/5/15 min) at the start {' '.join(load)}"
        + (f", at the end {' '.join(end)}" if end else "")
        + f", on {m['nproc']} CPUs: other work on the machine skews the rates.", "",
        summary_table(summary), "",
        "Rates per round: " + "; ".join(
            f"{n} {k} {s[k]['rates']}" + (f" ({s[k]['failed']} failed)" if s[k]["failed"] else "")
            for n, s in summary.items() if _is_system(n) for k in KINDS),
        "", "![delivered over time](latest.png)", "",
        *db_table(summary),
        *_large(results["runs"]),
        "## Errors", *(_errors(results["runs"]) or ["none"]), "",
        "## gatepost peak RSS (VmHWM) per process", *_rss_lines(results["runs"]), "",
        "## Machine and versions",
        f"- {m['nproc']} CPUs, {m['cpu']}, {m['ram_gib']} GiB RAM, {v['uname']}",
        f"- load average at start (1/5/15 min): {' '.join(m['loadavg'])} (other work skews it)",
        f"- Python {m['python']}, Postfix {v['postfix']}, gatepost {v['gatepost']}"
        + (f", PostgreSQL {v['postgresql']}" if v.get("postgresql") else ""),
        f"- gatepost code: {v.get('source', 'not recorded')}", "",
        *_postgresql(setup),
        "## Commands (temp folder and ports vary per run)", "```",
        *[f"{k}: {c}" for k, c in setup["commands"].items()], "```", "",
        "## Postfix main.cf", "```", setup["postfix_main_cf"].rstrip(), "```", "",
        "## Postfix master.cf", "```", setup["postfix_master_cf"].rstrip(), "```", "",
        *[line for store, topology in setup.get(
            "gatepost_topologies", {"sqlite": setup["gatepost_topology"]}).items()
          for line in (f"## gatepost topology ({store})", "```toml", topology.rstrip(), "```", "")],
    ]
    return "\n".join(parts)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {"gatepost-sqlite": "tab:blue", "gatepost-postgresql": "tab:green",
              "postfix": "tab:orange"}
    for ax, kind in zip(axes, KINDS):
        for name, by_kind in runs.items():
            for index, run in enumerate(r for r in by_kind[kind] if "timeline" in r):
                xs, ys = zip(*run["timeline"])
                ax.plot(xs, ys, color=colors.get(name), alpha=0.8,
                        label=LABELS.get(name, name) if index == 0 else None)
        ax.set(title=f"{kind}: delivered messages", xlabel="seconds", ylabel="messages")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
