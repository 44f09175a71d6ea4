"""What the app benchmarks share: the request, the server in a subprocess, a plain-HTTP client, the machine
description, and the results files (``<out>/<name>.md`` and ``.json``, plus the combined ``README_TABLE.md``).

The server is always ``python app.py --model tiny ...`` in a process of its own, so it never shares a GIL with the
benchmark. Clients talk plain HTTP as a browser does: ``POST /gradio_api/call/generate`` gives an event id,
``GET /gradio_api/call/generate/<event_id>`` streams server-sent events until ``event: complete``, then each image
URL is downloaded. gradio_client is not used for timing: it polls its result queue in 50-100 ms sleeps.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from glmimage.service import API_FIELDS  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
README_TABLE = "README_TABLE.md"
# The order the combined table lists the benchmarks in.
BENCHMARKS = ("app_overhead", "startup", "throughput", "memory", "attacker", "cluster")

# The one request every benchmark sends (tiny model, 512x512, 2 steps, fixed seed), as tests/conftest.py's.
REQUEST: dict[str, Any] = dict(
    prompt="a red apple on a wooden table",
    negative_prompt="",
    style="none",
    width=512,
    height=512,
    num_images=1,
    seed=1234,
    randomize_seed=False,
    num_inference_steps=2,
    guidance_scale=3.5,
)
PACKAGES = ("torch", "diffusers", "transformers", "gradio", "gradio_client", "httpx", "pillow", "psutil")


# ---- the machine -----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine, the software and the date, for every results file."""
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (
        f"{info['cpu']}, {info['logical_cores']} cores, {info['ram_gib']} GiB RAM, {info['os']}; "
        f"Python {info['python']}, torch {v['torch']}, diffusers {v['diffusers']}, gradio {v['gradio']}, "
        f"gradio_client {v['gradio_client']}, httpx {v['httpx']}; {info['date']}; load average (1, 5, 15 min) "
        f"at start {', '.join(str(x) for x in info['load_average_at_start'])}, at end "
        f"{', '.join(str(x) for x in info.get('load_average_at_end', []))}. Other work on the machine shows "
        "as load above the benchmark's own."
    )


# ---- the server ------------------------------------------------------------------------------------------------


def report_footer(data: dict[str, Any]) -> list[str]:
    """The closing lines of every results file: the command that made it and the machine it ran on."""
    return [f"Command: `{data['command']}`", "", f"Machine: {machine_line(data['machine'])}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


@dataclass
class Server:
    """``python app.py --model tiny`` on a free loopback port, with its own Gradio temporary folder and log file.
    ``repo`` is the checkout whose app.py runs (another commit's worktree, for before/after comparisons)."""

    args: Sequence[str] = ()
    model: str = "tiny"
    threads: int | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    temp_dir: Path | None = None
    repo: Path = REPO_ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "app.py",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]

    def display_command(self) -> str:
        """The command without the interpreter path and the per-run port."""
        return " ".join(["python", *self.command[1:]]).replace(f"--port {self.port}", "--port P")

    def start(self) -> Server:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="glmimage-bench-"))
        env = dict(server_env(self.threads), GRADIO_TEMP_DIR=str(self.temp_dir / "gradio"))
        log = (self.temp_dir / "server.log").open("wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def log_tail(self, chars: int = 3000) -> str:
        path = self.temp_dir / "server.log" if self.temp_dir else None
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def health(self, client: httpx.Client) -> dict[str, Any] | None:
        try:
            return client.get(f"{self.url}/healthz", timeout=2).json()
        except (httpx.TransportError, ValueError):
            return None

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds from process start until /healthz reports the model ready."""
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                self.check_alive()
                body = self.health(client)
                if body and body["model_state"] == "ready":
                    return time.perf_counter() - self.started_at
                if body and body["model_state"] == "failed":
                    raise RuntimeError(f"the model failed to load: {body}\n{self.log_tail()}")
                time.sleep(0.05)
        raise TimeoutError(f"the server was not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Killed: a graceful stop takes seconds, the server keeps nothing worth it, and its files go below.
            self.proc.kill()
            self.proc.wait(30)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# ---- the client ------------------------------------------------------------------------------------------------


@dataclass
class HttpResult:
    """One /generate call as a browser makes it; client-side phases in seconds, the server's own timings."""

    total_s: float
    join_s: float  # POST until the event id came back
    stream_s: float  # event id until "event: complete"
    download_s: float  # fetching the images
    images: int
    image_bytes: int
    details: dict[str, Any]


def request_data(request: dict[str, Any] | None = None) -> list[Any]:
    values = dict(REQUEST, **(request or {}))
    return [values[name] for name in API_FIELDS]


def new_session() -> str:
    """A session id as a page makes one: a browser tab keeps it for the whole visit."""
    return uuid.uuid4().hex[:11]


def generate_http(
    client: httpx.Client, base_url: str, session: str | None = None, request: dict[str, Any] | None = None
) -> HttpResult:
    """Join the queue, stream the result, download the images. Raises RuntimeError if the app reports an error.

    With ``session`` the call belongs to that session, as every call from one browser tab does; without it Gradio
    makes a new session for the call, as for separate API callers."""
    body: dict[str, Any] = {"data": request_data(request)}
    if session is not None:
        body["session_hash"] = session
    started = time.perf_counter()
    response = client.post(f"{base_url}/gradio_api/call/generate", json=body)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    joined = time.perf_counter()
    event, data = "", None
    with client.stream("GET", f"{base_url}/gradio_api/call/generate/{event_id}") as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line.split(":", 1)[1])
                break
    if event != "complete" or not data:
        raise RuntimeError(f"/generate ended with event {event!r}: {data!r}")
    streamed = time.perf_counter()
    gallery, _seed, details = data[0], data[1], data[2]
    size = 0
    for item in gallery:
        image = client.get(item["image"]["url"])
        image.raise_for_status()
        if not image.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"{item['image']['url']} is not a PNG")
        size += len(image.content)
    done = time.perf_counter()
    return HttpResult(
        total_s=done - started,
        join_s=joined - started,
        stream_s=streamed - joined,
        download_s=done - streamed,
        images=len(gallery),
        image_bytes=size,
        details=details,
    )


def cpu_seconds(process: Any) -> float:
    """User + system CPU seconds a ``psutil.Process`` has used so far, all its threads together."""
    times = process.cpu_times()
    return times.user + times.system


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (/proc/<pid>/stat): memory the allocator handed back and took again."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot, all cores together (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """The share of the machine's CPU that processes other than ``ours`` used during a ``with`` block.

    The machine may be shared (other people's tests); a measurement taken while others kept the cores busy says
    little about the app. ``fraction`` is 0 on an idle machine and 1 when others used every core all along;
    /proc/stat counts in 10 ms ticks, so short blocks read a few percent either way.
    """

    def __init__(self, *ours: Any) -> None:
        self.ours = ours
        self.fraction = 0.0

    def _ours_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.ours)

    def __enter__(self) -> OtherLoad:
        self._busy, self._mine, self._started = machine_busy_seconds(), self._ours_seconds(), time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        elapsed = time.perf_counter() - self._started
        others = (machine_busy_seconds() - self._busy) - (self._ours_seconds() - self._mine)
        self.fraction = max(0.0, others) / (elapsed * (os.cpu_count() or 1))


# ---- numbers and files -------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), by linear interpolation."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def secs(seconds: float | None, digits: int = 2) -> str:
    return "–" if seconds is None else f"{seconds:.{digits}f} s"


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


def write_results(out_dir: Path, name: str, data: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``<out>/<name>.json`` and ``.md`` (``render(data)``), then the combined table of every benchmark in ``out``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    markdown = render(data)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    write_readme_table(out_dir)
    print(markdown)
    print(f"wrote {out_dir / name}.md and .json")


def write_readme_table(out_dir: Path) -> Path:
    """One table of every benchmark's summary rows (read back from the JSON files), for the README to include."""
    lines = ["| Benchmark | Measure | Result | Goal | Met | Machine, date |", "|---|---|---|---|---|---|"]
    for name in BENCHMARKS:
        path = out_dir / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        when = f"{data['machine']['logical_cores']} cores, {data['machine']['date'][:10]}"
        for row in data["summary"]:
            met = "–" if row["met"] is None else yes_no(row["met"])
            lines.append(
                f"| [{name}](benchmarks/results/{name}.md) | {row['measure']} | {row['result']} | "
                f"{row['goal']} | {met} | {when} |"
            )
    text = (
        "<!-- Written by benchmarks/_common.py from benchmarks/results/*.json; run the benchmarks to update. "
        "-->\n" + "\n".join(lines) + "\n"
    )
    path = out_dir / README_TABLE
    path.write_text(text, encoding="utf-8")
    return path


def summary_row(measure: str, result: str, goal: str = "–", met: bool | None = None) -> dict[str, Any]:
    return {"measure": measure, "result": result, "goal": goal, "met": met}
