"""Scaling out with ``--backend ray``, and how many waiting visitors one front end carries.

1. Throughput: a fresh server per configuration, the local backend (``--concurrency 1``, one torch thread) and the
   Ray backend with each of ``--replica-counts`` CPU replicas (``--replica-gpus 0``; a replica runs one torch thread),
   each starting its own Ray as ``python app.py --backend ray --replicas N`` does on one machine. After warm-up
   calls, ``--clients`` clients (threads, each its own session, as browser tabs) send ``--requests`` requests each;
   images per second over the whole run. On this CPU machine a replica is one core's worth of work, so two replicas
   can at best double one; on GPUs each replica is one GPU.
2. Added latency per job: one client, ``--latency-jobs`` jobs one after another, local and one Ray replica; the
   medians of the whole call as a browser sees it and of the model's own time (``model_s``), and what Ray adds.
3. Front-end capacity (local backend: it measures the front end): one job holds the model while ``--visitors``
   visitors join the queue over plain HTTP from loopback (at most 32 joins in flight) and keep their event stream
   open, as browser tabs do; meanwhile the page and ``/healthz`` are fetched again and again. Reported: their time to
   first byte, the queue length the server reports, and the server's memory idle and with everyone waiting.

    python benchmarks/cluster.py [--clients 4] [--requests 6] [--replica-counts 1 2] [--latency-jobs 10]
                                 [--visitors 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.metadata
import signal
import subprocess
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
    quantile,
    report_footer,
    request_data,
    summary_row,
    write_results,
    yes_no,
)

NAME = "cluster"
# The throughput runs use more steps than the shared request, so a job is mostly model time, as on a GPU.
THROUGHPUT_REQUEST = dict(REQUEST, num_inference_steps=8)
HEALTHZ_GOAL_S = 0.100  # as tests/test_health.py asks while jobs run
PAGE_GOAL_S = 1.0
JOINS_IN_FLIGHT = 32


# ---- servers ---------------------------------------------------------------------------------------------------


def local_server(extra: Sequence[str] = ()) -> Server:
    return Server(("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0", *extra), threads=1)


def ray_server(replicas: int) -> Server:
    return Server(
        (
            "--no-warmup",
            "--rate-limit",
            "0",
            "--max-jobs-per-client",
            "0",
            "--backend",
            "ray",
            "--replicas",
            str(replicas),
            "--replica-gpus",
            "0",
        )
    )


def wait_replicas(server: Server, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            server.check_alive()
            body = server.health(client)
            if body and body.get("replicas_ready") == count:
                return
            time.sleep(0.2)
    raise TimeoutError(f"{count} replicas were not up within {timeout:g} s:\n{server.log_tail()}")


def stop_ray_server(server: Server) -> None:
    """SIGTERM, so the server shuts down the Ray it started; then nothing of that Ray may be left (killed by pid)."""
    if server.proc is not None and server.proc.poll() is None:
        family = psutil.Process(server.proc.pid).children(recursive=True)
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(90)
        except subprocess.TimeoutExpired:
            print("the Ray server did not stop within 90 s: killed")
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    server.stop()


# ---- 1. throughput ---------------------------------------------------------------------------------------------


def client_loop(url: str, requests: int, start: threading.Barrier) -> list[dict[str, Any]]:
    records = []
    session = new_session()
    with httpx.Client(timeout=600) as client:
        start.wait()
        for _ in range(requests):
            begun = time.perf_counter()
            result = generate_http(client, url, session, THROUGHPUT_REQUEST)
            records.append(
                {
                    "start": begun,
                    "end": time.perf_counter(),
                    "images": result.images,
                    "worker": result.details["worker"],
                    "model_s": result.details["timings"]["model_s"],
                }
            )
    return records


def throughput(server: Server, name: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(timeout=600) as warm, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for _ in range(args.warmup):
            list(pool.map(lambda _i: generate_http(warm, server.url, request=THROUGHPUT_REQUEST), range(workers)))
    barrier = threading.Barrier(args.clients)
    # Ours: the server with everything it started (with Ray: its Ray and the replicas), and this benchmark.
    front = psutil.Process(server.proc.pid)
    load = OtherLoad(front, *front.children(recursive=True), psutil.Process())
    with load, concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        futures = [pool.submit(client_loop, server.url, args.requests, barrier) for _ in range(args.clients)]
        records = [r for f in futures for r in f.result()]
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    images = sum(r["images"] for r in records)
    by_worker: dict[str, int] = {}
    for r in records:
        by_worker[r["worker"]] = by_worker.get(r["worker"], 0) + 1
    return {
        "name": name,
        "server_command": server.display_command(),
        "requests": len(records),
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "median_model_s": median([r["model_s"] for r in records]),
        "jobs_per_worker": by_worker,
        "others_cpu_share": load.fraction,
    }


# ---- 2. added latency --------------------------------------------------------------------------------------------


def latency(server: Server, jobs: int) -> dict[str, Any]:
    totals, models = [], []
    with httpx.Client(timeout=600) as client:
        session = new_session()
        generate_http(client, server.url, session)  # warm
        for _ in range(jobs):
            result = generate_http(client, server.url, session)
            totals.append(result.total_s)
            models.append(result.details["timings"]["model_s"])
    return {
        "jobs": jobs,
        "median_total_s": median(totals),
        "median_model_s": median(models),
        "median_outside_model_s": median([t - m for t, m in zip(totals, models, strict=True)]),
        "totals_s": totals,
    }


# ---- 3. front-end capacity ---------------------------------------------------------------------------------------


async def hold_visitors(url: str, visitors: int, ready: threading.Event, release: threading.Event) -> list[str]:
    """Join ``visitors`` jobs (at most JOINS_IN_FLIGHT at once), keep each one's event stream open until
    ``release``; returns the outcome of each join ("queued" or why not)."""
    limits = httpx.Limits(max_connections=visitors + JOINS_IN_FLIGHT, max_keepalive_connections=JOINS_IN_FLIGHT)
    gate = asyncio.Semaphore(JOINS_IN_FLIGHT)
    outcomes: list[str] = []
    streams: list[asyncio.Task] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def stream(event_id: str) -> None:
            async with client.stream("GET", f"/gradio_api/call/generate/{event_id}") as response:
                async for _line in response.aiter_lines():
                    if release.is_set():
                        return

        async def join() -> None:
            async with gate:
                body = {"data": request_data(), "session_hash": new_session()}
                response = await client.post("/gradio_api/call/generate", json=body)
            if response.status_code != 200:
                outcomes.append(f"HTTP {response.status_code}")
                return
            outcomes.append("queued")
            streams.append(asyncio.create_task(stream(response.json()["event_id"])))

        await asyncio.gather(*(join() for _ in range(visitors)))
        ready.set()
        while not release.is_set():
            await asyncio.sleep(0.05)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return outcomes


def ttfb(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    with client.stream("GET", path) as response:
        chunks = response.iter_raw()
        next(chunks)
        elapsed = time.perf_counter() - started
        for _chunk in chunks:  # the rest, so the connection can be used again
            pass
    response.raise_for_status()
    return elapsed


def capacity(args: argparse.Namespace) -> dict[str, Any]:
    server = local_server(("--max-queue", str(args.visitors + 10)))
    with server:
        server.wait_ready()
        process = psutil.Process(server.proc.pid)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            generate_http(client, server.url)  # warm
            ttfb(client, "/")
            rss_idle = process.memory_info().rss
            # One long job holds the model, so everyone after it waits.
            blocker = threading.Thread(
                target=generate_http,
                args=(httpx.Client(timeout=600), server.url, None, dict(REQUEST, num_inference_steps=100)),
                daemon=True,
            )
            blocker.start()
            ready, release = threading.Event(), threading.Event()
            held: list[list[str]] = []
            holder = threading.Thread(
                target=lambda: held.append(asyncio.run(hold_visitors(server.url, args.visitors, ready, release))),
                daemon=True,
            )
            joined_at = time.perf_counter()
            holder.start()
            ready.wait(300)
            join_s = time.perf_counter() - joined_at
            page, health, queue = [], [], []
            for _ in range(args.samples):
                page.append(ttfb(client, "/"))
                started = time.perf_counter()
                body = client.get("/healthz").json()
                health.append(time.perf_counter() - started)
                queue.append(body["queue_length"])
            rss_waiting = process.memory_info().rss
            release.set()
            holder.join(60)
        command = server.display_command()
    outcomes = held[0] if held else []
    return {
        "visitors": args.visitors,
        "server_command": command,
        "joined": outcomes.count("queued"),
        "refused": [o for o in outcomes if o != "queued"],
        "join_all_s": join_s,
        "queue_length_min": min(queue),
        "queue_length_max": max(queue),
        "samples": args.samples,
        "page_ttfb_s": summary(page),
        "healthz_ttfb_s": summary(health),
        "rss_idle_mib": rss_idle / 2**20,
        "rss_waiting_mib": rss_waiting / 2**20,
        "per_visitor_kib": (rss_waiting - rss_idle) / 1024 / max(1, outcomes.count("queued")),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "p95": quantile(values, 0.95), "max": max(values)}


# ---- the run -----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    info = machine()
    info["versions"]["ray"] = importlib.metadata.version("ray")
    configs: list[dict[str, Any]] = []
    lat: dict[str, Any] = {}
    with local_server() as server:
        server.wait_ready()
        configs.append(throughput(server, "local", 1, args))
        lat["local"] = latency(server, args.latency_jobs)
    for count in args.replica_counts:
        server = ray_server(count)
        try:
            server.start()
            server.wait_ready()
            wait_replicas(server, count)
            configs.append(throughput(server, f"ray, {count} replica{'s' if count > 1 else ''}", count, args))
            if "ray" not in lat:  # one client uses one replica at a time: the first Ray run is enough
                lat["ray"] = dict(latency(server, args.latency_jobs), replicas=count)
        finally:
            stop_ray_server(server)
    by_name = {c["name"]: c for c in configs}
    one, two = by_name.get("ray, 1 replica"), by_name.get("ray, 2 replicas")
    results = {
        "throughput": {
            "clients": args.clients,
            "requests_per_client": args.requests,
            "warmup": args.warmup,
            "request": THROUGHPUT_REQUEST,
            "configs": configs,
            "two_over_one": two["images_per_s"] / one["images_per_s"] if one and two else None,
            "one_over_local": one["images_per_s"] / by_name["local"]["images_per_s"] if one else None,
        },
        "latency": {
            **lat,
            "request": REQUEST,
            "added_s": lat["ray"]["median_total_s"] - lat["local"]["median_total_s"] if "ray" in lat else None,
        },
        "capacity": capacity(args),
    }
    return {
        "benchmark": NAME,
        "command": command_line("cluster.py", argv),
        "machine": info,
        "method": __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].replace("``", "`"),
        "results": results,
        "summary": summary_rows(results),
    }


def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        summary_row(f"{c['name']}: images/s ({r['throughput']['clients']} clients)", f"{c['images_per_s']:.2f}")
        for c in r["throughput"]["configs"]
    ]
    if r["throughput"]["two_over_one"] is not None:
        rows.append(summary_row("ray, 2 replicas over 1", f"{r['throughput']['two_over_one']:.2f}×"))
    if r["latency"]["added_s"] is not None:
        rows.append(
            summary_row(
                "added latency per job, Ray minus local, median",
                f"{ms(r['latency']['added_s'])} ({ms(r['latency']['local']['median_total_s'])} → "
                f"{ms(r['latency']['ray']['median_total_s'])})",
            )
        )
    c = r["capacity"]
    rows += [
        summary_row(
            f"{c['visitors']} visitors waiting: page time to first byte, median / p95",
            f"{ms(c['page_ttfb_s']['median'])} / {ms(c['page_ttfb_s']['p95'])}",
            f"median ≤ {ms(PAGE_GOAL_S)}",
            c["page_ttfb_s"]["median"] <= PAGE_GOAL_S and c["joined"] == c["visitors"],
        ),
        summary_row(
            f"{c['visitors']} visitors waiting: /healthz, median / p95",
            f"{ms(c['healthz_ttfb_s']['median'])} / {ms(c['healthz_ttfb_s']['p95'])}",
            f"median ≤ {ms(HEALTHZ_GOAL_S)}",
            c["healthz_ttfb_s"]["median"] <= HEALTHZ_GOAL_S,
        ),
        summary_row(
            f"{c['visitors']} visitors waiting: server memory",
            f"{c['rss_idle_mib']:.0f} → {c['rss_waiting_mib']:.0f} MiB ({c['per_visitor_kib']:.0f} KiB/visitor)",
        ),
    ]
    return rows


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    t, lat, c = r["throughput"], r["latency"], r["capacity"]
    lines = [
        "# Scaling out with Ray Serve, and the front end's capacity",
        "",
        data["method"],
        "",
        f"## Throughput ({t['clients']} clients × {t['requests_per_client']} requests, "
        f"{t['request']['width']}x{t['request']['height']}, {t['request']['num_inference_steps']} steps, tiny model)",
        "",
        "| Backend | Images/s | Median model time | Jobs per worker | Others' CPU share |",
        "|---|---|---|---|---|",
    ]
    for config in t["configs"]:
        jobs = ", ".join(f"{n}" for n in sorted(config["jobs_per_worker"].values(), reverse=True))
        lines.append(
            f"| {config['name']} | {config['images_per_s']:.2f} | {ms(config['median_model_s'])} | {jobs} | "
            f"{config['others_cpu_share']:.0%} |"
        )
    if t["two_over_one"] is not None:
        lines += ["", f"Two replicas over one: {t['two_over_one']:.2f}×."]
    if t["one_over_local"] is not None:
        lines += [f"One replica over the local backend: {t['one_over_local']:.2f}×."]
    lines += [
        "",
        f"## Added latency per job (one client, {lat['local']['jobs']} jobs one after another, "
        f"{lat['request']['width']}x{lat['request']['height']}, {lat['request']['num_inference_steps']} steps)",
        "",
        "| Backend | Median call (browser's view) | Median model time | Median outside the model |",
        "|---|---|---|---|",
    ]
    for name in ("local", "ray"):
        if name in lat:
            x = lat[name]
            lines.append(
                f"| {name} | {ms(x['median_total_s'])} | {ms(x['median_model_s'])} | "
                f"{ms(x['median_outside_model_s'])} |"
            )
    if lat["added_s"] is not None:
        lines += ["", f"Ray adds {ms(lat['added_s'])} per job (median call, Ray minus local)."]
    lines += [
        "",
        f"## Front-end capacity ({c['visitors']} visitors waiting, local backend)",
        "",
        f"Joined: {c['joined']} of {c['visitors']} in {c['join_all_s']:.1f} s"
        + (f"; refused: {', '.join(c['refused'])}" if c["refused"] else "")
        + f". Queue length the server reported while sampling: {c['queue_length_min']}–{c['queue_length_max']}.",
        "",
        "| Fetched while they wait | Median | p95 | Max | Goal | Met |",
        "|---|---|---|---|---|---|",
        f"| page (`GET /`), time to first byte | {ms(c['page_ttfb_s']['median'])} | {ms(c['page_ttfb_s']['p95'])} | "
        f"{ms(c['page_ttfb_s']['max'])} | median ≤ {ms(PAGE_GOAL_S)} | "
        f"{yes_no(c['page_ttfb_s']['median'] <= PAGE_GOAL_S)} |",
        f"| `/healthz` | {ms(c['healthz_ttfb_s']['median'])} | {ms(c['healthz_ttfb_s']['p95'])} | "
        f"{ms(c['healthz_ttfb_s']['max'])} | median ≤ {ms(HEALTHZ_GOAL_S)} | "
        f"{yes_no(c['healthz_ttfb_s']['median'] <= HEALTHZ_GOAL_S)} |",
        "",
        f"Server memory (RSS): {c['rss_idle_mib']:.0f} MiB idle, {c['rss_waiting_mib']:.0f} MiB with everyone "
        f"waiting ({c['per_visitor_kib']:.0f} KiB per waiting visitor).",
        "",
        "Server commands: "
        + "; ".join(f"`{x['server_command']}`" for x in t["configs"])
        + f"; capacity: `{c['server_command']}`",
        "",
        *report_footer(data),
        "",
        f"Ray {data['machine']['versions']['ray']}.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4, help="clients at once in the throughput runs (default 4)")
    p.add_argument("--requests", type=int, default=6, help="requests per client (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--replica-counts", type=int, nargs="+", default=[1, 2], help="Ray replicas to run (default 1 2)")
    p.add_argument("--latency-jobs", type=int, default=10, help="jobs one after another per backend (default 10)")
    p.add_argument("--visitors", type=int, default=300, help="visitors waiting at once (default 300)")
    p.add_argument("--samples", type=int, default=20, help="page and /healthz fetches while they wait (default 20)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args, argv)
    write_results(args.out, NAME, data, to_markdown)


if __name__ == "__main__":
    main()
