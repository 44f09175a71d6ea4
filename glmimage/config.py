"""Settings: one typed object, read from ``GLMIMAGE_*`` environment variables and overridden by CLI flags.

Host and port stay Gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from .limits import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MODEL
from .models.accel import OFFLOAD_MODES, QUANTIZE_MODES, FastPaths
from .ratelimit import RateLimit, parse_trusted_proxies

DTYPES = ("auto", "bfloat16", "float32")
BACKENDS = ("local", "ray")
ENV_PREFIX = "GLMIMAGE_"
# Settings whose default is None and whose value, when given, is text.
_OPTIONAL_TEXT = (
    "model",
    "cache_dir",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_keyfile_password",
    "auth_file",
    "maintenance_file",
)
MAX_CONTACT_CHARS = 500
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


# A Hugging Face Space shows the app inside huggingface.co's Space page, in a frame.
SPACE_FRAME_ANCESTORS = "'self' https://huggingface.co"
# One CSP frame-ancestors source: a keyword, or a scheme and host (wildcard subdomain and port allowed).
_FRAME_SOURCE = re.compile(r"'self'|'none'|https?://(\*\.)?[a-z0-9.-]+(:[0-9]{1,5})?|https:", re.IGNORECASE)


def parse_frame_ancestors(text: str) -> list[str]:
    """The sources of a ``frame-ancestors`` setting; refuses anything else, since the text goes into a header."""
    sources = text.split()
    if not sources:
        raise ValueError("--frame-ancestors is empty; use 'none' to forbid every frame")
    for source in sources:
        if not _FRAME_SOURCE.fullmatch(source):
            raise ValueError(
                f"--frame-ancestors: {source!r} is not 'self', 'none' or an origin such as https://huggingface.co"
            )
    if "'none'" in sources and len(sources) > 1:
        raise ValueError("--frame-ancestors: 'none' cannot be combined with other sources")
    return sources


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
    rate_limit_by_cost: bool = False
    trusted_proxies: str = ""
    session_rate_limit: str = "60/minute"
    listener_timeout: float = 5.0
    frame_ancestors: str = "'self'"
    max_sessions: int = 2000
    session_ttl: float = 3600.0
    file_ttl: float = 7200.0
    log_prompts: bool = False
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    backend: str = "local"
    replicas: str = "1"
    replica_gpus: float = 1.0
    ray_address: str = ""
    replica_timeout: float = 300.0
    upload_rate_limit: str = "20/minute"
    host: str = "127.0.0.1"
    port: int = 7860
    cache_dir: str | None = None
    # Operators (issue 13): TLS, private access, maintenance, graceful restarts, metrics, a support line.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)  # never printed
    auth_file: str | None = None
    maintenance_file: str | None = None
    drain_timeout: float = 30.0
    metrics: bool = True
    contact: str = ""
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
        if not self.max_upload_mb > 0:  # also refuses NaN
            raise ValueError(f"--max-upload-mb must be positive (got {self.max_upload_mb})")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be from 1 to 65535 (got {self.port})")
        RateLimit.parse(self.rate_limit)
        self._check_combinations()
        RateLimit.parse(self.session_rate_limit)
        RateLimit.parse(self.upload_rate_limit)
        if not 0 < self.listener_timeout <= 600:
            raise ValueError(f"--listener-timeout must be from 0 to 600 seconds (got {self.listener_timeout:g})")
        parse_frame_ancestors(self.frame_ancestors)
        self._check_cluster_options()
        object.__setattr__(self, "trusted_proxy_list", parse_trusted_proxies(self.trusted_proxies))
        self.fast_paths  # noqa: B018 - validates the fast-path options now, not at load time
        if not 0 <= self.drain_timeout <= 3600:
            raise ValueError(f"--drain-timeout must be from 0 to 3600 seconds (got {self.drain_timeout:g})")
        if len(self.contact) > MAX_CONTACT_CHARS:
            raise ValueError(f"--contact is too long: {len(self.contact)} characters, at most {MAX_CONTACT_CHARS}")
        self._check_tls()
        if self.auth_file is not None:
            from .auth import PasswordFile

            PasswordFile(self.auth_file).check_at_start()
        if self.maintenance_file is not None and not os.path.isdir(
            os.path.dirname(os.path.abspath(self.maintenance_file))
        ):
            raise ValueError(
                f"--maintenance-file {self.maintenance_file}: its folder does not exist, so the file could never "
                "be created there"
            )

    def _check_tls(self) -> None:
        """Load the certificate and key the way the server will, so a wrong path, an unreadable file, a wrong
        password or a key that does not match fail at start with a message, not as a server that never answers."""
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("--ssl-keyfile needs --ssl-certfile too")
        if self.ssl_keyfile_password and not self.ssl_keyfile:
            raise ValueError("--ssl-keyfile-password needs --ssl-keyfile")
        if not self.ssl_certfile:
            return
        for flag, path in (("--ssl-certfile", self.ssl_certfile), ("--ssl-keyfile", self.ssl_keyfile)):
            if path is None:
                continue
            if not os.path.exists(path):
                raise ValueError(f"{flag} {path}: no such file")
            if not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: not a file")
            try:
                with open(path, "rb") as file:
                    file.read(1)
            except OSError as exc:
                raise ValueError(f"{flag} {path}: cannot be read ({exc.strerror})") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                self.ssl_certfile, self.ssl_keyfile, self.ssl_keyfile_password
            )
        except ssl.SSLError as exc:
            raise ValueError(
                f"--ssl-certfile {self.ssl_certfile} / --ssl-keyfile {self.ssl_keyfile}: the certificate and key "
                f"could not be loaded ({exc.reason or exc}): check that both are PEM files, that the key matches the "
                "certificate, and the key's password (--ssl-keyfile-password)"
            ) from None

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile)

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
        """Jobs running at once, and so the Gradio queue's concurrency limit. Locally a pipeline per ``--devices``
        entry, ``--concurrency`` times. With Ray one job per replica that can run: the most replicas; under
        autoscaling the jobs beyond the replicas up wait in Serve's own queue of the deployment handle (at most
        max - running), and that demand is what makes Serve add replicas."""
        if self.backend == "ray":
            return self.replica_range[1]
        return max(1, len(self.device_list)) * self.concurrency

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
        if self.backend == "ray" and self.devices:
            raise ValueError(
                "--devices is for the local backend: with --backend ray each replica runs on the GPU(s) Ray gives it "
                "(--replica-gpus)"
            )
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
    def fast_paths(self) -> FastPaths:
        return FastPaths(
            offload=self.offload,
            compile=self.compile,
            cache_threshold=self.cache_threshold if self.cache else 0.0,
            quantize=self.quantize,
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def parsed_rate_limit(self) -> RateLimit:
        return RateLimit.parse(self.rate_limit)

    @property
    def parsed_session_rate_limit(self) -> RateLimit:
        return RateLimit.parse(self.session_rate_limit)

    @property
    def parsed_upload_rate_limit(self) -> RateLimit:
        return RateLimit.parse(self.upload_rate_limit)


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
        kind = type(getattr(Settings(), f.name)) if f.name not in _OPTIONAL_TEXT else str
        try:
            values[f.name] = _bool(raw) if kind is bool else kind(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None
    if "frame_ancestors" not in values and environ.get("SPACE_ID"):
        # On a Hugging Face Space the page is shown inside huggingface.co's Space page: allow that frame.
        values["frame_ancestors"] = SPACE_FRAME_ANCESTORS
    if environ.get("GRADIO_SERVER_NAME"):
        values["host"] = environ["GRADIO_SERVER_NAME"]
    if environ.get("GRADIO_SERVER_PORT"):
        values["port"] = int(environ["GRADIO_SERVER_PORT"])
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="GLM Image: a web app for CogView4 and GLM-Image (text-to-image; GLM-Image also edits "
        "pictures). Every option can also be set with an environment variable GLMIMAGE_<OPTION> (e.g. "
        "GLMIMAGE_MODEL, GLMIMAGE_CONCURRENCY).",
    )
    _model_options(p.add_argument_group("model"))
    _serving_options(p.add_argument_group("serving"))
    _cluster_options(p.add_argument_group("cluster (Ray Serve, needs requirements-ray.txt)"))
    _privacy_options(p.add_argument_group("privacy"))
    _operator_options(p.add_argument_group("operators"))
    return p


def _model_options(model: argparse._ArgumentGroup) -> None:
    model.add_argument(
        "--model",
        help=f"hub id (e.g. {DEFAULT_MODEL} or zai-org/GLM-Image), local folder, or 'tiny' / 'tiny-glm' "
        "(random CogView4 / GLM-Image weights, for testing). Default: the real CogView4 when CUDA is available, "
        "else tiny",
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
        help="generations at start-up, so the first visitor does not pay for first-use set-up (default on): one "
        "small 2-step job with the model's default guidance; with --compile, a job at the default size and a batch "
        "of two, the graphs every later request reuses",
    )
    model.add_argument("--cache-dir", help="where the tiny model is built (default ~/.cache/glmimage)")


def _serving_options(serving: argparse._ArgumentGroup) -> None:
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
        "--rate-limit-by-cost",
        action=argparse.BooleanOptionalAction,
        help="count a request as many default requests as its pixels x steps x images cost, rounded up "
        "(1024x1024, 50 steps, 1 image = 1; default off)",
    )
    serving.add_argument(
        "--session-rate-limit",
        help="new sessions per visitor address, e.g. 60/minute; 0 disables (default 60/minute)",
    )
    serving.add_argument(
        "--listener-timeout",
        type=float,
        help="seconds a job may wait for its result stream to connect before it is dropped or stopped (default 5)",
    )
    serving.add_argument(
        "--frame-ancestors",
        help="pages allowed to show this one in a frame (CSP frame-ancestors), e.g. \"'self' https://huggingface.co\" "
        "(default 'self'; on a Hugging Face Space 'self' https://huggingface.co)",
    )
    serving.add_argument(
        "--trusted-proxies",
        help="comma-separated proxy IPs/CIDRs whose X-Forwarded-For is "
        "believed (default: none, the header is ignored)",
    )
    serving.add_argument(
        "--max-upload-mb",
        type=float,
        help=f"largest picture a visitor may upload to edit, per file (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    serving.add_argument(
        "--upload-rate-limit",
        help="uploads per visitor address, e.g. 20/minute; a request counts once per --max-upload-mb it declares "
        "(a 4-picture upload of 20 MB each counts 4); 0 disables (default 20/minute)",
    )


def _cluster_options(cluster: argparse._ArgumentGroup) -> None:
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


def _privacy_options(privacy: argparse._ArgumentGroup) -> None:
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


def _operator_options(operators: argparse._ArgumentGroup) -> None:
    operators.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    operators.add_argument("--ssl-keyfile", help="the PEM private key of --ssl-certfile")
    operators.add_argument(
        "--ssl-keyfile-password",
        help="password of an encrypted --ssl-keyfile (better: GLMIMAGE_SSL_KEYFILE_PASSWORD, which ps does not show)",
    )
    operators.add_argument(
        "--auth-file",
        help="ask for a login: htpasswd-style file of user:bcrypt-hash lines (htpasswd -B, or "
        "python -m glmimage.auth add USER --file PATH). Default: no login",
    )
    operators.add_argument(
        "--maintenance-file",
        help="while this file exists, its text is shown as a banner and new generations are refused",
    )
    operators.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds that running and queued jobs may take to finish on SIGTERM/Ctrl-C (default 30)",
    )
    operators.add_argument(
        "--metrics", action=argparse.BooleanOptionalAction, help="Prometheus metrics at /metrics (default on)"
    )
    operators.add_argument("--contact", help="support line (Markdown, e.g. an e-mail link) shown on the page")


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``GLMIMAGE_*`` environment variables, then flags. Raises ValueError on a bad value."""
    environ = os.environ if environ is None else environ
    values = _env_defaults(environ)
    args = build_parser().parse_args(argv)
    values.update({name: value for name, value in vars(args).items() if value is not None})
    return Settings(**values)  # type: ignore[arg-type]
