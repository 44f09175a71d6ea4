"""Settings: one typed object, read from ``GLMIMAGE_*`` environment variables and overridden by CLI flags.

Host and port stay Gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from .limits import DEFAULT_MODEL
from .models.accel import OFFLOAD_MODES, QUANTIZE_MODES, FastPaths
from .ratelimit import RateLimit, parse_trusted_proxies

DTYPES = ("auto", "bfloat16", "float32")
ENV_PREFIX = "GLMIMAGE_"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def parse_devices(text: str) -> list[str]:
    """``--devices``: "cuda:0,cuda:1" -> ["cuda:0", "cuda:1"] ("cuda" is "cuda:0"); "" -> [] (the first CUDA
    device, else the CPU, chosen when torch is loaded). Raises ValueError naming a bad entry."""
    if not text.strip():
        return []
    entries = [part.strip().lower() for part in text.split(",")]
    for entry in entries:
        if not _DEVICE.fullmatch(entry):
            raise ValueError(f"--devices: {entry!r} is not a device; write e.g. cuda:0,cuda:1 or cpu,cpu")
    return ["cuda:0" if entry == "cuda" else entry for entry in entries]


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
    devices: str = ""
    max_queue: int = 32
    max_jobs_per_client: int = 2
    rate_limit: str = "10/minute"
    trusted_proxies: str = ""
    max_sessions: int = 2000
    session_ttl: float = 3600.0
    file_ttl: float = 7200.0
    log_prompts: bool = False
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
        self._check_combinations()
        object.__setattr__(self, "trusted_proxy_list", parse_trusted_proxies(self.trusted_proxies))
        self.fast_paths  # noqa: B018 - validates the fast-path options now, not at load time

    def _check_combinations(self) -> None:
        """Refuse at start what cannot run together, with the reason (the README's table of combinations)."""
        if self.offload == "sequential" and self.compile:
            raise ValueError(
                "--offload sequential cannot be combined with --compile: sequential offload moves every layer's "
                "weights in and out around each call, which torch.compile cannot trace into one graph. Use "
                "--offload model with --compile."
            )
        if self.offload == "sequential" and self.quantize != "none":
            raise ValueError(
                "--offload sequential cannot be combined with --quantize int8: sequential offload parks every "
                "weight on the meta device and copies it back per layer, which torchao's quantized weights do not "
                "survive. Use --offload model with --quantize int8 (about 12 GB)."
            )
        devices = parse_devices(self.devices)
        kinds = {entry.split(":")[0] for entry in devices}
        if len(kinds) > 1:
            raise ValueError(
                f"--devices {self.devices}: list CUDA devices or the CPU, not both (all pipelines share one dtype, "
                "and bfloat16 on a CPU is many times slower)"
            )
        if self.offload != "none" and kinds == {"cpu"}:
            raise ValueError(f"--offload {self.offload} needs CUDA devices, but --devices is {self.devices}")

    @property
    def device_list(self) -> list[str]:
        """The ``--devices`` entries; empty for the default (the first CUDA device, else the CPU)."""
        return parse_devices(self.devices)

    @property
    def workers(self) -> int:
        """Pipelines in the pool, and so jobs at once: ``--concurrency`` per ``--devices`` entry."""
        return max(1, len(self.device_list)) * self.concurrency

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
    serving.add_argument(
        "--devices",
        help="comma-separated devices, one pipeline each, e.g. cuda:0,cuda:1 or cpu,cpu; a job goes to a free "
        "one (default: the first CUDA device, else cpu)",
    )
    serving.add_argument(
        "--concurrency",
        type=int,
        help="pipelines (jobs at once) per --devices entry, each with its own per-job state (default 1)",
    )
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
