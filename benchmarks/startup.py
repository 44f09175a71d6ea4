"""Start-up: from process start to the page answering HTTP 200, and to the model being ready (tiny).

Each run starts ``python app.py --model tiny`` (the default warm-up generation on) and polls ``GET /`` and
``GET /healthz`` every 10 ms. Goals: the page answers within 5 s of the process start (median of the runs), and
the model load never delays the page. For the second, two checks: in every run the page answered while
``/healthz`` still said ``loading`` (the page does not wait for the model), and the page came up no later than in
a control start whose load ends at once (a model folder that does not exist: the loader imports torch and
diffusers, then fails), so loading the weights and the warm-up generation do not slow the page either. Runs
alternate between the two, after one untimed start that warms the disk cache. Others' use of the CPU during each
run is reported (the machine may be shared).

    python benchmarks/startup.py [--runs 5] [--out DIR]
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
    OtherLoad,
    Server,
    command_line,
    machine,
    median,
    report_footer,
    secs,
    summary_row,
    write_results,
    yes_no,
)

NAME = "startup"
PAGE_GOAL_S = 5.0
# The page may be this much slower than in the control start before the load counts as a delay.
DELAY_TOLERANCE_S = 0.25
DELAY_TOLERANCE_FRACTION = 0.10
POLL_S = 0.01
VARIANTS = {
    "tiny": {"model": "tiny", "label": "tiny model (loads in the background, warm-up on)"},
    "control": {
        "model": "/nonexistent/glmimage-benchmark-model",
        "label": "control: a missing model folder (the loader imports torch and diffusers, then fails)",
    },
}
SERVER_ARGS = ("--rate-limit", "0")


def one_start(model: str, timeout: float) -> dict[str, Any]:
    """Start a server, time its page and its model, stop it."""
    server = Server(SERVER_ARGS, model=model).start()
    page_s = state_at_page = model_s = final_state = None
    deadline = time.monotonic() + timeout
    load = OtherLoad(psutil.Process(server.proc.pid), psutil.Process())
    try:
        with load, httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline and model_s is None:
                server.check_alive()
                if page_s is None:
                    try:
                        if client.get(server.url + "/").status_code == 200:
                            page_s = time.perf_counter() - server.started_at
                            state_at_page = (server.health(client) or {}).get("model_state")
                    except httpx.TransportError:
                        pass
                else:
                    state = (server.health(client) or {}).get("model_state")
                    if state in ("ready", "failed"):
                        model_s, final_state = time.perf_counter() - server.started_at, state
                time.sleep(POLL_S)
    finally:
        server.stop()
    if page_s is None or model_s is None:
        raise TimeoutError(f"the server did not come up within {timeout:g} s")
    return {
        "page_s": page_s,
        "model_state_at_page": state_at_page,
        "model_done_s": model_s,
        "model_final_state": final_state,
        "others_cpu_share": load.fraction,
    }


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    lines = [
        "# Start-up",
        "",
        f"{r['runs']} starts of each, alternated, after {r['warmup_runs']} untimed start(s). Times from the process "
        "start (before `exec`) to the first answer.",
        "",
        "| Start | Page HTTP 200: median | min | max | Model ready: median | max | Model state when the page "
        "answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, v in r["variants"].items():
        states = ", ".join(f"{state} ×{count}" for state, count in v["model_state_at_page"].items())
        model = (
            f"{secs(v['model_done_median_s'])} | {secs(v['model_done_max_s'])}"
            if key == "tiny"
            else "– (fails at once) | –"
        )
        lines.append(
            f"| {VARIANTS[key]['label']} | {secs(v['page_median_s'])} | {secs(v['page_min_s'])} | "
            f"{secs(v['page_max_s'])} | {model} | {states} |"
        )
    lines += [
        "",
        f"Page within {PAGE_GOAL_S:g} s (median): {yes_no(r['page_goal_met'])}. The model load does not delay the "
        f"page: {yes_no(r['no_delay_met'])} — the page answered while the model was still loading in every run: "
        f"{yes_no(r['page_before_model'])}; page median with the model minus the control's: "
        f"{secs(r['load_delay_s'])}, tolerance {secs(r['delay_tolerance_s'])} (the larger of "
        f"{DELAY_TOLERANCE_S:g} s and {DELAY_TOLERANCE_FRACTION:.0%}).",
        "",
        "Others' share of the CPU during each run (the machine may be shared): "
        + ", ".join(f"{run['others_cpu_share']:.0%}" for v in r["variants"].values() for run in v["runs"])
        + ".",
        "",
        f"Server command: `{data['server_command']}`",
        "",
        *report_footer(data),
    ]
    return "\n".join(lines)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pages = [run["page_s"] for run in runs]
    models = [run["model_done_s"] for run in runs]
    states: dict[str, int] = {}
    for run in runs:
        states[run["model_state_at_page"]] = states.get(run["model_state_at_page"], 0) + 1
    return {
        "page_median_s": median(pages),
        "page_min_s": min(pages),
        "page_max_s": max(pages),
        "model_done_median_s": median(models),
        "model_done_max_s": max(models),
        "model_state_at_page": states,
        "runs": runs,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed starts of each kind (default 5)")
    p.add_argument("--warmup-runs", type=int, default=1, help="untimed starts first (default 1)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds one start may take (default 180)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup_runs < 0:
        p.error("--runs must be at least 1 and --warmup-runs at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    for _ in range(args.warmup_runs):
        one_start("tiny", args.timeout)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in VARIANTS}
    for i in range(args.runs):
        for key in ("tiny", "control") if i % 2 == 0 else ("control", "tiny"):
            runs[key].append(one_start(VARIANTS[key]["model"], args.timeout))
        print(
            f"run {i + 1}/{args.runs}: page {secs(runs['tiny'][-1]['page_s'])} "
            f"(control {secs(runs['control'][-1]['page_s'])}), model {secs(runs['tiny'][-1]['model_done_s'])}",
            flush=True,
        )
    variants = {key: summarize(values) for key, values in runs.items()}
    tiny, control = variants["tiny"], variants["control"]
    delay = tiny["page_median_s"] - control["page_median_s"]
    tolerance = max(DELAY_TOLERANCE_S, DELAY_TOLERANCE_FRACTION * control["page_median_s"])
    page_before_model = all(run["model_state_at_page"] == "loading" for run in tiny["runs"])
    results = {
        "runs": args.runs,
        "warmup_runs": args.warmup_runs,
        "variants": variants,
        "page_goal_s": PAGE_GOAL_S,
        "page_goal_met": tiny["page_median_s"] <= PAGE_GOAL_S,
        "page_before_model": page_before_model,
        "load_delay_s": delay,
        "delay_tolerance_s": tolerance,
        "no_delay_met": page_before_model and delay <= tolerance,
    }
    data = {
        "benchmark": NAME,
        "command": command_line("startup.py", argv),
        "machine": info,
        "server_command": Server(SERVER_ARGS).display_command(),
        "results": results,
        "summary": [
            summary_row(
                "start to page HTTP 200 (median; max)",
                f"{secs(tiny['page_median_s'])}; {secs(tiny['page_max_s'])}",
                f"≤ {PAGE_GOAL_S:g} s",
                results["page_goal_met"],
            ),
            summary_row("start to model ready, tiny with warm-up (median)", secs(tiny["model_done_median_s"])),
            summary_row(
                "model load delays the page: page up while loading; page minus control",
                f"{sum(run['model_state_at_page'] == 'loading' for run in tiny['runs'])}/{args.runs} "
                f"runs; {secs(delay)}",
                f"{args.runs}/{args.runs}; ≤ {secs(tolerance)}",
                results["no_delay_met"],
            ),
        ],
    }
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
