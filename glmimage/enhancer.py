"""Optional "Enhance prompt" step: rewrite a short prompt into the long caption form CogView4 was trained on.

CogView4 was trained on long, detailed captions, so a three-word prompt leaves most of the picture to chance.
Its official demo therefore asks a chat model (GLM-4) to expand the prompt first, with temperature 0.01,
top_p 0.7 and max_tokens 300. This module does the same through any OpenAI-compatible chat-completions
endpoint, with no gradio import:

- `EnhancerConfig`: where the endpoint is and how to call it, read from `GLMIMAGE_ENHANCER_*` variables.
- `PromptEnhancer`: one `enhance(prompt)` call, bounded in time, that returns the rewritten prompt.
- `EnhancerError`: every failure, with a `key` the UI turns into a message in the visitor's language.

The API key never appears in a repr, an exception message or a log line; log lines never hold the prompt.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .errors import AppError

logger = logging.getLogger("glmimage.enhancer")

SYSTEM_PROMPT = (
    "You are a bilingual (Chinese and English) prompt engineer for a text-to-image model. "
    "Rewrite the user's description into one detailed paragraph that describes a single image: the main subject "
    "and its appearance, pose or action; the setting and background; the composition and viewpoint; the lighting; "
    "the colours; and the artistic style or medium. Add concrete visual detail, but keep everything the user asked "
    "for and contradict none of it. If the user wants text written in the image, keep every piece of that text "
    "verbatim, character for character, inside double quotes, and say where it appears. Answer in the same "
    "language as the user's description: Chinese for a Chinese description, English for an English one. Keep it "
    "under 180 English words or 300 Chinese characters. Reply with the rewritten prompt only: no title, no "
    "explanation, no list, no quotes around the whole answer."
)

ERROR_KEYS = (
    "enhancer_timeout",
    "enhancer_http_error",
    "enhancer_bad_response",
    "enhancer_unreachable",
    "enhancer_empty_prompt",
)
"""Every `EnhancerError.key`, so the UI strings can be checked to cover them all."""

MAX_ENHANCED_CHARS = 2000
"""Longest prompt `enhance` returns. CogView4's text encoder reads at most 1024 tokens, and a caption much
longer than the trained ones stops helping; 2000 characters leave room for a style template around it."""

MAX_RESPONSE_BYTES = 1_000_000
"""A chat answer of 300 tokens is a few kilobytes; anything past this is not an answer we can use."""

_CHAT_COMPLETIONS_PATH = "/chat/completions"
# A sentence ends at a CJK full stop / exclamation / question mark, or at an ASCII one followed by whitespace
# (so "3.5" and "e.g" are not boundaries); closing quotes and brackets right after it belong to the sentence.
_SENTENCE_END = re.compile(r"[。！？][”’」』）)\"']*|[.!?][”’」』）)\"']*(?=\s)")
# The language tag ("```text") only counts when a newline follows it, so "```A fox```" keeps its "A".
_CODE_FENCE = re.compile(r"```(?:[\w+-]*[ \t]*\n)?(.*?)\n?```", re.DOTALL)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』"}


class EnhancerError(AppError):
    """The enhancer failed; ``key`` names the failure, ``detail`` (an HTTP status, an exception type) is for logs
    and never holds the API key."""

    def __init__(self, key: str, detail: str = "") -> None:
        if key not in ERROR_KEYS:
            raise ValueError(f"Unknown enhancer error key {key!r}; expected one of {', '.join(ERROR_KEYS)}")
        super().__init__(key, f"{key}: {detail}" if detail else key)
        self.detail = detail


@dataclass(frozen=True)
class EnhancerConfig:
    """How to reach the chat-completions endpoint. Checked on creation so a bad setting fails at start-up.

    `url` is either an OpenAI-style base URL ("http://127.0.0.1:8000/v1") or the full
    ".../chat/completions" URL, because providers document one or the other.
    """

    url: str
    model: str
    api_key: str = field(default="", repr=False)
    timeout_s: float = 20.0
    max_tokens: int = 300
    temperature: float = 0.01
    top_p: float = 0.7

    def __post_init__(self) -> None:
        try:
            parsed = httpx.URL(self.url.strip())
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"Enhancer URL must be an http:// or https:// URL, got {self.url!r}")
        if not self.model.strip():
            raise ValueError("Enhancer model name must not be empty")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"Enhancer timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if not (isinstance(self.max_tokens, int) and self.max_tokens > 0):
            raise ValueError(f"Enhancer max_tokens must be a whole number > 0, got {self.max_tokens!r}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"Enhancer temperature must be between 0 and 2, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Enhancer top_p must be in (0, 1], got {self.top_p!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EnhancerConfig | None:
        """Read `GLMIMAGE_ENHANCER_*`; None when URL or MODEL is unset, which hides the feature in the UI.

        GLMIMAGE_ENHANCER_KEY is optional (local servers need none); GLMIMAGE_ENHANCER_TIMEOUT is in seconds.
        A timeout that is not a number raises ValueError, so a typo fails at start-up.
        """
        env = os.environ if environ is None else environ
        url = env.get("GLMIMAGE_ENHANCER_URL", "").strip()
        model = env.get("GLMIMAGE_ENHANCER_MODEL", "").strip()
        if not url or not model:
            if url or model:
                missing = "GLMIMAGE_ENHANCER_MODEL" if url else "GLMIMAGE_ENHANCER_URL"
                logger.warning("Prompt enhancer disabled: %s is not set", missing)
            return None
        timeout_text = env.get("GLMIMAGE_ENHANCER_TIMEOUT", "").strip()
        timeout_s = cls.timeout_s
        if timeout_text:
            try:
                timeout_s = float(timeout_text)
            except ValueError:
                raise ValueError(
                    f"GLMIMAGE_ENHANCER_TIMEOUT must be a number of seconds, got {timeout_text!r}"
                ) from None
        return cls(url=url, model=model, api_key=env.get("GLMIMAGE_ENHANCER_KEY", "").strip(), timeout_s=timeout_s)


def _chat_completions_url(url: str) -> httpx.URL:
    """Accept a base URL or the full endpoint URL; keep any query string (some providers need one)."""
    parsed = httpx.URL(url.strip())
    path = parsed.path.rstrip("/")
    if not path.endswith(_CHAT_COMPLETIONS_PATH):
        path += _CHAT_COMPLETIONS_PATH
    return parsed.copy_with(path=path)


def _strip_wrapping(text: str) -> str:
    """Remove a code fence or quotes around the whole answer, which chat models add despite being asked not to.

    Quotes are removed only when they wrap the whole text and appear nowhere inside it, so an answer such as
    `"OPEN" glows above the door, "24h" below` keeps the quoted text CogView4 should draw.
    """
    text = text.strip()
    fenced = _CODE_FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1).strip()
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        inner = text[1:-1]
        if text[0] not in inner and text[-1] not in inner:
            text = inner.strip()
    return text


def _cap_length(text: str) -> str:
    """Cut text longer than MAX_ENHANCED_CHARS at the last sentence end before the cap.

    A rewrite that runs long is still mostly good, so failing the request would waste it; cutting mid-sentence
    would hand the image model a broken instruction. Without any sentence end, cut at the last space, and
    without a space (Chinese with no punctuation) at the cap itself.
    """
    if len(text) <= MAX_ENHANCED_CHARS:
        return text
    # endpos one past the cap lets the lookahead see the character right after a full stop at the cap.
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, MAX_ENHANCED_CHARS + 1)]
    ends = [end for end in ends if end <= MAX_ENHANCED_CHARS]
    if ends:
        return text[: ends[-1]].rstrip()
    space = text.rfind(" ", 0, MAX_ENHANCED_CHARS + 1)
    if space > 0:
        return text[:space].rstrip()
    return text[:MAX_ENHANCED_CHARS]


def _parse_reply(body: bytes) -> str:
    """The answer text from a chat-completions body; anything else is enhancer_bad_response."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EnhancerError("enhancer_bad_response", "body is not JSON") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EnhancerError("enhancer_bad_response", "no choices[0].message.content") from None
    if not isinstance(content, str):
        raise EnhancerError("enhancer_bad_response", f"content is {type(content).__name__}, not text")
    text = _strip_wrapping(content)
    if not text:
        raise EnhancerError("enhancer_bad_response", "content is empty")
    return _cap_length(text)


class PromptEnhancer:
    """Calls the chat model once per `enhance`; safe to share between requests (httpx.Client is thread-safe).

    Pass `client` to share a connection pool or proxy settings; the per-request timeout from the config
    applies either way.
    """

    def __init__(self, config: EnhancerConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self._url = _chat_completions_url(config.url)
        self._client = client if client is not None else httpx.Client()

    def enhance(self, prompt: str) -> str:
        """Rewrite `prompt` into a detailed caption in its own language; raise EnhancerError on any failure.

        Each network wait is limited to `config.timeout_s` and the body read stops at that deadline, so a
        server that does not answer costs `timeout_s`, not a hung request.
        """
        if not prompt.strip():
            raise EnhancerError("enhancer_empty_prompt")
        try:
            return _parse_reply(self._post(prompt.strip()))
        except EnhancerError as error:
            logger.warning("Prompt enhancement failed (model %s): %s", self.config.model, error)
            raise

    def _post(self, prompt: str) -> bytes:
        config = self.config
        payload = {
            "model": config.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
            "stream": False,
        }
        headers = {"Accept": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        deadline = time.monotonic() + config.timeout_s
        try:
            with self._client.stream(
                "POST", self._url, json=payload, headers=headers, timeout=config.timeout_s
            ) as response:
                if not response.is_success:
                    raise EnhancerError("enhancer_http_error", f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise EnhancerError("enhancer_bad_response", f"body longer than {MAX_RESPONSE_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise EnhancerError("enhancer_timeout", f"body not read within {config.timeout_s} s")
                return bytes(body)
        except httpx.TimeoutException as exc:
            raise EnhancerError("enhancer_timeout", self._describe(exc)) from None
        except httpx.DecodingError as exc:
            raise EnhancerError("enhancer_bad_response", self._describe(exc)) from None
        except httpx.HTTPError as exc:
            raise EnhancerError("enhancer_unreachable", self._describe(exc)) from None

    def _describe(self, exc: Exception) -> str:
        """Exception type and message for logs, with the API key masked should a message ever echo it."""
        text = f"{type(exc).__name__}: {exc}"
        if self.config.api_key:
            text = text.replace(self.config.api_key, "***")
        return text
