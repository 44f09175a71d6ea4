"""Attacker versus visitor: what one hostile client on the internet can make the server hold (memory), write
(disk), take from a visitor (sessions, queue places, GPU time) and write to its log, measured against two
checkouts of the app, BEFORE and AFTER a change (issue 16), side by side.

Every server is ``python app.py --model tiny --no-warmup --rate-limit 0 --max-jobs-per-client 0 ...`` started
from the checkout under test, on a free 127.0.0.1 port; attackers and visitors are told apart by their loopback
source address (127.0.0.x). Every loop is bounded in count and in time, and nothing leaves the machine.

- ``memory``: ten 100 MB JSON bodies to ``/gradio_api/queue/join``, then 50 session ids of 2 MB each; RSS of the
  server before and after, and how many bytes it took in before cutting a body off.
- ``disk``: 100 finished 1 MiB uploads and 10 uploads aborted halfway; files and bytes in Gradio's temporary
  folder (outside the app's own image folder) while the server runs and after a clean shutdown (SIGTERM).
- ``sessions``: a visitor with their page open and one generation in their history; 600 new sessions from 20
  addresses (30 each) at ``--max-sessions 200``; is the visitor's history still there? And how many of 100 new
  sessions from ONE address are admitted.
- ``queue`` (``--max-queue 4``): one address floods cheap page events (Stop, Clear history) into the queue from
  8 threads, a new session per join, results never read, while a visitor presses Generate 20 times, each 0.2 s
  after the last result: how many presses are admitted.
- ``gpu``: a 100-step 1024x1024 job whose result nobody reads, then a visitor's 1-step job: how long the
  visitor waits.
- ``logs``: 200 calls to an unknown event index: server log bytes per call, and tracebacks.

    git worktree add /tmp/glm-base c3e11e5     # the checkout to compare against
    python benchmarks/attacker.py --before /tmp/glm-base --after .
    python benchmarks/attacker.py --after . --shrunk --scenarios logs   # a quick look at one checkout
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import RESULTS_DIR, Server, command_line, machine, report_footer, request_data, summary_row, write_results

NAME = "attacker"
MIB = 2**20
SCENARIOS = ("memory", "disk", "sessions", "queue", "gpu", "logs")
BASE_ARGS = ("--no-warmup", "--rate-limit", "0", "--max-jobs-per-client", "0")
FLOODERS = 8  # threads of the one flooding address
# The queue scenario's --max-queue: on a 2-core machine the attacker's own threads slow the server down as much as
# its joins, and Gradio keeps up with them well below the default 32; a small queue shows the effect of every
# event taking a place. (The longest queue seen is reported too.)
QUEUE_MAX = 4


class Scale:
    """How big each attack is; ``--shrunk`` makes everything small enough for a CI smoke run."""

    def __init__(self, shrunk: bool) -> None:
        self.bodies, self.body_bytes = (2, 8 * MIB) if shrunk else (10, 100 * MIB)
        self.big_sessions, self.session_bytes = (5, 2 * MIB) if shrunk else (50, 2 * MIB)
        self.uploads, self.aborted = (5, 2) if shrunk else (100, 10)
        self.max_sessions, self.flood_addresses, self.per_address = (20, 4, 15) if shrunk else (200, 20, 30)
        self.one_address = 20 if shrunk else 100
        # The visitor's presses, made one after another while the flood lasts; the flood ends with them, or at the
        # time cap.
        self.presses, self.flood_cap_s = (4, 30.0) if shrunk else (20, 150.0)
        # The unread job: long enough that waiting it out is plain to see (tiny model, 1024x1024: ~0.1-0.2 s/step).
        self.long_steps, self.long_side = (20, 512) if shrunk else (100, 1024)
        self.unknown_calls = 20 if shrunk else 200


# ---- plain HTTP, as an attacker sends it ------------------------------------------------------------------------


def client(server: Server, source: str = "127.0.0.1", timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout, transport=httpx.HTTPTransport(local_address=source))


def fn_indices(server: Server) -> dict[str, int]:
    config = httpx.get(f"{server.url}/config", timeout=30).json()
    return {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}


def join(http: httpx.Client, fn_index: int, session: str, data: list[Any]) -> int:
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    return http.post("/gradio_api/queue/join", json=body).status_code


def generate(http: httpx.Client, request: dict[str, Any] | None = None, session: str | None = None) -> str:
    """One /generate call followed to its end: "image", "queue_full", "refused" or "error"."""
    body: dict[str, Any] = {"data": request_data(request)}
    if session:
        body["session_hash"] = session
    response = http.post("/gradio_api/call/generate", json=body)
    if response.status_code == 503:
        return "queue_full"
    if response.status_code != 200:
        return "refused"
    event = ""
    with http.stream("GET", f"/gradio_api/call/generate/{response.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event in ("complete", "error"):
                    break
    return "image" if event == "complete" else "error"


def stream_body(port: int, path: str, head: bytes, fill: int, tail: bytes) -> tuple[int, int]:
    """POST ``head``, ``fill`` bytes of "x" and ``tail`` (Content-Length declared) in 64 KiB pieces, stopping when
    the server answers; returns (HTTP status, or 0 if the connection was reset first; body bytes sent)."""
    total = len(head) + fill + len(tail)
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {total}\r\n\r\n".encode()
    )
    pieces = [head, *([b"x" * (64 * 1024)] * (fill // (64 * 1024))), b"x" * (fill % (64 * 1024)), tail]
    sent = 0
    try:
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status = 0
    try:
        answer = sock.recv(4096)
        if answer.startswith(b"HTTP/1.1 "):
            status = int(answer[9:12])
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return status, sent


def rss_mib(server: Server) -> float:
    return psutil.Process(server.proc.pid).memory_info().rss / MIB


def settle() -> None:
    time.sleep(2.0)


def started(target: Path, *args: str) -> Server:
    server = Server((*BASE_ARGS, *args), repo=target).start()
    server.wait_ready()
    return server


# ---- the scenarios ------------------------------------------------------------------------------------------------


def memory(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target)
    try:
        index = fn_indices(server)["generate"]
        with client(server) as http:
            generate(http)
        settle()
        idle = rss_mib(server)
        statuses, taken = [], []
        for n in range(scale.bodies):
            # Valid JSON: a /generate join whose prompt is the whole body (the validator refuses it, too late).
            head = b'{"fn_index": %d, "session_hash": "big%d", "data": ["' % (index, n)
            tail = b'"' + b", null" * 10 + b"]}"
            status, sent = stream_body(server.port, "/gradio_api/queue/join", head, scale.body_bytes, tail)
            statuses.append(status)
            taken.append(sent)
        settle()
        after_bodies = rss_mib(server)
        id_statuses = []
        load = fn_indices(server)["show_status"]
        for n in range(scale.big_sessions):
            session = f"s{n}" + "x" * scale.session_bytes
            with client(server, timeout=60) as http:
                body = {"data": [], "fn_index": load, "session_hash": session}
                try:
                    id_statuses.append(http.post("/gradio_api/queue/join", json=body).status_code)
                except httpx.TransportError:
                    id_statuses.append(0)
        settle()
        after_ids = rss_mib(server)
    finally:
        server.stop()
    return {
        "rss_idle_mib": round(idle, 1),
        "rss_after_bodies_mib": round(after_bodies, 1),
        "rss_after_session_ids_mib": round(after_ids, 1),
        "bodies": scale.bodies,
        "body_mib": scale.body_bytes / MIB,
        "body_statuses": statuses,
        "max_mib_sent_per_body": round(max(taken) / MIB, 2),
        "session_ids": scale.big_sessions,
        "session_id_mib": scale.session_bytes / MIB,
        "session_id_statuses": dict(Counter(id_statuses)),
    }


def temp_files(server: Server) -> tuple[int, int]:
    """Files and bytes in Gradio's temporary folder, outside the app's own image folder."""
    root = server.temp_dir / "gradio"
    files = [p for p in root.rglob("*") if p.is_file() and "glmimage" not in p.relative_to(root).parts]
    return len(files), sum(p.stat().st_size for p in files)


def disk(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target)
    try:
        statuses = Counter()
        with client(server, source="127.0.0.30") as http:
            for n in range(scale.uploads):
                payload = n.to_bytes(4, "big") + b"u" * (MIB - 4)  # all different, so none is stored once for two
                statuses[http.post("/gradio_api/upload", files={"files": (f"f{n}.png", payload)}).status_code] += 1
        for n in range(scale.aborted):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            boundary = "glmbench"
            sock.sendall(
                (
                    f"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * MIB}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n--{boundary}\r\n"
                    f'Content-Disposition: form-data; name="files"; filename="a{n}.png"\r\n\r\n'
                ).encode()
            )
            try:
                sock.sendall(b"a" * (2 * MIB))
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.close()
        settle()
        running = temp_files(server)
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(90)
        except subprocess.TimeoutExpired:
            pass  # measured all the same; stop() kills it
        after_shutdown = temp_files(server)
    finally:
        server.stop()
    return {
        "uploads": scale.uploads,
        "aborted": scale.aborted,
        "upload_statuses": dict(statuses),
        "files_while_running": running[0],
        "mib_while_running": round(running[1] / MIB, 1),
        "files_after_shutdown": after_shutdown[0],
        "mib_after_shutdown": round(after_shutdown[1] / MIB, 1),
    }


def history_of(server: Server, http: httpx.Client, session: str) -> int | None:
    """How many entries the session's history shows, read the way the page reads it (its after-generation
    step), or None if the server would not say."""
    index = fn_indices(server)["after_generation"]
    response = http.post(
        "/gradio_api/queue/join",
        json={"data": [None, None], "fn_index": index, "session_hash": session, "event_data": None},
    )
    if response.status_code != 200:
        return None
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                output = message.get("output", {}).get("data") or [None, {}]
                value = output[1].get("value") if isinstance(output[1], dict) else output[1]
                return len(value or [])
    return None


def sessions(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target, "--max-sessions", str(scale.max_sessions))
    page = None
    try:
        visitor_session = "visitor0001"
        page = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # the visitor's page stays open
        page.sendall(f"GET /gradio_api/heartbeat/{visitor_session} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with client(server, source="127.0.0.2") as http:
            generate(http, session=visitor_session)
            before = history_of(server, http, visitor_session)
        load = fn_indices(server)["show_status"]
        admitted = Counter()
        for a in range(scale.flood_addresses):
            with client(server, source=f"127.0.1.{a + 1}") as http:
                for n in range(scale.per_address):
                    admitted[join(http, load, f"flood{a}x{n}", [])] += 1
        settle()
        with client(server, source="127.0.0.2") as http:
            after = history_of(server, http, visitor_session)
        one = Counter()
        with client(server, source="127.0.2.1") as http:
            for n in range(scale.one_address):
                one[join(http, load, f"one{n}", [])] += 1
    finally:
        if page is not None:
            page.close()
        server.stop()
    return {
        "max_sessions": scale.max_sessions,
        "flood_sessions": scale.flood_addresses * scale.per_address,
        "flood_addresses": scale.flood_addresses,
        "flood_statuses": dict(admitted),
        "visitor_history_before": before,
        "visitor_history_after": after,
        "one_address_tried": scale.one_address,
        "one_address_admitted": one.get(200, 0),
    }


def queue(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target, "--max-queue", str(QUEUE_MAX))
    stop = threading.Event()
    joins = Counter()
    lock = threading.Lock()
    longest = [0]

    def watch() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                body = server.health(http)
                longest[0] = max(longest[0], body["queue_length"] if body else 0)
                time.sleep(0.05)

    try:
        events = fn_indices(server)
        names = [name for name in ("request_stop", "do_clear") if name in events]

        def flood(worker: int) -> None:
            # A new session for every join, as a script that never keeps one does.
            with client(server, source="127.0.0.50", timeout=10) as http:
                for n in range(5000):
                    if stop.is_set():
                        return
                    try:
                        status = join(http, events[names[n % len(names)]], f"att{worker}x{n}", [None])
                    except httpx.TransportError:
                        status = 0
                    with lock:
                        joins[status] += 1

        flooders = [threading.Thread(target=flood, args=(w,)) for w in range(FLOODERS)]
        flooders.append(threading.Thread(target=watch))
        for thread in flooders:
            thread.start()
        time.sleep(1.0)
        outcomes = Counter()
        began = time.monotonic()
        with client(server, source="127.0.0.60") as http:
            for n in range(scale.presses):
                if time.monotonic() - began > scale.flood_cap_s:
                    break
                outcomes[generate(http, {"num_inference_steps": 1, "seed": n})] += 1
                time.sleep(0.2)
        flood_s = time.monotonic() - began + 1.0
        stop.set()
        for thread in flooders:
            thread.join(30)
    finally:
        stop.set()
        server.stop()
    return {
        "flood_joins": sum(joins.values()),
        "flood_joins_per_s": round(sum(joins.values()) / flood_s, 1),
        "flood_statuses": dict(joins),
        "presses": sum(outcomes.values()),
        "press_outcomes": dict(outcomes),
        "admitted": outcomes.get("image", 0),
        "max_queue": QUEUE_MAX,
        "longest_queue_seen": longest[0],
    }


def gpu(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target)
    try:
        with client(server, source="127.0.0.70") as deaf:
            long_job = {"num_inference_steps": scale.long_steps, "width": scale.long_side, "height": scale.long_side}
            response = deaf.post("/gradio_api/call/generate", json={"data": request_data(long_job)})
            assert response.status_code == 200, response.text
        time.sleep(0.5)
        began = time.monotonic()
        with client(server, source="127.0.0.71", timeout=600) as visitor:
            outcome = generate(visitor, {"num_inference_steps": 1})
        waited = time.monotonic() - began
        with client(server) as http:
            one_step = time.monotonic()
            generate(http, {"num_inference_steps": 1})
            alone = time.monotonic() - one_step
    finally:
        server.stop()
    return {
        "long_steps": scale.long_steps,
        "long_side": scale.long_side,
        "visitor_outcome": outcome,
        "visitor_wait_s": round(waited, 2),
        "visitor_alone_s": round(alone, 2),
    }


def logs(target: Path, scale: Scale) -> dict[str, Any]:
    server = started(target)
    try:
        log = server.temp_dir / "server.log"
        settle()
        size = log.stat().st_size
        statuses = Counter()
        with client(server, source="127.0.0.80") as http:
            for n in range(scale.unknown_calls):
                body = {"data": [], "fn_index": 9999 + n, "session_hash": "abc"}
                try:
                    statuses[http.post("/gradio_api/queue/join", json=body).status_code] += 1
                except httpx.TransportError:  # a server error can end the connection; the next call opens another
                    statuses[0] += 1
        settle()
        text = log.read_text(errors="replace")[size:]
    finally:
        server.stop()
    return {
        "calls": scale.unknown_calls,
        "statuses": dict(statuses),
        "log_bytes_per_call": round(len(text.encode()) / scale.unknown_calls),
        "tracebacks": text.count("Traceback"),
    }


RUNNERS: dict[str, Callable[[Path, Scale], dict[str, Any]]] = {
    "memory": memory,
    "disk": disk,
    "sessions": sessions,
    "queue": queue,
    "gpu": gpu,
    "logs": logs,
}


# ---- report -------------------------------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str], str]]:
    """(measure, how to show one checkout's figure, goal) for each line of the report."""
    memory = r.get("memory", {})
    body_mib = f"{memory['body_mib']:g}" if "body_mib" in memory else "?"  # without the memory scenario: unknown
    return [
        (
            f"memory: RSS growth after {memory.get('bodies', '?')} bodies of {body_mib} MB",
            lambda m: (
                f"{m['rss_after_bodies_mib'] - m['rss_idle_mib']:+.0f} MiB ({m['rss_idle_mib']:.0f} → "
                f"{m['rss_after_bodies_mib']:.0f}); statuses {sorted(set(m['body_statuses']))}; at most "
                f"{m['max_mib_sent_per_body']:g} MiB sent per body"
            ),
            "≤ +64 MiB",
        ),
        (
            "memory: RSS growth after 2 MB session ids",
            lambda m: (
                f"{m['rss_after_session_ids_mib'] - m['rss_after_bodies_mib']:+.0f} MiB for "
                f"{m['session_ids']}; statuses {m['session_id_statuses']}"
            ),
            "≤ +64 MiB",
        ),
        (
            "disk: files in Gradio's folder after uploads (running; after SIGTERM)",
            lambda d: (
                f"{d['files_while_running']} files, {d['mib_while_running']:g} MiB; "
                f"{d['files_after_shutdown']} files, {d['mib_after_shutdown']:g} MiB (uploads {d['upload_statuses']})"
            ),
            "0; 0",
        ),
        (
            "sessions: a visitor's history after a flood of new sessions",
            lambda s: (
                f"{s['visitor_history_before']} → {s['visitor_history_after']} entries "
                f"({s['flood_sessions']} sessions from {s['flood_addresses']} addresses at --max-sessions "
                f"{s['max_sessions']})"
            ),
            "kept",
        ),
        (
            "sessions: new sessions admitted from one address",
            lambda s: f"{s['one_address_admitted']} of {s['one_address_tried']}",
            "≤ 60 (--session-rate-limit)",
        ),
        (
            "queue: visitor's Generate admitted during a cheap-event flood",
            lambda q: (
                f"{q['admitted']} of {q['presses']} ({q['press_outcomes']}); flood "
                f"{q['flood_joins_per_s']:g} joins/s {q['flood_statuses']}; longest queue "
                f"{q['longest_queue_seen']} (--max-queue {q['max_queue']})"
            ),
            "all",
        ),
        (
            "GPU: visitor's 1-step job waits behind an unread job",
            lambda g: (
                f"{g['visitor_wait_s']:.1f} s (alone {g['visitor_alone_s']:.1f} s; unread job "
                f"{g['long_steps']} steps at {g['long_side']}²)"
            ),
            "≤ --listener-timeout (5 s) + 3 s",
        ),
        (
            "logs: bytes per call to an unknown event",
            lambda lg: (
                f"{lg['log_bytes_per_call']} B; {lg['tracebacks']} tracebacks in {lg['calls']} calls "
                f"(statuses {lg['statuses']})"
            ),
            "≤ 120 B, no traceback",
        ),
    ]


SCENARIO_OF_ROW = ("memory", "memory", "disk", "sessions", "sessions", "queue", "gpu", "logs")


def cell(results: dict[str, Any] | None, scenario: str, show: Callable[[dict[str, Any]], str]) -> str:
    if not results or scenario not in results:
        return "–"
    return show(results[scenario])


def met(after: dict[str, Any], row: int) -> bool | None:
    """Whether the AFTER checkout meets the goal of a row (None: not measured)."""
    scenario = SCENARIO_OF_ROW[row]
    if scenario not in after:
        return None
    v = after[scenario]
    checks = [
        lambda: v["rss_after_bodies_mib"] - v["rss_idle_mib"] <= 64,
        lambda: v["rss_after_session_ids_mib"] - v["rss_after_bodies_mib"] <= 64,
        lambda: v["files_while_running"] == 0 and v["files_after_shutdown"] == 0,
        lambda: v["visitor_history_after"] == v["visitor_history_before"] and v["visitor_history_before"],
        lambda: v["one_address_admitted"] <= 60,
        lambda: v["admitted"] == v["presses"],
        lambda: v["visitor_wait_s"] <= 5.0 + 3.0,
        lambda: v["log_bytes_per_call"] <= 120 and v["tracebacks"] == 0,
    ]
    return bool(checks[row]())


def to_markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    before, after = r.get("before"), r.get("after")
    lines = [
        "# Attacker versus visitor",
        "",
        "One hostile client against the app's defaults (tiny model, 127.0.0.1, bounded loops), BEFORE "
        f"(`{r.get('before_target', '–')}`) and AFTER (`{r.get('after_target', '–')}`). See the script's "
        "docstring for each scenario.",
        "",
        "| Measure | Before | After | Goal (after) | Met |",
        "|---|---|---|---|---|",
    ]
    for n, (measure, show, goal) in enumerate(rows(after or before or {})):
        scenario = SCENARIO_OF_ROW[n]
        ok = met(after, n) if after else None
        mark = "–" if ok is None else ("yes" if ok else "**NO**")
        lines.append(
            f"| {measure} | {cell(before, scenario, show)} | {cell(after, scenario, show)} | {goal} | {mark} |"
        )
    lines += ["", *report_footer(data)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="checkout measured as BEFORE (e.g. a worktree of commit c3e11e5)")
    p.add_argument("--after", type=Path, default=Path("."), help="checkout measured as AFTER (default: this one)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="default all")
    p.add_argument("--shrunk", action="store_true", help="small attacks, for a quick smoke run")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default %(default)s)")
    return p.parse_args(argv)


def run_target(label: str, target: Path, scenarios: Sequence[str], scale: Scale) -> dict[str, Any]:
    results = {}
    for name in scenarios:
        print(f"{label}: {name} ...", flush=True)
        results[name] = RUNNERS[name](target.resolve(), scale)
        print(f"{label}: {name}: {results[name]}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    scale = Scale(args.shrunk)
    results: dict[str, Any] = {"shrunk": args.shrunk, "scenarios": args.scenarios}
    if args.before is not None:
        results["before_target"] = str(args.before)
        results["before"] = run_target("before", args.before, args.scenarios, scale)
    results["after_target"] = str(args.after)
    results["after"] = run_target("after", args.after, args.scenarios, scale)
    summary = []
    for n, (measure, show, goal) in enumerate(rows(results["after"])):
        scenario = SCENARIO_OF_ROW[n]
        if scenario not in results["after"]:
            continue
        before = cell(results.get("before"), scenario, show)
        summary.append(
            summary_row(
                measure, f"before: {before}; after: {show(results['after'][scenario])}", goal, met(results["after"], n)
            )
        )
    data = {
        "benchmark": NAME,
        "command": command_line("attacker.py", argv),
        "machine": info,
        "results": results,
        "summary": summary,
    }
    write_results(args.out, NAME, data, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
