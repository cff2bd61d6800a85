#!/usr/bin/env python3
"""Prints the load benchmark's table (scripts/load) from its JSON lines:
per backend and scenario, the service's calls per second and latency, the
same SQL alone, the health Check, the composed ceiling
1 / (1/health + 1/SQL), the service's ratio to it, and the issue's target.

    scripts/load_table.py RESULTS.jsonl
"""

import json
import sys

# The targets of the load benchmark, by the kind of call (docs/operations.md).
TARGETS = {"postgres": {"get": 0.7, "list": 0.6, "write": 0.5}, "sqlite": {"get": 0.5, "list": 0.5}}


def kind(scenario):
    verb = scenario.split(".", 1)[1]
    if verb == "get":
        return "get"
    if verb.startswith("list"):
        return "list"
    return "write"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    for backend in ("postgres", "sqlite"):
        mine = [r for r in rows if r.get("backend") == backend]
        if not mine:
            continue
        healths = [r["rps"] for r in mine if r.get("scenario") == "health" and not r.get("ceiling")]
        health = sum(healths) / len(healths) if healths else 0
        idle = next((r["idle_rss_mib"] for r in mine if "idle_rss_mib" in r), None)
        service = {r["scenario"]: r for r in mine
                   if "scenario" in r and not r.get("ceiling") and not r.get("fairness") and r["scenario"] != "health"}
        fairness = {r["fairness"]: r for r in mine if r.get("fairness")}
        sql = {r["scenario"]: r["rps"] for r in mine if r.get("ceiling")}
        peak = max((r.get("rss_mib") or 0 for r in mine if "scenario" in r and not r.get("ceiling")), default=0)
        print(f"{'PostgreSQL' if backend == 'postgres' else 'SQLite'}: health Check {health:,.0f}/s "
              f"(runs: {', '.join(f'{h:,.0f}' for h in healths)}); RSS idle {idle} MiB, at most {peak:.1f} MiB under load")
        print(f"| call | service | p50 ms | p99 ms | p99/p50 | SQL alone | ceiling | ratio | target |")
        print(f"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for scenario, r in service.items():
            alone = sql.get(scenario, 0)
            ceiling = 1 / (1 / health + 1 / alone) if health and alone else 0
            ratio = r["rps"] / ceiling if ceiling else 0
            target = TARGETS[backend].get(kind(scenario))
            verdict = "" if target is None else (f"≥ {target} {'met' if ratio >= target else 'MISSED'}")
            errors = sum(r.get("errors", {}).values())
            note = f" ({errors} errors: {r.get('first_error')})" if errors else ""
            p50, p99 = r["p50_ms"], r["p99_ms"]
            print(f"| {scenario}{note} | {r['rps']:,.0f}/s | {p50:.2f} | {p99:.2f} | {p99 / p50 if p50 else 0:.1f} "
                  f"| {alone:,.0f}/s | {ceiling:,.0f}/s | {ratio:.2f} | {verdict} |")
        if "alone" in fairness and "flooded" in fairness:
            alone, flooded = fairness["alone"], fairness["flooded"]
            print(f"Fair sharing: one caller of a quiet tenant (contact.get) p99 {alone['p99_ms']:.2f} ms alone, "
                  f"{flooded['p99_ms']:.2f} ms beside a flooding tenant ({flooded['p99_ms'] / alone['p99_ms']:.1f} x); "
                  f"p50 {alone['p50_ms']:.2f} -> {flooded['p50_ms']:.2f} ms")
        print()


if __name__ == "__main__":
    main()
