"""The results: ``results/latest.json``, ``results/latest.md`` (the targets table and the details), and one PNG per
scaling curve (matplotlib, from the ``bench`` extra; without it the PNGs are skipped with a note)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from tests.benchmarks.support import RESULTS

COMMAND = ".venv/bin/python -m tests.benchmarks"


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _unmatched(latency: dict[str, Any]) -> str:
    if not latency.get("unmatched"):
        return ""
    unexplained = latency.get("unexplained")
    if unexplained is None:  # results from before changes without an event were explained
        return f"; {latency['unmatched']} without an event"
    if unexplained == 0:
        return f"; {latency['unmatched']} without an event, each deleted again before a poll could see it"
    return f"; {latency['unmatched']} without an event, {unexplained} of them unexplained: events lost"


def _cpu_budget(sizes: list[dict[str, Any]]) -> list[str]:
    """Where the machine's cores go during the relay's snapshot: the relay, the simulator and the broker share them."""
    if not all("cpu_us_per_record" in s for s in sizes):
        return []  # results from before these figures were measured
    lines = [
        "",
        "### CPU per record, all processes (the relay, the simulator and the broker share the machine's cores)",
        "",
        "CPU time of each process from the snapshot's start to its last commit, per record (user + system, from "
        "`/proc`); each column is a median over the runs, *total* too. *two-core bound*: the throughput at which "
        "that much CPU per record would keep both cores busy all "
        "along, the most this machine could do with these three processes however well they overlapped. For "
        "comparison, the CPU per record of the simulator while fetch-only pages it, and of the broker while "
        "produce-only sends (including the topics' creation).",
        "",
        "| N | relay us | simulator us | broker us | total us | two-core bound rec/s | relay / two-core bound | "
        "fetch-only: simulator us | produce-only: broker us |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sizes:
        us = s["cpu_us_per_record"]
        total = us.get("total", us["relay"] + us["simulator"] + us["broker"])
        lines.append(
            f"| {s['n']:,} | {us['relay']:.1f} | {us['simulator']:.1f} | {us['broker']:.1f} | {total:.1f} | "
            f"{_fmt(s['two_core_rps'])} | {s['relay_share_of_two_core']:.0%} | {us['fetch_only_simulator']:.1f} | "
            f"{us['produce_only_broker']:.1f} |"
        )
    return lines


ISSUE_19_BYTES_PER_ENTITY = 160  # issue 19's target 4, below the first round's 200 B


def _memory_verdict(bytes_per_entity: float) -> str:
    """Both memory targets' verdicts: the first round's 200 B, then issue 19's."""
    return f"{_met(bytes_per_entity <= 200)}; issue 19: {_met(bytes_per_entity <= ISSUE_19_BYTES_PER_ENTITY)}"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met/missed, command) per target, from whatever benchmarks the results hold."""
    bench = results.get("benchmarks", {})
    rows: list[tuple[str, str, str, str]] = []
    quick = " --quick" if results.get("meta", {}).get("quick") else ""
    snapshot = bench.get("snapshot")
    if snapshot:
        sizes = snapshot["sizes"]
        parts = ", ".join(
            f"N={s['n']:,}: **{s['ratio']:.0%}** (relay {_fmt(s['relay_rps'])}/s; "
            f"{'fetch' if s['fetch_rps'] < s['produce_rps'] else 'produce'}-only "
            f"{_fmt(min(s['fetch_rps'], s['produce_rps']))}/s)"
            for s in sizes
        )
        rows.append(
            (
                "1. Snapshot throughput >= 70% of the lower limit at every N",
                parts,
                _met(all(s["ratio"] >= 0.70 for s in sizes)),
                f"{COMMAND}{quick} --only snapshot",
            )
        )
    latency = bench.get("latency")
    if latency:
        rows.append(
            (
                f"2. Incremental latency ({latency['users']:,} users, 1%/min, poll 5 s): p50 <= 3 s, p99 <= 6 s",
                f"p50 {latency['p50']:.2f} s, p99 {latency['p99']:.2f} s ({latency['changes']:,} changes"
                f"{_unmatched(latency)})",
                _met(latency["p50"] <= 3.0 and latency["p99"] <= 6.0 and not latency.get("unexplained")),
                f"{COMMAND}{quick} --only latency",
            )
        )
    if snapshot:
        largest = snapshot["sizes"][-1]
        curve = ", ".join(f"{s['n']:,}: {s['bytes_per_entity']:.0f} B" for s in snapshot["sizes"])
        rows.append(
            (
                f"3. Memory <= 200 B per remembered entity at 1M; issue 19: <= {ISSUE_19_BYTES_PER_ENTITY} B "
                f"(measured at N={largest['n']:,})",
                f"{largest['bytes_per_entity']:.0f} B/entity (curve {curve})",
                _memory_verdict(largest["bytes_per_entity"]) if largest["n"] >= 1_000_000 else "n/a (N < 1M)",
                f"{COMMAND}{quick} --only snapshot",
            )
        )
    fleet = bench.get("fleet")
    if fleet:
        at_1000 = next((f for f in fleet["fleets"] if f["integrations"] == 1000), None)
        parts = "; ".join(
            f"{f['integrations']:,} integrations: {f['cpu_share']:.1%} of a core, {f['requests_per_poll']:.3f} "
            f"requests/poll, {f['polls_per_pair_per_interval']:.2f} polls/pair/interval, "
            f"{f['transactions_per_window']:.0f} transactions per {fleet['window_seconds']:.0f} s"
            for f in fleet["fleets"]
        )
        ok = None
        if at_1000 is not None:
            ok = (
                at_1000["cpu_share"] <= 0.10
                and abs(at_1000["requests_per_poll"] - 1.0) < 1e-9
                and at_1000["transactions_per_window"] == 0
            )
        rows.append(
            (
                "4. Fleet idle cost: <= 10% of one core at 1,000 integrations, 1 request per pair per interval, "
                "no transaction",
                parts,
                _met(ok),
                f"{COMMAND}{quick} --only fleet",
            )
        )
        if at_1000 is not None:  # issue 19's target 3: the same measurement, a third of the older target
            rows.append(
                (
                    "Fleet idle, issue 19: <= 3% of one core per 1,000 integrations at a 10 s interval, still 1 "
                    "request per pair per interval and no transaction",
                    f"{at_1000['cpu_share']:.1%} of a core",
                    _met(ok is True and at_1000["cpu_share"] <= 0.03),
                    f"{COMMAND}{quick} --only fleet",
                )
            )
    if snapshot:
        largest = snapshot["sizes"][-1]
        curve = ", ".join(f"{s['n']:,}: {s['restore_seconds']:.1f} s" for s in snapshot["sizes"])
        rows.append(
            (
                f"5. Restore <= 15 s with 1M entities (measured at N={largest['n']:,})",
                f"{largest['restore_seconds']:.1f} s start to ready (curve {curve})",
                _met(largest["restore_seconds"] <= 15) if largest["n"] >= 1_000_000 else "n/a (N < 1M)",
                f"{COMMAND}{quick} --only snapshot",
            )
        )
    profile = bench.get("profile")
    if profile:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in profile["us_per_record"].items())
        rows.append(
            (
                "6. Per-record cost, us per record",
                f"{stages}; total {profile['total_us_per_record']:.1f}",
                "n/a",
                f"{COMMAND}{quick} --only profile",
            )
        )
    webhooks = bench.get("webhooks")
    if webhooks:
        latency, goal = webhooks["latency_seconds"], webhooks["targets"]
        poll = _webhook_setting(webhooks, "poll_interval_seconds")
        rows.append(
            (
                f"7. Webhook latency (webhooks on{f', poll {poll:g} s' if poll is not None else ''}): "
                f"p50 <= {goal['p50']:g} s, p99 <= {goal['p99']:g} s",
                f"p50 {latency['p50']:.2f} s, p99 {latency['p99']:.2f} s ({webhooks['samples']:,} changes, "
                f"{webhooks['missing']} missing); the relay's own part, webhook to committed event: "
                f"{_webhook_to_event_ms(webhooks):.0f} ms on average",
                _met(webhooks["pass"]),
                f"{COMMAND}{quick} --only webhooks",
            )
        )
    rows += _floor_targets(bench, quick)
    scale = bench.get("fleet-scale")
    if scale:
        rows += _fleet_scale_targets(scale, f"{COMMAND}{quick} --only fleet-scale")
    return rows


def _floor_targets(bench: dict[str, Any], quick: str) -> list[tuple[str, str, str, str]]:
    """Issue 19's targets: the relay's CPU per record against the floors, fetch-only and produce-only, measured in the
    same run with the same data; by the snapshot benchmark (the relay as a process) and by the profile (its code in
    the benchmark's own process)."""
    rows: list[tuple[str, str, str, str]] = []
    snapshot = [s for s in bench.get("snapshot", {}).get("sizes", []) if "cpu_floor_ratio" in s]
    profile = bench.get("profile") if "ratios" in bench.get("profile", {}) else None
    snapshot_parts, refetch_parts, snapshot_ok, refetch_ok = [], [], [], []
    for s in snapshot:
        us = s["cpu_us_per_record"]
        floor = us["fetch_only_client"] + us["produce_only_client"]
        snapshot_parts.append(
            f"N={s['n']:,} (relay process): **{s['cpu_floor_ratio']:.2f} x** (relay {us['relay']:.1f} us; fetch-only "
            f"{us['fetch_only_client']:.1f} + produce-only {us['produce_only_client']:.1f} = {floor:.1f} us)"
        )
        refetch_parts.append(
            f"N={s['n']:,} (relay process, a reconciliation): **{s['refetch_floor_ratio']:.2f} x** (relay "
            f"{us['relay_refetch']:.1f} us; fetch-only {us['fetch_only_client']:.1f} us)"
        )
        snapshot_ok.append(s["cpu_floor_ratio"] <= 1.5)
        refetch_ok.append(s["refetch_floor_ratio"] <= 1.5)
    if profile is not None:
        us, ratios = profile["cpu_us_per_record"], profile["ratios"]
        snapshot_parts.append(
            f"{profile['records']:,} records (profile, in process): **{ratios['snapshot / floor']:.2f} x** (relay "
            f"{us['snapshot']:.1f} us; fetch-only {us['fetch-only']:.1f} + produce-only {us['produce-only']:.1f} us)"
        )
        refetch_parts.append(
            f"{profile['records']:,} records (profile, in process): **{ratios['re-fetch / floor']:.2f} x** (relay "
            f"{us['re-fetch']:.1f} us; fetch-only {us['fetch-only']:.1f} us)"
        )
        snapshot_ok.append(ratios["snapshot / floor"] <= profile["targets"]["snapshot / floor"])
        refetch_ok.append(ratios["re-fetch / floor"] <= profile["targets"]["re-fetch / floor"])
    # The table puts the command in backquotes: two commands are joined inside them.
    commands = "` and `".join(
        f"{COMMAND}{quick} --only {name}" for name, present in (("snapshot", snapshot), ("profile", profile)) if present
    )
    if snapshot_parts:
        rows.append(
            (
                "8. Snapshot CPU per record <= 1.5 x (fetch-only + produce-only CPU per record), same run, same data",
                "; ".join(snapshot_parts),
                _met(all(snapshot_ok)),
                commands,
            )
        )
        rows.append(
            (
                "9. Re-fetch of unchanged records: CPU per record <= 1.5 x fetch-only",
                "; ".join(refetch_parts),
                _met(all(refetch_ok)),
                commands,
            )
        )
    return rows


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fleet_scale_targets(scale: dict[str, Any], command: str) -> list[tuple[str, str, str, str]]:
    rows = []
    snap, idle = scale["snapshot"], scale["idle"]
    base = snap["replica_counts"][0]
    ratio = ", ".join(f"{n} vs {base}: **{r:.2f}x**" for n, r in snap["ratio"].items())
    parts = "; ".join(
        f"{_plural(c['replicas'], 'replica')} {_fmt(c['rps'])} rec/s, relay CPU "
        f"{' / '.join(f'{us:.0f}' for us in c['relay_us_per_record'])} us/record, two-core bound "
        f"{_fmt(c['two_core_rps'])} rec/s"
        for c in snap["configs"]
    )
    counts = " vs ".join(str(n) for n in snap["replica_counts"])
    rows.append(
        (
            f"10. Fleet snapshot over replicas ({snap['integrations']} integrations x "
            f"{snap['users_per_integration']:,} users, {counts} replicas): throughput ratio, with the CPU of every "
            "process (below)",
            f"{ratio} ({parts})",
            "n/a",
            command,
        )
    )
    phases = idle["phases"]
    tolerance = idle["cpu_tolerance"]
    parts = "; ".join(
        f"{_plural(p['replicas'], 'replica')}: {p['cpu_share']:.1%} of a core"
        + (f" (**{p['cpu_vs_first'] - 1:+.0%}**)" if p is not phases[0] else "")
        + f", {p['requests_per_pair_per_interval']:.3f} requests/pair/interval at the simulator (each pair "
        f"{p['per_pair_min']} to {p['per_pair_max']} per {idle['window_seconds']:.0f} s), "
        f"{p['transactions']:.0f} transactions, end offsets +{p['end_offsets_moved']}"
        for p in phases
    )
    verdicts = ", ".join(
        f"{name} {_met(ok)}"
        for name, ok in (
            ("CPU", all(p["cpu_vs_first"] <= 1 + tolerance for p in phases)),
            ("requests", all(p["one_request_per_pair"] for p in phases)),
            ("transactions", all(p["no_idle_transaction"] for p in phases)),
        )
    )
    rows.append(
        (
            f"11. Fleet idle over replicas ({idle['integrations']:,} integrations, poll "
            f"{idle['poll_interval_seconds']:g} s): the replicas' CPU together within {tolerance:.0%} of one "
            "replica's; 1 request per pair per interval; no transaction",
            f"{parts}. {verdicts}",
            _met(idle["pass"]),
            command,
        )
    )
    return rows


def _fleet_scale_section(scale: dict[str, Any]) -> list[str]:
    snap, idle = scale["snapshot"], scale["idle"]
    base = snap["replica_counts"][0]
    lines = [
        "",
        f"## Fleet: one snapshot over replicas ({snap['integrations']} integrations x "
        f"{snap['users_per_integration']:,} users = {snap['records']:,} records, median of {snap['runs']} runs)",
        "",
        "Real `relay run` replicas of one consumer group, one simulator process, one broker, on the machine's "
        f"{snap['partitions']} state partitions (integrations placed evenly over them). *rec/s*: created events "
        "read back `read_committed` (one per user, none twice), from the first event's timestamp to the last's. CPU "
        "of each process over that span (what each spends idle around it left out), per record: each relay's per "
        "record it published, the simulator's and the broker's per record in all. *two-core bound*: the throughput "
        "at which that CPU per record would keep both cores busy. *others*: CPU that other processes on this machine "
        "took from the same two cores meanwhile, as a share of them. *bound, cores left*: the two-core bound scaled "
        "to what the others left of the cores (two-core bound x (1 - others)), and *rec/s / that*: how much of it "
        "was used.",
        "",
        "| replicas | rec/s | vs 1 replica (per run) | relay us/record (each) | relay CPU, share of a core (each) | "
        "records (each) | simulator us | broker us | total us | two-core bound rec/s | rec/s / bound | others | "
        "bound, cores left | rec/s / that |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in snap["configs"]:
        n = c["replicas"]
        ratios = snap["ratios"].get(str(n))
        vs = "1" if n == base else f"**{snap['ratio'][str(n)]:.2f}x** ({', '.join(f'{r:.2f}' for r in ratios)})"
        rounds = [r for r in snap["raw"] if r["replicas"] == n]
        left = [r["two_core_rps"] * (1 - r["others_share"]) for r in rounds]
        lines.append(
            f"| {n} | {_fmt(c['rps'])} | {vs} | {' / '.join(f'{us:.1f}' for us in c['relay_us_per_record'])} | "
            f"{' / '.join(f'{s:.0%}' for s in c['relay_cpu_share'])} | "
            f"{' / '.join(_fmt(r) for r in c['relay_records'])} | {c['simulator_us_per_record']:.1f} | "
            f"{c['broker_us_per_record']:.1f} | {c['total_us_per_record']:.1f} | {_fmt(c['two_core_rps'])} | "
            f"{c['share_of_two_core']:.0%} | {c['others_share']:.0%} | {_fmt(statistics.median(left))} | "
            f"{statistics.median(r['rps'] / b for r, b in zip(rounds, left, strict=True)):.0%} |"
        )
    lines += [
        "",
        "Each run (rec/s; relay CPU as a share of a core; others' share of the cores):",
        "",
    ]
    for run in sorted({r["run"] for r in snap["raw"]}):
        parts = [
            f"{_plural(r['replicas'], 'replica')} {_fmt(r['rps'])} rec/s, relays at "
            f"{' / '.join(f'{s:.0%}' for s in r['relay_cpu_share'])}, others {r['others_share']:.0%}"
            for r in snap["raw"]
            if r["run"] == run
        ]
        lines.append(f"- run {run}: {'; '.join(parts)}")
    lines += [
        "",
        f"## Fleet: idle over replicas ({idle['integrations']:,} integrations of {idle['users_per_integration']} "
        f"users, poll interval {idle['poll_interval_seconds']:g} s, {idle['windows']} windows of "
        f"{idle['window_seconds']:g} s per replica count, medians)",
        "",
        "CPU as a share of one core. *Requests* are counted at the simulator (its own request ids, and which "
        "integration each was for): per pair and interval, and how many pairs made how many requests in a window. "
        "*Transactions*: the replicas' `relay_kafka_transaction_duration_seconds_count`; *end offsets*: the state, "
        "event and control topics' (read_uncommitted), which any transaction moves; both summed over the windows.",
        "",
        "| replicas | partitions | relay CPU (each) | vs 1 replica | broker CPU | simulator CPU | "
        "requests/pair/interval | requests per window: pairs | requests/poll (relay) | transactions | "
        "end offsets moved | rebalances | failed polls | relays' RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in idle["phases"]:
        histogram = ", ".join(f"{n}: {pairs}" for w in p["windows"][:1] for n, pairs in w["per_pair_requests"].items())
        lines.append(
            f"| {p['replicas']} | {' '.join(','.join(map(str, owned)) for owned in p['partitions'])} | "
            f"{p['cpu_share']:.2%} ({' / '.join(f'{s:.2%}' for s in p['relay_cpu_shares'])}) | "
            f"{p['cpu_vs_first']:.0%} | {p['broker_cpu_share']:.2%} | {p['simulator_cpu_share']:.2%} | "
            f"{p['requests_per_pair_per_interval']:.3f} | {histogram} (first window) | {p['requests_per_poll']:.3f} | "
            f"{p['transactions']:.0f} | {p['end_offsets_moved']} | {p['rebalances']:.0f} | {p['failed_polls']:.0f} | "
            f"{p['rss_mb']:.0f} MB |"
        )
    return lines


def _webhook_setting(webhooks: dict[str, Any], name: str) -> Any:
    """A setting of the webhooks run, or None. ``python -m tests.benchmarks`` replaces the benchmark's own ``params``
    (poll interval, batching, ...) with the runner's (``changes``, ``rate``), so the details may be missing."""
    return webhooks.get("params", {}).get(name)


def _webhook_to_event_ms(webhooks: dict[str, Any]) -> float:
    return float(webhooks["relay"]["webhook_to_event_mean_seconds"]) * 1000


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = [
        "# change-relay benchmarks",
        "",
        f"Machine: {meta.get('machine', '?')}. Commit {meta.get('commit', '?')}, {meta.get('date', '?')}"
        + (" (**--quick**: small N)" if meta.get("quick") else "")
        + ".",
        "",
        "| target | measured | | command |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t} | {m} | {ok} | `{c}` |" for t, m, ok, c in targets(results)]
    bench = results.get("benchmarks", {})
    lines += ["", "Machine load (1/5/15-min load averages) before and after each benchmark:", ""]
    for name, data in bench.items():
        lines.append(
            f"- {name}: {data.get('load_before', '?')} -> {data.get('load_after', '?')}, "
            f"{data.get('seconds', 0):.0f} s, run {data.get('date', '?')}"
        )
    snapshot = bench.get("snapshot")
    if snapshot:
        lines += [
            "",
            f"## Snapshot throughput, memory, restore (median of {snapshot['runs_per_size']} runs per N)",
            "",
            "Each column is a median over the runs; *relay / lower limit* is the median of the ratios measured within "
            "each run. *relay fetch / commit* are the relay's own mean source request time, per page, and Kafka "
            "transaction time, per transaction, which carries the pages that became ready while the previous one was "
            "in flight (group commit). They overlap: pages are fetched and diffed while earlier ones commit.",
            "",
            "| N | relay rec/s | fetch-only rec/s | produce-only rec/s | relay / lower limit | relay CPU | "
            "relay fetch ms per page / commit ms per transaction | B/entity | RSS before -> after | restore s | "
            "RSS after restore |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in snapshot["sizes"]:
            lines.append(
                f"| {s['n']:,} | {_fmt(s['relay_rps'])} | {_fmt(s['fetch_rps'])} | {_fmt(s['produce_rps'])} | "
                f"{s['ratio']:.0%} | {s['relay_cpu_share']:.0%} | "
                f"{s.get('relay_fetch_ms_per_page', math.nan):.1f} / "
                f"{s.get('relay_commit_ms_per_page', math.nan):.1f} | "
                f"{s['bytes_per_entity']:.0f} | "
                f"{s['rss_before_mb']:.0f} -> {s['rss_after_mb']:.0f} MB | {s['restore_seconds']:.2f} | "
                f"{s['restore_rss_mb']:.0f} MB |"
            )
        lines += _cpu_budget(snapshot["sizes"])
        sizes = snapshot["sizes"]
        if len(sizes) >= 2:
            a, b = sizes[-2], sizes[-1]
            slope = (b["rss_after_mb"] - b["rss_before_mb"] - a["rss_after_mb"] + a["rss_before_mb"]) * 2**20
            lines += [
                "",
                f"Marginal memory from N={a['n']:,} to N={b['n']:,}: {slope / (b['n'] - a['n']):.0f} B/entity.",
            ]
    latency = bench.get("latency")
    if latency:
        lines += [
            "",
            f"## Incremental latency ({latency['users']:,} users, {latency['churn_per_second']:.2f} changes/s, "
            f"poll interval {latency['poll_interval_seconds']:g} s, {len(latency['windows'])} windows of "
            f"{latency['window_seconds']:g} s)",
            "",
            "*no event*: changes without any event; *unexplained*: those whose entity was not deleted again before "
            "a poll could see them (an event lost; must be 0).",
            "",
            "| window | changes | p50 s | p90 s | p99 s | max s | no event | unexplained |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for w in latency["windows"]:
            lines.append(
                f"| {w['window']} | {w['matched']} | {w['p50']:.2f} | {w['p90']:.2f} | {w['p99']:.2f} | "
                f"{w['max']:.2f} | {w['unmatched']} | {w.get('unexplained', '?')} |"
            )
    fleet = bench.get("fleet")
    if fleet:
        lines += [
            "",
            f"## Fleet idle cost (poll interval {fleet['poll_interval_seconds']:g} s, "
            f"{fleet['users_per_integration']} users per integration, windows of {fleet['window_seconds']:g} s)",
            "",
            "| integrations | relay CPU (share of one core) | requests/poll | polls/pair/interval | "
            "transactions per window | failed polls | RSS |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in fleet["fleets"]:
            lines.append(
                f"| {f['integrations']:,} | {f['cpu_share']:.1%} | {f['requests_per_poll']:.3f} | "
                f"{f['polls_per_pair_per_interval']:.3f} | {f['transactions_per_window']:.0f} | "
                f"{f['failed_polls']:.0f} | {f['rss_mb']:.0f} MB |"
            )
    profile = bench.get("profile")
    if profile:
        lines += [
            "",
            f"## Per-record cost ({profile['records']:,} records, median of {profile['runs']} runs)",
            "",
            "| stage | us/record |",
            "| --- | --- |",
        ]
        lines += [f"| {stage} | {us:.1f} |" for stage, us in profile["us_per_record"].items()]
        lines += [f"| **total** (parse to produce) | **{profile['total_us_per_record']:.1f}** |"]
        if "cpu_us_per_record" in profile:
            us, ratios = profile["cpu_us_per_record"], profile["ratios"]
            lines += [
                "",
                "CPU per record against the floors (this process's CPU; medians over the runs, ratios taken within "
                "each run): *relay fetch* is the relay's SourceClient paging the simulator (request, decode, "
                "validate); *snapshot* is relay fetch + fingerprint + diff + serialize + produce; *re-fetch* is relay "
                "fetch + noop re-fetch; *fetch-only* is bare aiohttp + orjson; *produce-only* a bare transactional "
                "producer with the relay's settings sending the same messages, grouped as the relay groups them.",
                "",
                "| relay fetch | snapshot | re-fetch | fetch-only | produce-only | snapshot / (fetch-only + "
                "produce-only) | re-fetch / fetch-only |",
                "| --- | --- | --- | --- | --- | --- | --- |",
                f"| {us['relay fetch']:.1f} | {us['snapshot']:.1f} | {us['re-fetch']:.1f} | {us['fetch-only']:.1f} | "
                f"{us['produce-only']:.1f} | {ratios['snapshot / floor']:.2f} | {ratios['re-fetch / floor']:.2f} |",
            ]
        lines += ["", "cProfile of one pass (by own time):", "", "```", profile["profile"], "```"]
    webhooks = bench.get("webhooks")
    if webhooks:
        lines += _webhooks_section(webhooks)
    scale = bench.get("fleet-scale")
    if scale:
        lines += _fleet_scale_section(scale)
    if meta.get("plots_skipped"):
        lines += ["", f"Plots skipped: {meta['plots_skipped']}"]
    return "\n".join(lines) + "\n"


def _webhooks_section(webhooks: dict[str, Any]) -> list[str]:
    latency, relay = webhooks["latency_seconds"], webhooks["relay"]
    rate = _webhook_setting(webhooks, "rate_per_second") or _webhook_setting(webhooks, "rate")
    setup = [f"{webhooks['samples'] + webhooks['missing']:,} changes" + (f" at {rate:g}/s" if rate else "")]
    integrations = _webhook_setting(webhooks, "integrations")
    users = _webhook_setting(webhooks, "users_per_integration")
    if integrations and users:
        setup.append(f"{integrations} integrations of {users:,} users")
    if (poll := _webhook_setting(webhooks, "poll_interval_seconds")) is not None:
        setup.append(f"poll interval {poll:g} s")
    if (batch := _webhook_setting(webhooks, "webhook_batch_seconds")) is not None:
        setup.append(f"webhooks batched per {batch:g} s")
    return [
        "",
        f"## Webhook latency ({', '.join(setup)})",
        "",
        "From a change in the simulator (its `changed_at`) to its event read by a `read_committed` consumer, with "
        "Kombo webhooks on: the simulator's batching, the webhook, the poll it triggers and the commit. *Relay's own "
        "part* is `relay_webhook_to_event_seconds`, from the webhook's arrival to the commit of its poll's events.",
        "",
        "| p50 s | p90 s | p99 s | max s | mean s | missing | relay's own part (mean) | webhooks accepted / rejected "
        "| polls by webhook / schedule |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {latency['p50']:.3f} | {latency['p90']:.3f} | {latency['p99']:.3f} | {latency['max']:.3f} | "
        f"{latency['mean']:.3f} | {webhooks['missing']} | {_webhook_to_event_ms(webhooks):.0f} ms | "
        f"{relay['webhooks_accepted']:.0f} / {relay['webhooks_rejected']:.0f} | "
        f"{relay['polls_by_webhook']:.0f} / {relay['polls_by_schedule']:.0f} |",
    ]


def plots(results: dict[str, Any], folder: Path = RESULTS) -> list[Path]:
    """One PNG per scaling curve; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    bench = results.get("benchmarks", {})

    def save(fig: Any, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    snapshot = bench.get("snapshot")
    if snapshot:
        ns = [s["n"] for s in snapshot["sizes"]]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(ns, [s["relay_rps"] for s in snapshot["sizes"]], "o-", label="relay (end to end)")
        ax.plot(ns, [s["fetch_rps"] for s in snapshot["sizes"]], "s--", label="fetch-only limit")
        ax.plot(ns, [s["produce_rps"] for s in snapshot["sizes"]], "^--", label="produce-only limit")
        ax.set_xscale("log")
        ax.set_xlabel("users in the snapshot (N)")
        ax.set_ylabel("records per second")
        ax.set_ylim(bottom=0)
        ax.set_title("Snapshot throughput")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "snapshot_throughput.png")

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot(ns, [s["rss_after_mb"] - s["rss_before_mb"] for s in snapshot["sizes"]], "o-")
        left.set_xlabel("remembered entities (N)")
        left.set_ylabel("RSS growth (MiB)")
        left.set_title("Relay memory after a snapshot")
        left.grid(alpha=0.3)
        right.plot(ns, [s["bytes_per_entity"] for s in snapshot["sizes"]], "o-", label="measured")
        right.axhline(200, color="red", linestyle=":", label="target 200 B")
        right.set_xscale("log")
        right.set_xlabel("remembered entities (N)")
        right.set_ylabel("bytes per entity")
        right.set_ylim(bottom=0)
        right.set_title("Memory per entity")
        right.legend()
        right.grid(alpha=0.3)
        save(fig, "memory.png")

        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(ns, [s["restore_seconds"] for s in snapshot["sizes"]], "o-", label="start to ready")
        ax.axhline(15, color="red", linestyle=":", label="target 15 s")
        ax.set_xscale("log")
        ax.set_xlabel("entities in the state topic (N)")
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.set_title("Restore time")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "restore.png")

    fleet = bench.get("fleet")
    if fleet:
        sizes = [f["integrations"] for f in fleet["fleets"]]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(sizes, [100 * f["cpu_share"] for f in fleet["fleets"]], "o-", label="relay CPU")
        ax.axhline(10, color="red", linestyle=":", label="target at 1,000: 10%")
        ax.set_xlabel("integrations (poll interval 10 s, nothing changing)")
        ax.set_ylabel("% of one core")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title("Fleet idle cost")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "fleet_idle_cpu.png")

    scale = bench.get("fleet-scale")
    if scale:
        snap, idle = scale["snapshot"], scale["idle"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [_plural(c["replicas"], "replica") for c in snap["configs"]]
        xs = range(len(labels))
        left.bar(xs, [c["rps"] for c in snap["configs"]], label="relays (first to last event)")
        left.plot(xs, [c["two_core_rps"] for c in snap["configs"]], "r_", markersize=40, mew=2, label="two-core bound")
        left_bounds = [
            statistics.median(
                r["two_core_rps"] * (1 - r["others_share"]) for r in snap["raw"] if r["replicas"] == c["replicas"]
            )
            for c in snap["configs"]
        ]
        left.plot(xs, left_bounds, "k_", markersize=40, mew=2, label="that bound x cores others left")
        left.set_ylim(0, 1.45 * max(c["two_core_rps"] for c in snap["configs"]))
        left.set_xticks(list(xs), labels)
        left.set_ylabel("records per second")
        left.set_title(f"Snapshot, {snap['integrations']} x {snap['users_per_integration']:,} users")
        left.legend(loc="upper left")
        left.grid(alpha=0.3, axis="y")
        labels = [_plural(p["replicas"], "replica") for p in idle["phases"]]
        bottoms = [0.0] * len(labels)
        for i in range(max(p["replicas"] for p in idle["phases"])):
            shares = [100 * p["relay_cpu_shares"][i] if i < p["replicas"] else 0.0 for p in idle["phases"]]
            right.bar(range(len(labels)), shares, bottom=bottoms, label=f"replica {i + 1}")
            bottoms = [b + v for b, v in zip(bottoms, shares, strict=True)]
        first = 100 * idle["phases"][0]["cpu_share"]
        right.axhline(first * (1 + idle["cpu_tolerance"]), color="red", linestyle=":", label="one replica's + 10%")
        right.set_xticks(range(len(labels)), labels)
        right.set_ylabel("% of one core")
        right.set_title(f"Idle, {idle['integrations']:,} integrations, poll {idle['poll_interval_seconds']:g} s")
        right.legend(loc="upper left")
        right.grid(alpha=0.3, axis="y")
        save(fig, "fleet_scale.png")

    latency = bench.get("latency")
    if latency:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for w in latency["windows"]:
            counts = w["histogram"]
            total = sum(counts) or 1
            cumulative, xs, ys = 0, [], []
            for i, c in enumerate(counts):
                cumulative += c
                xs.append((i + 1) * 0.25)
                ys.append(cumulative / total)
            ax.step(xs, ys, where="post", label=f"window {w['window']}")
        ax.axvline(3, color="orange", linestyle=":", label="p50 target 3 s")
        ax.axvline(6, color="red", linestyle=":", label="p99 target 6 s")
        ax.set_xlabel("seconds from change to committed event")
        ax.set_ylabel("fraction of changes")
        ax.set_title("Incremental latency (CDF)")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "latency_cdf.png")
    return written
