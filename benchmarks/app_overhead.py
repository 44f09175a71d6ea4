"""App overhead: one request through the running app over HTTP versus the same work in a script, alternated.

The request: tiny model, 512x512, 2 steps, fixed seed. The app is timed as a browser uses it, with httpx: join the
queue (POST), stream the result (server-sent events until ``complete``), download the image; every call in one
Gradio session, as from one browser tab. The script does what a script does in one process: call the pipeline,
save the image as PNG (with the app's own ``save_png``, so both encode alike and the difference is the app's own
work). Goal: the app adds at most 5 % or 20 ms, whichever is larger, to the script's median. For information, two
more paths are timed after each pair: HTTP calls without a session (Gradio builds a new session for each, as for
separate API callers) and gradio_client (it polls its result queue in 50-100 ms sleeps).

Fairness: the server runs in a subprocess (``python app.py --model tiny --no-warmup --rate-limit 0``), the script
in this process, so they never share a GIL. Both load the pipeline with ``glmimage.models.loading.PipelineLoader``, run
torch with the same intra-op thread count (``--threads``: ``torch.set_num_threads`` here, ``OMP_NUM_THREADS`` for
the server), call it from one long-lived worker thread (the app's engine worker; here one of the same kind), and
use the same allocator setting (``glmimage.web.server.keep_freed_memory``; without it glibc hands freed memory back
after each generation and the next one faults it in again, ~30 % slower for the tiny model). Minor page faults per
call are reported, so a difference there would show. Pairs alternate which side goes first, after warm-up calls.

The machine may be shared: a pair during which other processes used more than ``--busy-limit`` of the CPU (from
/proc/stat, less this benchmark's and the server's own) does not count as quiet, and pairs go on until ``--pairs``
quiet ones or ``--max-tries`` in all. The goal is judged on the quiet pairs; figures over all pairs are given too.

    python benchmarks/app_overhead.py [--pairs 30] [--warmup 3] [--threads N] [--busy-limit 0.1] [--max-tries N]
        [--no-gradio-client] [--out DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
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
    cpu_seconds,
    generate_http,
    machine,
    median,
    minor_faults,
    ms,
    new_session,
    quantile,
    report_footer,
    request_data,
    summary_row,
    write_results,
    yes_no,
)

NAME = "app_overhead"
SERVER_ARGS = ("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0")
GOAL_FRACTION = 0.05
GOAL_FLOOR_S = 0.020
COMPARED = ("app_http", "script")
# Timed after each pair, for information: a new Gradio session per call (API callers), and gradio_client.
INFORMATION = ("app_http_new_session", "gradio_client")


class Script:
    """What a script does: the pipeline, loaded the way the app loads it, then one PNG per image; run on one
    long-lived worker thread, as the app's engine runs it."""

    def __init__(self) -> None:
        from glmimage.models.loading import PipelineLoader

        self.pipe = PipelineLoader("tiny", warmup=False).start().wait(300)
        self.folder = Path(tempfile.mkdtemp(prefix="glmimage-bench-script-"))
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="script-pipeline")

    def run(self) -> dict[str, float]:
        return self.worker.submit(self._run).result()

    def _run(self) -> dict[str, float]:
        import torch

        from glmimage.sessions import save_png

        cpu_started, faults = time.process_time(), minor_faults(os.getpid())
        started = time.perf_counter()
        output = self.pipe(
            prompt=REQUEST["prompt"],
            negative_prompt=REQUEST["negative_prompt"] or None,
            width=REQUEST["width"],
            height=REQUEST["height"],
            num_inference_steps=REQUEST["num_inference_steps"],
            guidance_scale=REQUEST["guidance_scale"],
            num_images_per_prompt=REQUEST["num_images"],
            generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]),
        )
        generated = time.perf_counter()
        for image in output.images:
            save_png(image, self.folder / f"{uuid.uuid4().hex}.png", None)
        done = time.perf_counter()
        return {
            "total_s": done - started,
            "cpu_s": time.process_time() - cpu_started,
            "page_faults": minor_faults(os.getpid()) - faults,
            "pipeline_s": generated - started,
            "save_s": done - generated,
        }

    def close(self) -> None:
        self.worker.shutdown()
        shutil.rmtree(self.folder, ignore_errors=True)


def run_app(client: httpx.Client, url: str, server: psutil.Process, session: str | None) -> dict[str, float]:
    cpu_started = cpu_seconds(server) + time.process_time()
    faults = minor_faults(server.pid)
    result = generate_http(client, url, session)
    cpu = cpu_seconds(server) + time.process_time() - cpu_started
    t = result.details["timings"]
    return {
        "total_s": result.total_s,
        "cpu_s": cpu,
        "page_faults": minor_faults(server.pid) - faults,
        "join_s": result.join_s,
        "stream_s": result.stream_s,
        "download_s": result.download_s,
        "image_bytes": result.image_bytes,
        "server_queue_s": t["queue_s"],
        "server_model_s": t["model_s"],
        "server_save_s": t["save_s"],
        "server_total_s": t["total_s"],
    }


def run_gradio_client(client: Any) -> dict[str, float]:
    started = time.perf_counter()
    client.predict(*request_data(), api_name="/generate")
    return {"total_s": time.perf_counter() - started}


def stats(samples: list[dict[str, float]]) -> dict[str, Any] | None:
    """Median, 10th and 90th percentile of the total, and the median of every part."""
    if not samples:
        return None
    totals = [s["total_s"] for s in samples]
    return {
        "n": len(samples),
        "median_s": median(totals),
        "p10_s": quantile(totals, 0.1),
        "p90_s": quantile(totals, 0.9),
        "min_s": min(totals),
        "max_s": max(totals),
        "parts_median": {
            key: median([s[key] for s in samples]) for key in samples[0] if key not in ("total_s", "busy")
        },
    }


def quiet(app: dict[str, float], script: dict[str, float], busy_limit: float) -> bool:
    """Whether other processes left the machine alone during both sides of a pair."""
    return max(app["busy"], script["busy"]) < busy_limit


def compare(app: list[dict[str, float]], script: list[dict[str, float]]) -> dict[str, Any]:
    a, s = stats(app), stats(script)
    overhead = a["median_s"] - s["median_s"]
    allowed = max(GOAL_FRACTION * s["median_s"], GOAL_FLOOR_S)
    return {
        "pairs": len(app),
        "app_http": a,
        "script": s,
        "overhead_s": overhead,
        "ratio": a["median_s"] / s["median_s"],
        "paired_difference_median_s": median([x["total_s"] - y["total_s"] for x, y in zip(app, script, strict=True)]),
        "allowed_overhead_s": allowed,
        "goal_met": overhead <= allowed,
    }


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    judged = r["quiet"] or r["all"]
    app, script, gc = judged["app_http"], judged["script"], r["gradio_client"]
    rows = [
        ("script (pipeline + PNG save, one worker thread)", script),
        ("app over HTTP (httpx, one session, as a browser tab)", app),
        ("information, all pairs: app over HTTP, a new session per call (API callers)", r["app_http_new_session"]),
    ]
    if gc:
        rows.append(("information, all pairs: app over gradio_client (one session)", gc))
    which = (
        f"the {r['quiet']['pairs']} quiet pairs (others used under {r['busy_limit']:.0%} of the CPU during "
        f"both sides) of {r['all']['pairs']} run"
        if r["quiet"]
        else f"all {r['all']['pairs']} pairs (none was quiet)"
    )
    lines = [
        "# App overhead",
        "",
        f"The same request ({REQUEST['width']}x{REQUEST['height']}, {REQUEST['num_inference_steps']} steps, seed "
        f"{REQUEST['seed']}, tiny model), app and script alternated, after {r['warmup']} warm-up calls of each. "
        f"Figures from {which}.",
        "",
        "| Path | Median | p10 | p90 | Ratio to script |",
        "|---|---|---|---|---|",
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | {ms(s['median_s'])} | {ms(s['p10_s'])} | {ms(s['p90_s'])} | "
            f"{s['median_s'] / script['median_s']:.3f} |"
        )
    lines += [
        "",
        f"**App overhead: {ms(judged['overhead_s'])} ({(judged['ratio'] - 1) * 100:+.1f} %)**; median of the "
        f"per-pair differences {ms(judged['paired_difference_median_s'])}. Goal: at most "
        f"{ms(judged['allowed_overhead_s'])} (5 % or 20 ms, whichever is larger). Met: {yes_no(judged['goal_met'])}.",
        "",
        f"Over all {r['all']['pairs']} pairs, quiet or not: script {ms(r['all']['script']['median_s'])}, app "
        f"{ms(r['all']['app_http']['median_s'])}, overhead {ms(r['all']['overhead_s'])}, median of the per-pair "
        f"differences {ms(r['all']['paired_difference_median_s'])}.",
        "",
        "Where the time goes (medians):",
        "",
        "| Part | Script | App |",
        "|---|---|---|",
        f"| pipeline | {ms(script['parts_median']['pipeline_s'])} | "
        f"{ms(app['parts_median']['server_model_s'])} (server's model_s) |",
        f"| PNG save | {ms(script['parts_median']['save_s'])} | "
        f"{ms(app['parts_median']['server_save_s'])} (server's save_s) |",
        f"| CPU time (script: this process; app: server + client) | {ms(script['parts_median']['cpu_s'])} | "
        f"{ms(app['parts_median']['cpu_s'])} |",
        f"| minor page faults per call | {script['parts_median']['page_faults']:.0f} | "
        f"{app['parts_median']['page_faults']:.0f} (server) |",
        f"| queue wait | – | {ms(app['parts_median']['server_queue_s'])} (server's queue_s) |",
        f"| server total (validator end to result) | – | {ms(app['parts_median']['server_total_s'])} |",
        f"| client: POST until event id | – | {ms(app['parts_median']['join_s'])} |",
        f"| client: event id until `complete` | – | {ms(app['parts_median']['stream_s'])} |",
        f"| client: image download | – | {ms(app['parts_median']['download_s'])} "
        f"({app['parts_median']['image_bytes'] / 1024:.0f} KiB) |",
        "",
        f"How it was run: {data['method']}",
        "",
        *report_footer(data),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="quiet pairs wanted (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each path first (default 3)")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads for both the app and the script (default: torch's, here %(default)s)",
    )
    p.add_argument(
        "--busy-limit",
        type=float,
        default=0.10,
        help="a side is quiet when other processes used less than this share of the CPU (default 0.1)",
    )
    p.add_argument("--max-tries", type=int, help="most pairs run in all (default 3 x --pairs)")
    p.add_argument(
        "--gradio-client",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time gradio_client, for information (default on)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    args.max_tries = args.max_tries or 3 * args.pairs
    if args.pairs < 1 or args.warmup < 0 or args.threads < 1 or args.max_tries < args.pairs:
        p.error("--pairs and --threads must be at least 1, --warmup at least 0, --max-tries at least --pairs")
    return args


def measure(args: argparse.Namespace, server: Server, script: Script) -> dict[str, list[dict[str, float]]]:
    """Alternated pairs until ``--pairs`` quiet ones or ``--max-tries`` in all; every sample keeps its ``busy``."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in (*COMPARED, *INFORMATION)}
    server_process, me = psutil.Process(server.proc.pid), psutil.Process()
    session = new_session()
    with httpx.Client(timeout=120) as client:
        paths: dict[str, Callable[[], dict[str, float]]] = {
            "app_http": lambda: run_app(client, server.url, server_process, session),
            "script": script.run,
            "app_http_new_session": lambda: run_app(client, server.url, server_process, None),
        }
        gc_client = None
        if args.gradio_client:
            from gradio_client import Client

            gc_client = Client(server.url, verbose=False)
            paths["gradio_client"] = lambda: run_gradio_client(gc_client)
        for _ in range(args.warmup):
            for path in paths.values():
                path()
        quiet_pairs = 0
        for i in range(args.max_tries):
            for name in ("app_http", "script") if i % 2 == 0 else ("script", "app_http"):
                with OtherLoad(server_process, me) as load:
                    sample = paths[name]()
                samples[name].append(dict(sample, busy=load.fraction))
            for name in INFORMATION:
                if name in paths:
                    samples[name].append(paths[name]())
            app, base = samples["app_http"][-1], samples["script"][-1]
            quiet_pairs += quiet(app, base, args.busy_limit)
            print(
                f"pair {i + 1}: app {ms(app['total_s'])} (others {app['busy']:.0%}), script "
                f"{ms(base['total_s'])} (others {base['busy']:.0%}); {quiet_pairs}/{args.pairs} quiet",
                flush=True,
            )
            if quiet_pairs >= args.pairs:
                break
        if gc_client:
            gc_client.close()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from glmimage.web.server import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as app.py does in the server
    info = machine()
    server = Server(SERVER_ARGS, threads=args.threads).start()
    script = None
    try:
        script = Script()  # loads while the server starts
        server.wait_ready()
        samples = measure(args, server, script)
    finally:
        server.stop()
        if script is not None:
            script.close()

    pairs = list(zip(samples["app_http"], samples["script"], strict=True))
    quiet_app = [a for a, s in pairs if quiet(a, s, args.busy_limit)]
    quiet_script = [s for a, s in pairs if quiet(a, s, args.busy_limit)]
    results = {
        "pairs_wanted": args.pairs,
        "warmup": args.warmup,
        "torch_threads": args.threads,
        "busy_limit": args.busy_limit,
        "request": REQUEST,
        "quiet": compare(quiet_app, quiet_script) if quiet_app else None,
        "all": compare(samples["app_http"], samples["script"]),
        "app_http_new_session": stats(samples["app_http_new_session"]),
        "gradio_client": stats(samples["gradio_client"]),
        "samples": {
            name: [{key: round(value, 5) for key, value in s.items()} for s in values]
            for name, values in samples.items()
        },
    }
    judged = results["quiet"] or results["all"]
    results["goal_met"] = judged["goal_met"]
    method = (
        f"the server in a subprocess (`{server.display_command()}`), the script in the benchmark process "
        f"(no shared GIL); both load the pipeline with glmimage.models.loading.PipelineLoader, run torch with "
        f"{args.threads} intra-op threads (torch.set_num_threads here, OMP_NUM_THREADS for the server), "
        "call it from one long-lived worker thread with glibc told to keep freed memory "
        "(glmimage.web.server.keep_freed_memory); both save with glmimage.sessions.save_png (PNG, "
        "compress_level=1). Each pair alternates which side goes first. The app is timed from the POST to the "
        "last image byte with one keep-alive httpx client, every call in one Gradio session (as one browser "
        "tab). A pair is quiet when other processes used less "
        f"than {args.busy_limit:.0%} of the machine's CPU during each side."
    )
    quiet_note = f"{judged['pairs']} quiet pairs" if results["quiet"] else f"all {judged['pairs']} pairs, none quiet"
    data = {
        "benchmark": NAME,
        "command": command_line("app_overhead.py", argv),
        "machine": info,
        "method": method,
        "results": results,
        "summary": [
            summary_row(f"script median, pipeline + PNG ({quiet_note})", ms(judged["script"]["median_s"])),
            summary_row(f"app median over HTTP ({quiet_note})", ms(judged["app_http"]["median_s"])),
            summary_row(
                "app overhead",
                f"{ms(judged['overhead_s'])} ({(judged['ratio'] - 1) * 100:+.1f} %)",
                f"≤ {ms(judged['allowed_overhead_s'])} (5 % or 20 ms)",
                judged["goal_met"],
            ),
            summary_row(
                "app median over HTTP, a new session per call (information)",
                ms(results["app_http_new_session"]["median_s"]),
            ),
            *(
                [summary_row("gradio_client median (information)", ms(results["gradio_client"]["median_s"]))]
                if results["gradio_client"]
                else []
            ),
        ],
    }
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
