"""Throughput under load: several clients at once against one server, at each queue concurrency.

For each ``--concurrency`` value a fresh server starts (``python app.py --model tiny --concurrency C ...``), takes
untimed warm-up calls, then ``--clients`` clients (threads, each with its own keep-alive httpx client and its own
Gradio session, calling as a browser tab does) send ``--requests`` requests each, one after another, all starting
together. Reported: images per
second over the whole run, the queue wait each client saw (the ``queue_s`` the app reports: from admission to the
start of its generation), and whether any request starved.

Fair share: with N clients each keeping one request in flight, a request that joins a first-in-first-out queue
waits while the server serves one request of each of the other N-1 clients, so its fair wait is (N-1) / R, where R
is the requests per second the server completed in the same run (so the concurrency, and any slow generation, is
accounted for). No request may wait longer than 1.5 times that.

    python benchmarks/throughput.py [--clients 8] [--requests 5] [--concurrency 1 2] [--warmup 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    REQUEST,
    RESULTS_DIR,
    OtherLoad,
    Server,
    command_line,
    generate_http,
    machine,
    median,
    ms,
    new_session,
    report_footer,
    summary_row,
    write_results,
    yes_no,
)

NAME = "throughput"
STARVATION_FACTOR = 1.5


def server_args(concurrency: int, clients: int) -> tuple[str, ...]:
    return (
        "--no-warmup",
        "--rate-limit",
        "0",
        "--max-jobs-per-client",
        "0",
        "--concurrency",
        str(concurrency),
        "--max-queue",
        str(max(32, 2 * clients)),
    )


def client_loop(url: str, client_id: int, requests: int, start: threading.Barrier, t0: list[float]) -> list[dict]:
    records = []
    session = new_session()  # each client is one browser tab
    with httpx.Client(timeout=600) as client:
        start.wait()
        for _ in range(requests):
            begun = time.perf_counter() - t0[0]
            result = generate_http(client, url, session)
            t = result.details["timings"]
            records.append(
                {
                    "client": client_id,
                    "start_s": begun,
                    "end_s": time.perf_counter() - t0[0],
                    "latency_s": result.total_s,
                    "queue_s": t["queue_s"],
                    "model_s": t["model_s"],
                    "save_s": t["save_s"],
                    "images": result.images,
                }
            )
    return records


def run_level(concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    with Server(server_args(concurrency, args.clients)) as server:
        server.wait_ready()
        with httpx.Client(timeout=600) as warm, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for _ in range(args.warmup):  # every worker builds its pipeline object on its first call
                list(pool.map(lambda _i: generate_http(warm, server.url), range(concurrency)))
        t0 = [0.0]  # when the last client is ready and all start; set once by the barrier

        def all_start() -> None:
            t0[0] = time.perf_counter()

        barrier = threading.Barrier(args.clients, action=all_start)
        load = OtherLoad(psutil.Process(server.proc.pid), psutil.Process())
        with load, concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            futures = [
                pool.submit(client_loop, server.url, i, args.requests, barrier, t0) for i in range(args.clients)
            ]
            records = [r for f in futures for r in f.result()]
        command = server.display_command()
    wall = max(r["end_s"] for r in records) - min(r["start_s"] for r in records)
    service = median([r["model_s"] + r["save_s"] for r in records])
    fair = (args.clients - 1) * wall / len(records)
    longest = max(r["queue_s"] for r in records)
    per_client = []
    for i in range(args.clients):
        mine = [r for r in records if r["client"] == i]
        waits = [r["queue_s"] for r in mine]
        per_client.append(
            {
                "client": i,
                "requests": len(mine),
                "images": sum(r["images"] for r in mine),
                "mean_wait_s": sum(waits) / len(waits),
                "max_wait_s": max(waits),
                "median_latency_s": median([r["latency_s"] for r in mine]),
            }
        )
    return {
        "concurrency": concurrency,
        "server_command": command,
        "requests": len(records),
        "images": sum(r["images"] for r in records),
        "wall_s": wall,
        "images_per_s": sum(r["images"] for r in records) / wall,
        "service_median_s": service,
        "fair_wait_s": fair,
        "longest_wait_s": longest,
        "median_wait_s": median([r["queue_s"] for r in records]),
        "longest_to_fair": longest / fair,
        "no_starvation": longest <= STARVATION_FACTOR * fair,
        "others_cpu_share": load.fraction,
        "per_client": per_client,
        "records": records,
    }


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    lines = [
        "# Throughput under load",
        "",
        f"{r['clients']} clients at once, {r['requests_per_client']} requests each (one after another; "
        f"{REQUEST['width']}x{REQUEST['height']}, {REQUEST['num_inference_steps']} steps, tiny model), "
        f"after {r['warmup']} warm-up round(s).",
        "",
        "| Concurrency | Images/s | Median model + save | Median wait | Longest wait | Fair share (N-1)/R | "
        "Longest / fair | No request starved (≤ 1.5×) | Others' CPU share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in r["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['images_per_s']:.2f} | {ms(level['service_median_s'])} | "
            f"{ms(level['median_wait_s'])} | {ms(level['longest_wait_s'])} | {ms(level['fair_wait_s'])} | "
            f"{level['longest_to_fair']:.2f} | {yes_no(level['no_starvation'])} | "
            f"{level['others_cpu_share']:.0%} |"
        )
    lines += [
        "",
        "Queue wait each client saw (mean / longest):",
        "",
        "| Client | " + " | ".join(f"concurrency {level['concurrency']}" for level in r["levels"]) + " |",
        "|---|" + "---|" * len(r["levels"]),
    ]
    for i in range(r["clients"]):
        cells = [
            f"{ms(level['per_client'][i]['mean_wait_s'])} / {ms(level['per_client'][i]['max_wait_s'])}"
            for level in r["levels"]
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Fair share: {data['fair_share']}",
        "",
        "Server commands: " + "; ".join(f"`{level['server_command']}`" for level in r["levels"]),
        "",
        *report_footer(data),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8, help="clients at once (default 8)")
    p.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2],
        help="the server's --concurrency values to run (default 1 2)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds of C calls first (default 2)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    if args.clients < 2 or args.requests < 1 or args.warmup < 0 or min(args.concurrency) < 1:
        p.error("--clients must be at least 2, --requests and --concurrency at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    levels = []
    for concurrency in args.concurrency:
        levels.append(run_level(concurrency, args))
        print(
            f"concurrency {concurrency}: {levels[-1]['images_per_s']:.2f} images/s, longest wait "
            f"{ms(levels[-1]['longest_wait_s'])} (fair {ms(levels[-1]['fair_wait_s'])})",
            flush=True,
        )
    results = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "warmup": args.warmup,
        "starvation_factor": STARVATION_FACTOR,
        "levels": levels,
    }
    fair_share = (
        "with N clients each keeping one request in flight, a request joining a first-in-first-out queue "
        "waits while the server serves one request of each of the other N-1 clients: fair wait = (N-1) / R, "
        "R the requests per second the server completed in the same run (so the concurrency and any slow "
        f"generation count). A request starved if its queue wait exceeded {STARVATION_FACTOR:g} × the fair "
        "wait."
    )
    summary = []
    for level in levels:
        summary.append(
            summary_row(
                f"{args.clients} clients, concurrency {level['concurrency']}: images/s", f"{level['images_per_s']:.2f}"
            )
        )
        summary.append(
            summary_row(
                f"{args.clients} clients, concurrency {level['concurrency']}: longest wait / fair share",
                f"{ms(level['longest_wait_s'])} / {ms(level['fair_wait_s'])}",
                f"≤ {STARVATION_FACTOR:g}× fair share",
                level["no_starvation"],
            )
        )
    data = {
        "benchmark": NAME,
        "command": command_line("throughput.py", argv),
        "machine": info,
        "fair_share": fair_share,
        "results": results,
        "summary": summary,
    }
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
