"""Memory: resident memory (RSS) of the server process after 20 and after 300 generations.

RSS is read (psutil) after every generation, so each level is the median of the last ``--window`` samples up to
that point (one sample can catch a freed tensor not yet given back). The noise band is the spread (max - min)
of the samples in the baseline window, at least 2 MiB; the goal is growth from the baseline to the end within
that band, for one visitor and for API callers once Gradio's session cap is reached. The
slope of a least-squares line through every sample from the baseline on is given as KiB per generation.

Three scenarios, each on a fresh server (``python app.py --model tiny --no-warmup --rate-limit 0 ...``):

- ``visitor``: one session making every generation (gradio_client keeps one session, as a browser tab does);
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
from collections.abc import Callable, Sequence
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
    machine_line,
    median,
    request_data,
    summary_row,
    write_results,
    yes_no,
)

NAME = "memory"
SCENARIOS = {
    "visitor": "one session, every generation (gradio_client, as a browser tab)",
    "api": "a new session per generation (plain HTTP /call, as separate API callers)",
    "api-capped": "a new session per generation, --max-sessions at the baseline",
}
MIB = 2**20
NOISE_FLOOR_MIB = 2.0  # below this a spread is page-granularity jitter, not a measure of noise


def slope_per_step(xs: Sequence[float], ys: Sequence[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def run_scenario(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    extra = ("--max-sessions", str(args.baseline)) if scenario == "api-capped" else ()
    with Server(("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0", *extra)) as server:
        ready_s = server.wait_ready()
        process = psutil.Process(server.proc.pid)
        rss_ready = process.memory_info().rss
        with httpx.Client(timeout=120) as http:
            generate: Callable[[], Any]
            if scenario == "visitor":
                from gradio_client import Client

                client = Client(server.url, verbose=False)
                generate = lambda: client.predict(*request_data(), api_name="/generate")  # noqa: E731
            else:
                generate = lambda: generate_http(http, server.url)  # noqa: E731
            samples = []
            started = time.perf_counter()
            for i in range(1, args.generations + 1):
                generate()
                samples.append(process.memory_info().rss)
                if i % 50 == 0:
                    print(f"{scenario}: {i}/{args.generations} generations, RSS {samples[-1] / MIB:.0f} MiB",
                          flush=True)
            elapsed = time.perf_counter() - started
            if scenario == "visitor":
                client.close()
        command = server.display_command()
    base_window = samples[args.baseline - args.window:args.baseline]
    end_window = samples[-args.window:]
    baseline, end = median(base_window), median(end_window)
    noise = max(max(base_window) - min(base_window), NOISE_FLOOR_MIB * MIB)
    steps = range(args.baseline, args.generations + 1)
    slope = slope_per_step(list(steps), [samples[i - 1] for i in steps])
    return {"scenario": scenario, "description": SCENARIOS[scenario], "server_command": command,
            "ready_s": ready_s, "seconds": elapsed, "rss_ready_mib": rss_ready / MIB,
            "rss_at_baseline_mib": samples[args.baseline - 1] / MIB, "rss_at_end_mib": samples[-1] / MIB,
            "baseline_level_mib": baseline / MIB, "end_level_mib": end / MIB, "growth_mib": (end - baseline) / MIB,
            "noise_mib": noise / MIB, "slope_kib_per_generation": slope / 1024,
            "within_noise": end - baseline <= noise, "rss_mib": [round(s / MIB, 2) for s in samples]}


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    b, n, w = r["baseline"], r["generations"], r["window"]
    lines = [
        "# Memory",
        "",
        f"RSS of the server process (tiny model, 512x512, 2 steps) after {b} and after {n} generations. A level is "
        f"the median of the last {w} samples (one after every generation); noise is the spread of the samples "
        f"after generations {b - w + 1}–{b}, at least {NOISE_FLOOR_MIB:g} MiB.",
        "",
        f"| Scenario | RSS ready | RSS after {b} (level) | RSS after {n} (level) | Growth | Noise | Slope | "
        "Growth within noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["scenarios"]:
        lines.append(f"| {s['scenario']}: {s['description']} | {s['rss_ready_mib']:.0f} MiB | "
                     f"{s['rss_at_baseline_mib']:.0f} ({s['baseline_level_mib']:.0f}) MiB | "
                     f"{s['rss_at_end_mib']:.0f} ({s['end_level_mib']:.0f}) MiB | {s['growth_mib']:+.1f} MiB | "
                     f"{s['noise_mib']:.1f} MiB | {s['slope_kib_per_generation']:+.1f} KiB/generation | "
                     f"{yes_no(s['within_noise'])}{' (information)' if s['scenario'] == 'api' else ''} |")
    lines += [
        "",
        "Gradio keeps a `SessionState` (a copy of the page's component config) for every session until "
        "`--max-sessions` (default 2000) evicts the oldest; each plain `/gradio_api/call` request is a new session. "
        "The `api` slope is that cost per new session; `api-capped` shows it stops at the cap.",
        "",
        "Server commands: " + "; ".join(f"`{s['server_command']}`" for s in r["scenarios"]),
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {machine_line(data['machine'])}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generations", type=int, default=300, help="generations in all (default 300)")
    p.add_argument("--baseline", type=int, default=20, help="the generation RSS is compared from (default 20)")
    p.add_argument("--window", type=int, default=10, help="samples per level (default 10)")
    p.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS),
                   help="which to run (default all)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    if not 1 <= args.window <= args.baseline < args.generations:
        p.error("need 1 <= --window <= --baseline < --generations")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    scenarios = [run_scenario(name, args) for name in args.scenarios]
    results = {"generations": args.generations, "baseline": args.baseline, "window": args.window,
               "scenarios": scenarios}
    summary = []
    for s in scenarios:
        growth = (f"{s['growth_mib']:+.1f} MiB ({s['slope_kib_per_generation']:+.0f} KiB/generation; "
                  f"{s['baseline_level_mib']:.0f} → {s['end_level_mib']:.0f} MiB)")
        measure = f"RSS growth, {s['scenario']}, generation {args.baseline} → {args.generations}"
        if s["scenario"] == "api":  # expected: Gradio's per-session state, up to --max-sessions
            summary.append(summary_row(measure, growth, "information: Gradio's per-session state, bounded by "
                                       "--max-sessions (see api-capped)"))
        else:
            summary.append(summary_row(measure, growth, f"within noise ({s['noise_mib']:.1f} MiB)",
                                       s["within_noise"]))
    data = {"benchmark": NAME, "command": command_line("memory.py", argv), "machine": info, "results": results,
            "summary": summary}
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
