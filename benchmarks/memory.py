"""Memory: resident memory (RSS) of the server process after 20 and after 300 generations.

RSS is read (psutil) after every generation; the levels after the baseline and at the end are medians of the last
``--window`` samples up to each. Growth is the end level minus the baseline level. RSS moves in steps of several MiB
when the allocator takes or gives back a block (a step: a change of at least 4 MiB between two generations), so the
noise band is one such step, the largest seen from the baseline on (at least 2 MiB): "growth within noise" means
the memory grew by no more than one allocator step. What grew between the steps (the drift) is reported per
generation. The goal holds for one visitor and for API callers once Gradio's session cap is reached.

Three scenarios, each on a fresh server (``python app.py --model tiny --no-warmup --rate-limit 0 ...``):

- ``visitor``: one session making every generation, as one browser tab (plain HTTP with a fixed session id);
- ``api``: a new session per generation (plain HTTP ``/gradio_api/call/generate``, as separate API callers).
  Gradio keeps a per-session copy of the page config (its ``SessionState``) until ``--max-sessions`` pushes the
  oldest out, so RSS grows per new session up to that cap;
- ``api-capped``: the same with ``--max-sessions`` set to the baseline, to show that growth stops at the cap.

    python benchmarks/memory.py [--generations 300] [--baseline 20] [--window 10]
        [--scenarios visitor api api-capped] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    RESULTS_DIR,
    Server,
    command_line,
    generate_http,
    machine,
    median,
    new_session,
    report_footer,
    summary_row,
    write_results,
    yes_no,
)

NAME = "memory"
SCENARIOS = {
    "visitor": "one session, every generation (as one browser tab)",
    "api": "a new session per generation (plain HTTP /call, as separate API callers)",
    "api-capped": "a new session per generation, --max-sessions at the baseline",
}
MIB = 2**20
NOISE_FLOOR_MIB = 2.0  # below this a spread is page-granularity jitter, not a measure of noise
STEP_MIB = 4.0  # a change this large between two generations is the allocator taking or giving back a block


def run_scenario(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    extra = ("--max-sessions", str(args.baseline)) if scenario == "api-capped" else ()
    with Server(("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0", *extra)) as server:
        ready_s = server.wait_ready()
        process = psutil.Process(server.proc.pid)
        rss_ready = process.memory_info().rss
        session = new_session() if scenario == "visitor" else None
        with httpx.Client(timeout=120) as client:
            samples = []
            started = time.perf_counter()
            for i in range(1, args.generations + 1):
                generate_http(client, server.url, session)
                samples.append(process.memory_info().rss)
                if i % 50 == 0:
                    print(
                        f"{scenario}: {i}/{args.generations} generations, RSS {samples[-1] / MIB:.0f} MiB", flush=True
                    )
            elapsed = time.perf_counter() - started
        command = server.display_command()
    baseline = median(samples[args.baseline - args.window : args.baseline]) / MIB
    end = median(samples[-args.window :]) / MIB
    steps = [
        {"generation": i + 1, "mib": round((samples[i] - samples[i - 1]) / MIB, 2)}
        for i in range(args.baseline, args.generations)
        if abs(samples[i] - samples[i - 1]) >= STEP_MIB * MIB
    ]
    noise = max([NOISE_FLOOR_MIB] + [abs(step["mib"]) for step in steps])
    drift = end - baseline - sum(step["mib"] for step in steps)
    return {
        "scenario": scenario,
        "description": SCENARIOS[scenario],
        "server_command": command,
        "ready_s": ready_s,
        "seconds": elapsed,
        "rss_ready_mib": rss_ready / MIB,
        "rss_at_baseline_mib": samples[args.baseline - 1] / MIB,
        "rss_at_end_mib": samples[-1] / MIB,
        "baseline_level_mib": baseline,
        "end_level_mib": end,
        "growth_mib": end - baseline,
        "steps": steps,
        "noise_mib": noise,
        "drift_mib": drift,
        "drift_kib_per_generation": drift * 1024 / (args.generations - args.baseline),
        "within_noise": end - baseline <= noise,
        "rss_mib": [round(s / MIB, 2) for s in samples],
    }


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    b, n, w = r["baseline"], r["generations"], r["window"]
    lines = [
        "# Memory",
        "",
        f"RSS of the server process (tiny model, 512x512, 2 steps), read after every generation. After {b} and "
        f"after {n}: the sample, and in brackets the median of the last {w} (the levels). Growth: the end level "
        f"minus the level after {b}. Steps: changes of at least {STEP_MIB:g} MiB between two generations (the "
        "allocator taking or giving back a block); noise: the largest step, at least "
        f"{NOISE_FLOOR_MIB:g} MiB, so growth within noise means no more than one allocator step. Drift: the growth "
        "between the steps.",
        "",
        f"| Scenario | RSS ready | RSS after {b} | RSS after {n} | Growth {b} → {n} | Steps (generation: MiB) | "
        "Noise | Drift | Growth within noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["scenarios"]:
        steps = ", ".join(f"{step['generation']}: {step['mib']:+.0f}" for step in s["steps"]) or "none"
        lines.append(
            f"| {s['scenario']}: {s['description']} | {s['rss_ready_mib']:.0f} MiB | "
            f"{s['rss_at_baseline_mib']:.0f} ({s['baseline_level_mib']:.0f}) MiB | "
            f"{s['rss_at_end_mib']:.0f} ({s['end_level_mib']:.0f}) MiB | {s['growth_mib']:+.1f} MiB | "
            f"{steps} | {s['noise_mib']:.1f} MiB | {s['drift_mib']:+.1f} MiB "
            f"({s['drift_kib_per_generation']:+.1f} KiB/generation) | "
            f"{yes_no(s['within_noise'])}{' (information)' if s['scenario'] == 'api' else ''} |"
        )
    lines += [
        "",
        "Gradio keeps a `SessionState` (a copy of the page's component config) for every session until "
        "`--max-sessions` (default 2000) evicts the oldest; each plain `/gradio_api/call` request is a new session. "
        "The `api` drift is mostly that cost per new session; `api-capped` shows what is left once the cap is "
        "reached. The Python objects that grow per generation in one session (traced with tracemalloc) are bounded "
        "bookkeeping: the session log (at most 200 entries) and Gradio's per-event records (at most 10,000 "
        "events), plus Gradio's set of served file paths, which keeps the path of every image the app later "
        "deletes itself (~0.2 KiB per image, never pruned).",
        "",
        "Server commands: " + "; ".join(f"`{s['server_command']}`" for s in r["scenarios"]),
        "",
        *report_footer(data),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generations", type=int, default=300, help="generations in all (default 300)")
    p.add_argument("--baseline", type=int, default=20, help="the generation RSS is compared from (default 20)")
    p.add_argument("--window", type=int, default=10, help="samples per level (default 10)")
    p.add_argument(
        "--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), help="which to run (default all)"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    if not 1 <= args.window <= args.baseline < args.generations:
        p.error("need 1 <= --window <= --baseline < --generations")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    scenarios = [run_scenario(name, args) for name in args.scenarios]
    results = {
        "generations": args.generations,
        "baseline": args.baseline,
        "window": args.window,
        "scenarios": scenarios,
    }
    summary = []
    for s in scenarios:
        growth = (
            f"{s['growth_mib']:+.1f} MiB ({s['baseline_level_mib']:.0f} → {s['end_level_mib']:.0f} MiB; "
            f"{len(s['steps'])} allocator step(s), drift {s['drift_kib_per_generation']:+.0f} KiB/generation)"
        )
        measure = f"RSS growth, {s['scenario']}, generation {args.baseline} → {args.generations}"
        if s["scenario"] == "api":  # expected: Gradio's per-session state, up to --max-sessions
            summary.append(
                summary_row(
                    measure,
                    growth,
                    "information: Gradio's per-session state, bounded by --max-sessions (see api-capped)",
                )
            )
        else:
            summary.append(
                summary_row(
                    measure, growth, f"within noise, one allocator step ({s['noise_mib']:.1f} MiB)", s["within_noise"]
                )
            )
    data = {
        "benchmark": NAME,
        "command": command_line("memory.py", argv),
        "machine": info,
        "results": results,
        "summary": summary,
    }
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
