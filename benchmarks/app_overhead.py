"""App overhead: one request through the running app over HTTP versus the same work in a script, alternated.

The request: tiny model, 512x512, 2 steps, fixed seed. The app is timed as a browser uses it, with httpx: join the
queue (POST), stream the result (server-sent events until ``complete``), download the image. The script does what
a script does in one process: call the pipeline, save the image as PNG (with the app's own ``save_png``, so both
encode alike and the difference is the app's own work). Goal: the app adds at most 5 % or 20 ms, whichever is
larger, to the script's median.

Fairness: the server runs in a subprocess (``python app.py --model tiny --no-warmup --rate-limit 0``), the script
in this process, so they never share a GIL; both load the pipeline with ``glmimage.loading.PipelineLoader`` and
run torch with the same intra-op thread count (``--threads``: ``torch.set_num_threads`` here, ``OMP_NUM_THREADS``
for the server); each calls the pipeline from one long-lived thread (here the main thread, in the app its
dedicated engine worker). Pairs alternate which side goes first, after warm-up calls of each. gradio_client's time
for the same call is measured beside them, for information only (it polls its result queue in 50-100 ms sleeps).

    python benchmarks/app_overhead.py [--pairs 30] [--warmup 3] [--threads N] [--no-gradio-client] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    REQUEST,
    RESULTS_DIR,
    Server,
    command_line,
    cpu_seconds,
    generate_http,
    machine,
    machine_line,
    median,
    ms,
    quantile,
    request_data,
    summary_row,
    write_results,
    yes_no,
)

NAME = "app_overhead"
SERVER_ARGS = ("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0")
GOAL_FRACTION = 0.05
GOAL_FLOOR_S = 0.020


class Script:
    """What a script does: the pipeline, loaded the way the app loads it, then one PNG per image."""

    def __init__(self) -> None:
        from glmimage.loading import PipelineLoader

        self.pipe = PipelineLoader("tiny", warmup=False).start().wait(300)
        self.folder = Path(tempfile.mkdtemp(prefix="glmimage-bench-script-"))

    def run(self) -> dict[str, float]:
        import torch

        from glmimage.sessions import save_png

        cpu_started = time.process_time()
        started = time.perf_counter()
        output = self.pipe(prompt=REQUEST["prompt"], negative_prompt=REQUEST["negative_prompt"] or None,
                           width=REQUEST["width"], height=REQUEST["height"],
                           num_inference_steps=REQUEST["num_inference_steps"],
                           guidance_scale=REQUEST["guidance_scale"], num_images_per_prompt=REQUEST["num_images"],
                           generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]))
        generated = time.perf_counter()
        for image in output.images:
            save_png(image, self.folder / f"{uuid.uuid4().hex}.png", None)
        done = time.perf_counter()
        return {"total_s": done - started, "cpu_s": time.process_time() - cpu_started,
                "pipeline_s": generated - started, "save_s": done - generated}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_app(client: httpx.Client, url: str, server: psutil.Process) -> dict[str, float]:
    cpu_started = cpu_seconds(server) + time.process_time()
    result = generate_http(client, url)
    cpu = cpu_seconds(server) + time.process_time() - cpu_started
    t = result.details["timings"]
    return {"total_s": result.total_s, "cpu_s": cpu, "join_s": result.join_s, "stream_s": result.stream_s,
            "download_s": result.download_s, "image_bytes": result.image_bytes, "server_queue_s": t["queue_s"],
            "server_model_s": t["model_s"], "server_save_s": t["save_s"], "server_total_s": t["total_s"]}


def run_gradio_client(client: Any) -> dict[str, float]:
    started = time.perf_counter()
    client.predict(*request_data(), api_name="/generate")
    return {"total_s": time.perf_counter() - started}


def stats(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Median, 10th and 90th percentile of the total, and the median of every part."""
    totals = [s["total_s"] for s in samples]
    return {"median_s": median(totals), "p10_s": quantile(totals, 0.1), "p90_s": quantile(totals, 0.9),
            "min_s": min(totals), "max_s": max(totals),
            "parts_median_s": {key: median([s[key] for s in samples]) for key in samples[0] if key != "total_s"}}


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    app, script, gc = r["app_http"], r["script"], r["gradio_client"]
    rows = [("script in one process (pipeline + PNG save)", script), ("app over HTTP (httpx, as a browser)", app)]
    if gc:
        rows.append(("app over gradio_client (information only)", gc))
    lines = [
        "# App overhead",
        "",
        f"The same request ({REQUEST['width']}x{REQUEST['height']}, {REQUEST['num_inference_steps']} steps, seed "
        f"{REQUEST['seed']}, tiny model) {r['pairs']} times each, alternated, after {r['warmup']} warm-up calls "
        "of each.",
        "",
        "| Path | Median | p10 | p90 | Ratio to script |",
        "|---|---|---|---|---|",
    ]
    for label, s in rows:
        lines.append(f"| {label} | {ms(s['median_s'])} | {ms(s['p10_s'])} | {ms(s['p90_s'])} | "
                     f"{s['median_s'] / script['median_s']:.3f} |")
    lines += [
        "",
        f"**App overhead: {ms(r['overhead_s'])} ({(r['ratio'] - 1) * 100:+.1f} %)**; median of the per-pair "
        f"differences {ms(r['paired_difference_median_s'])}. Goal: at most {ms(r['allowed_overhead_s'])} "
        f"(5 % or 20 ms, whichever is larger). Met: {yes_no(r['goal_met'])}.",
        "",
        "Where the time goes (medians):",
        "",
        "| Part | Script | App |",
        "|---|---|---|",
        f"| pipeline | {ms(script['parts_median_s']['pipeline_s'])} | "
        f"{ms(app['parts_median_s']['server_model_s'])} (server's model_s) |",
        f"| PNG save | {ms(script['parts_median_s']['save_s'])} | "
        f"{ms(app['parts_median_s']['server_save_s'])} (server's save_s) |",
        f"| CPU time (script process; app: server + client processes) | {ms(script['parts_median_s']['cpu_s'])} | "
        f"{ms(app['parts_median_s']['cpu_s'])} |",
        f"| queue wait | – | {ms(app['parts_median_s']['server_queue_s'])} (server's queue_s) |",
        f"| server total (validator end to result) | – | {ms(app['parts_median_s']['server_total_s'])} |",
        f"| client: POST until event id | – | {ms(app['parts_median_s']['join_s'])} |",
        f"| client: event id until `complete` | – | {ms(app['parts_median_s']['stream_s'])} |",
        f"| client: image download | – | {ms(app['parts_median_s']['download_s'])} "
        f"({app['parts_median_s']['image_bytes'] / 1024:.0f} KiB) |",
        "",
        f"How it was run: {data['method']}",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {machine_line(data['machine'])}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="timed pairs (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each path first (default 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads for both the app and the script (default: torch's, here %(default)s)")
    p.add_argument("--gradio-client", action=argparse.BooleanOptionalAction, default=True,
                   help="also time gradio_client, for information (default on)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--pairs and --threads must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    server = Server(SERVER_ARGS, threads=args.threads).start()
    script = None
    try:
        script = Script()  # loads while the server starts
        server.wait_ready()
        samples: dict[str, list[dict[str, float]]] = {"app_http": [], "script": [], "gradio_client": []}
        with httpx.Client(timeout=120) as client:
            gc_client = None
            if args.gradio_client:
                from gradio_client import Client

                gc_client = Client(server.url, verbose=False)
            server_process = psutil.Process(server.proc.pid)
            paths = {"app_http": lambda: run_app(client, server.url, server_process), "script": script.run}
            for _ in range(args.warmup):
                paths["app_http"]()
                paths["script"]()
                if gc_client:
                    run_gradio_client(gc_client)
            for i in range(args.pairs):
                order = ("app_http", "script") if i % 2 == 0 else ("script", "app_http")
                for name in order:
                    samples[name].append(paths[name]())
                if gc_client:
                    samples["gradio_client"].append(run_gradio_client(gc_client))
                print(f"pair {i + 1}/{args.pairs}: app {ms(samples['app_http'][-1]['total_s'])}, "
                      f"script {ms(samples['script'][-1]['total_s'])}", flush=True)
            if gc_client:
                gc_client.close()
    finally:
        server.stop()
        if script is not None:
            script.close()

    app, base = stats(samples["app_http"]), stats(samples["script"])
    overhead = app["median_s"] - base["median_s"]
    allowed = max(GOAL_FRACTION * base["median_s"], GOAL_FLOOR_S)
    results = {
        "pairs": args.pairs,
        "warmup": args.warmup,
        "torch_threads": args.threads,
        "request": REQUEST,
        "app_http": app,
        "script": base,
        "gradio_client": stats(samples["gradio_client"]) if samples["gradio_client"] else None,
        "overhead_s": overhead,
        "ratio": app["median_s"] / base["median_s"],
        "paired_difference_median_s": median([a["total_s"] - s["total_s"]
                                              for a, s in zip(samples["app_http"], samples["script"], strict=True)]),
        "allowed_overhead_s": allowed,
        "goal_met": overhead <= allowed,
        "samples_s": {name: [round(s["total_s"], 5) for s in values] for name, values in samples.items()},
    }
    method = (f"the server in a subprocess (`{server.display_command()}`), the script in the benchmark process "
              f"(no shared GIL); both load the pipeline with glmimage.loading.PipelineLoader, run torch with "
              f"{args.threads} intra-op threads (torch.set_num_threads here, OMP_NUM_THREADS for the server) and "
              "call it from one long-lived thread (the main thread here, the engine's worker in the app); both save "
              "with glmimage.sessions.save_png (PNG, compress_level=1). Each pair alternates which side goes "
              "first. The app is timed from the POST to the last image byte with one keep-alive httpx client.")
    data = {"benchmark": NAME, "command": command_line("app_overhead.py", argv), "machine": info, "method": method,
            "results": results,
            "summary": [
                summary_row("script median (pipeline + PNG)", ms(base["median_s"])),
                summary_row("app median over HTTP", ms(app["median_s"])),
                summary_row("app overhead", f"{ms(overhead)} ({(results['ratio'] - 1) * 100:+.1f} %)",
                            f"≤ {ms(allowed)} (5 % or 20 ms)", results["goal_met"]),
                *([summary_row("gradio_client median (information)", ms(results["gradio_client"]["median_s"]))]
                  if results["gradio_client"] else []),
            ]}
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
