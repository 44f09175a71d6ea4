"""Settings: one typed object, read from ``GLMIMAGE_*`` environment variables and overridden by CLI flags.

Host and port stay Gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from .limits import DEFAULT_MODEL
from .models.accel import OFFLOAD_MODES, QUANTIZE_MODES, FastPaths
from .ratelimit import RateLimit, parse_trusted_proxies

DTYPES = ("auto", "bfloat16", "float32")
BACKENDS = ("local", "ray")
ENV_PREFIX = "GLMIMAGE_"


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. ``model=None`` means: the real model with CUDA, else the tiny one."""

    model: str | None = None
    dtype: str = "auto"
    offload: str = "none"
    compile: bool = False
    cache: bool = False
    cache_threshold: float = 0.12
    quantize: str = "none"
    warmup: bool = True
    concurrency: int = 1
    max_queue: int = 32
    max_jobs_per_client: int = 2
    rate_limit: str = "10/minute"
    trusted_proxies: str = ""
    max_sessions: int = 2000
    session_ttl: float = 3600.0
    file_ttl: float = 7200.0
    log_prompts: bool = False
    backend: str = "local"
    replicas: str = "1"
    replica_gpus: float = 1.0
    ray_address: str = ""
    replica_timeout: float = 300.0
    host: str = "127.0.0.1"
    port: int = 7860
    cache_dir: str | None = None
    trusted_proxy_list: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.dtype == "float16":
            raise ValueError(
                "--dtype float16 is refused: CogView4 overflows in float16 and draws black images. "
                "Use bfloat16 (GPU) or float32."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        for name, low in (("concurrency", 1), ("max_queue", 1), ("max_jobs_per_client", 0), ("max_sessions", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low} (got {getattr(self, name)})")
        if not 0 < self.session_ttl <= self.file_ttl:
            raise ValueError(
                f"--session-ttl ({self.session_ttl:g} s) must be positive and at most --file-ttl "
                f"({self.file_ttl:g} s), or history would point at deleted images"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be from 1 to 65535 (got {self.port})")
        RateLimit.parse(self.rate_limit)
        self._check_cluster_options()
        object.__setattr__(self, "trusted_proxy_list", parse_trusted_proxies(self.trusted_proxies))
        self.fast_paths  # noqa: B018 - validates the fast-path options now, not at load time

    def _check_cluster_options(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        self.replica_range  # noqa: B018 - validates --replicas now
        if not 0 <= self.replica_gpus <= 1:
            raise ValueError(
                f"--replica-gpus must be from 0 (CPU replicas) to 1: a replica runs one pipeline on one GPU, and a "
                f"fraction puts several replicas on one GPU (got {self.replica_gpus:g})"
            )
        if not self.replica_timeout > 0:
            raise ValueError(f"--replica-timeout must be positive (got {self.replica_timeout:g} s)")
        if self.ray_address.startswith("ray://"):
            raise ValueError(
                "--ray-address ray://... (Ray Client) cannot stream a job's steps: run the app on a machine of the "
                "cluster with --ray-address auto (or the head's HOST:PORT)"
            )
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("--backend ray needs Ray on this machine: pip install -r requirements-ray.txt")
        if self.backend == "ray" and self.concurrency != 1:
            raise ValueError(
                "--concurrency is for the local backend: with --backend ray the jobs running at once follow "
                "--replicas (one job per replica)"
            )
        if self.backend == "local":
            for name in ("replicas", "replica_gpus", "ray_address", "replica_timeout"):
                if getattr(self, name) != getattr(Settings, name):
                    raise ValueError(f"--{name.replace('_', '-')} needs --backend ray")

    @property
    def replica_range(self) -> tuple[int, int]:
        """``--replicas`` as (min, max): ``N`` is (N, N), ``MIN:MAX`` lets Serve scale between the two."""
        parts = self.replicas.strip().split(":")
        numbers = [int(part) for part in parts if part.strip().isdigit()]
        if len(parts) > 2 or len(numbers) != len(parts) or not 1 <= numbers[0] <= numbers[-1]:
            raise ValueError(
                f"--replicas must be a count (e.g. 4) or MIN:MAX with 1 <= MIN <= MAX (e.g. 1:4), "
                f"got {self.replicas!r}"
            )
        return numbers[0], numbers[-1]

    @property
    def queue_concurrency(self) -> int:
        """Jobs the Gradio queue runs at once: ``--concurrency`` on this machine; with Ray one per replica that can
        run, so the most replicas. Under autoscaling the jobs beyond the replicas up wait in Serve's own queue of
        the deployment handle (at most max - running), and that demand is what makes Serve add replicas."""
        return self.replica_range[1] if self.backend == "ray" else self.concurrency

    @property
    def fast_paths(self) -> FastPaths:
        return FastPaths(
            offload=self.offload,
            compile=self.compile,
            cache_threshold=self.cache_threshold if self.cache else 0.0,
            quantize=self.quantize,
        )

    @property
    def parsed_rate_limit(self) -> RateLimit:
        return RateLimit.parse(self.rate_limit)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def _env_defaults(environ: Mapping[str, str]) -> dict[str, object]:
    """Settings found in the environment, converted to each field's type."""
    values: dict[str, object] = {}
    for f in fields(Settings):
        if f.name in ("host", "port", "trusted_proxy_list"):
            continue
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is None:
            continue
        kind = type(getattr(Settings(), f.name)) if f.name not in ("model", "cache_dir") else str
        try:
            values[f.name] = _bool(raw) if kind is bool else kind(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None
    if environ.get("GRADIO_SERVER_NAME"):
        values["host"] = environ["GRADIO_SERVER_NAME"]
    if environ.get("GRADIO_SERVER_PORT"):
        values["port"] = int(environ["GRADIO_SERVER_PORT"])
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="GLM Image: a web demo for CogView4 text-to-image. Every option can also be set with an "
        "environment variable GLMIMAGE_<OPTION> (e.g. GLMIMAGE_MODEL, GLMIMAGE_CONCURRENCY).",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        help=f"hub id (e.g. {DEFAULT_MODEL}), local folder, or 'tiny' (random weights, "
        "for testing). Default: the real model when CUDA is available, else tiny",
    )
    model.add_argument("--dtype", choices=[*DTYPES, "float16"], help="default auto: bfloat16 on CUDA, float32 on CPU")
    model.add_argument("--offload", choices=OFFLOAD_MODES, help="CPU offload for small GPUs (needs CUDA)")
    model.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the transformer")
    model.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        help="first-block cache on the transformer (faster, slightly different images)",
    )
    model.add_argument("--cache-threshold", type=float, help="first-block cache threshold (default 0.12)")
    model.add_argument("--quantize", choices=QUANTIZE_MODES, help="int8 weight-only (torchao) for 12-24 GB cards")
    model.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        help="one small generation at start-up so the first visitor does not pay for it",
    )
    model.add_argument("--cache-dir", help="where the tiny model is built (default ~/.cache/glmimage)")
    serving = p.add_argument_group("serving")
    serving.add_argument("--host", help="default GRADIO_SERVER_NAME or 127.0.0.1")
    serving.add_argument("--port", type=int, help="default GRADIO_SERVER_PORT or 7860")
    serving.add_argument("--concurrency", type=int, help="generations running at once on the GPU (default 1)")
    serving.add_argument("--max-queue", type=int, help="most jobs waiting in the queue (default 32)")
    serving.add_argument(
        "--max-jobs-per-client",
        type=int,
        help="most jobs one visitor may have queued or running (default 2, 0 = no limit)",
    )
    serving.add_argument("--rate-limit", help="generations per visitor, e.g. 6/minute; 0 disables (default 10/minute)")
    serving.add_argument(
        "--trusted-proxies",
        help="comma-separated proxy IPs/CIDRs whose X-Forwarded-For is "
        "believed (default: none, the header is ignored)",
    )
    cluster = p.add_argument_group("cluster (Ray Serve, needs requirements-ray.txt)")
    cluster.add_argument(
        "--backend",
        choices=BACKENDS,
        help="local: the model runs in this process (default); ray: in a Ray Serve pool of replicas",
    )
    cluster.add_argument(
        "--replicas", help="replicas of the model: a count (default 1) or MIN:MAX to autoscale under load"
    )
    cluster.add_argument(
        "--replica-gpus",
        type=float,
        help="GPU share of each replica, 0 to 1 (default 1; 0 runs replicas on CPUs; 0.5 puts two on a GPU)",
    )
    cluster.add_argument(
        "--ray-address",
        help="empty (default): start a Ray on this machine and stop it on exit; 'auto' or HOST:PORT: join a "
        "cluster started with 'ray start' and leave it running",
    )
    cluster.add_argument(
        "--replica-timeout",
        type=float,
        help="seconds a replica may go without progress mid-job, or the pool without any replica up, before the "
        "job moves to another replica once, then fails with a message (default 300)",
    )
    privacy = p.add_argument_group("privacy")
    privacy.add_argument("--max-sessions", type=int, help="most sessions kept in memory (default 2000)")
    privacy.add_argument(
        "--session-ttl", type=float, help="seconds a session's history is kept after its last action (default 3600)"
    )
    privacy.add_argument("--file-ttl", type=float, help="seconds a generated image file lives (default 7200)")
    privacy.add_argument(
        "--log-prompts",
        action=argparse.BooleanOptionalAction,
        help="write prompt text to the server log (default off)",
    )
    return p


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``GLMIMAGE_*`` environment variables, then flags. Raises ValueError on a bad value."""
    environ = os.environ if environ is None else environ
    values = _env_defaults(environ)
    args = build_parser().parse_args(argv)
    values.update({name: value for name, value in vars(args).items() if value is not None})
    return Settings(**values)  # type: ignore[arg-type]
