"""PromptEnhancer against a real chat-completions server on 127.0.0.1 (no mocks of httpx)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from glmimage.enhancer import (
    ERROR_KEYS,
    MAX_ENHANCED_CHARS,
    MAX_RESPONSE_BYTES,
    SYSTEM_PROMPT,
    EnhancerConfig,
    EnhancerError,
    PromptEnhancer,
)

API_KEY = "sk-test-0123456789-secret"
ENDPOINT_PATH = "/v1/chat/completions"


def completion(content: object) -> bytes:
    """A chat-completions body the way OpenAI-compatible servers write it."""
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        },
        ensure_ascii=False,
    ).encode("utf-8")


@dataclass
class Reply:
    status: int = 200
    body: bytes = field(default_factory=lambda: completion("A detailed caption."))
    delay_s: float = 0.0  # wait before answering
    trickle_s: float = 0.0  # wait between body bytes


@dataclass
class Recorded:
    path: str
    headers: Message
    body: dict


class ChatServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.reply = Reply()
        self.requests: list[Recorded] = []
        self.release = threading.Event()  # set at teardown so slow handlers stop waiting

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(Recorded(path=self.path, headers=self.headers, body=json.loads(raw)))
        reply = self.server.reply
        if reply.delay_s:
            self.server.release.wait(reply.delay_s)
        status, body = (reply.status, reply.body) if self.path == ENDPOINT_PATH else (404, b'{"error":"no route"}')
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if reply.trickle_s:
                for byte in body:
                    if self.server.release.wait(reply.trickle_s):
                        return
                    self.wfile.write(bytes([byte]))
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, which is what the timeout tests want

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server():
    chat_server = ChatServer()
    thread = threading.Thread(target=chat_server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield chat_server
    chat_server.release.set()
    chat_server.shutdown()
    chat_server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def client():
    # trust_env=False: a proxy set in the environment must not intercept 127.0.0.1.
    with httpx.Client(trust_env=False) as http_client:
        yield http_client


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_enhancer(client: httpx.Client, url: str, **overrides: object) -> PromptEnhancer:
    return PromptEnhancer(EnhancerConfig(url=url, model="glm-4-flash", **overrides), client=client)


# --- success ------------------------------------------------------------------------------------------------


def test_enhance_sends_model_messages_and_sampling_settings_and_returns_content(server, client):
    server.reply = Reply(body=completion("  A red fox in fresh snow at dawn, soft golden light.  "))

    result = make_enhancer(client, server.base_url).enhance("  a fox in snow ")

    assert result == "A red fox in fresh snow at dawn, soft golden light."
    (request,) = server.requests
    assert request.path == ENDPOINT_PATH
    assert request.body == {
        "model": "glm-4-flash",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "a fox in snow"}],
        "temperature": 0.01,
        "top_p": 0.7,
        "max_tokens": 300,
        "stream": False,
    }


def test_enhance_sends_bearer_key_when_key_is_set(server, client):
    make_enhancer(client, server.base_url, api_key=API_KEY).enhance("a fox")

    assert server.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_enhance_sends_no_authorization_header_without_key(server, client):
    make_enhancer(client, server.base_url).enhance("a fox")

    assert "Authorization" not in server.requests[0].headers


def test_chinese_prompt_and_chinese_answer_round_trip_unchanged(server, client):
    prompt = "一只戴着红围巾的橘猫坐在雪地里，招牌上写着“欢迎光临”"
    answer = (
        "一只毛色橘黄的猫咪戴着鲜红的围巾，端坐在洁白的雪地中，身后的木质招牌上写着“欢迎光临”四个大字，柔和的晨光。"
    )
    server.reply = Reply(body=completion(answer))

    result = make_enhancer(client, server.base_url).enhance(prompt)

    assert result == answer
    assert server.requests[0].body["messages"][1]["content"] == prompt


@pytest.mark.parametrize(
    "content, expected",
    [
        ('"A fox in snow."', "A fox in snow."),
        ("```\nA fox in snow.\n```", "A fox in snow."),
        ("```text\nA fox in snow.\n```", "A fox in snow."),
        ("```A fox in snow.```", "A fox in snow."),
        ("“一只狐狸站在雪地里。”", "一只狐狸站在雪地里。"),
        ("「一只狐狸站在雪地里。」", "一只狐狸站在雪地里。"),
        # Quotes that mark text to draw are not a wrapper and must stay.
        ('"OPEN" glows above the door, "24h" below', '"OPEN" glows above the door, "24h" below'),
    ],
)
def test_enhance_strips_quotes_and_code_fences_around_the_whole_answer(server, client, content, expected):
    server.reply = Reply(body=completion(content))

    assert make_enhancer(client, server.base_url).enhance("a fox") == expected


# --- length cap ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, ending",
    [
        pytest.param("The fox stands in the snow, version 3.5 of the scene. " * 100, "scene.", id="english"),
        pytest.param("一只橘猫坐在雪地里，抬头望着飘落的雪花！" * 200, "！", id="chinese"),
        pytest.param('The sign says "OPEN." ' * 200, '"OPEN."', id="closing-quote"),
    ],
)
def test_long_answer_is_cut_at_last_sentence_end_under_the_cap(server, client, content, ending):
    server.reply = Reply(body=completion(content))

    result = make_enhancer(client, server.base_url).enhance("a fox")

    assert len(result) <= MAX_ENHANCED_CHARS
    assert len(result) > MAX_ENHANCED_CHARS - 60
    assert result.endswith(ending)
    assert content.startswith(result)


def test_long_answer_without_sentence_end_or_space_is_cut_at_the_cap(server, client):
    server.reply = Reply(body=completion("猫" * 3000))

    assert make_enhancer(client, server.base_url).enhance("猫") == "猫" * MAX_ENHANCED_CHARS


_PIECES = ["The fox sits.", " ", "word ", "猫", "。", "！", "3.5", "e.g. ", "\n", "?", '"A"']


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.lists(st.sampled_from(_PIECES), max_size=50).map("".join),
        st.lists(st.sampled_from(_PIECES), min_size=400, max_size=900).map("".join),  # around and past the cap
    )
)
def test_answer_is_never_longer_than_cap_and_is_a_prefix_of_the_model_text(server, client, content):
    # The server fixture is shared across examples on purpose: each example sets its own reply first.
    stripped = content.strip()
    assume(stripped and not (stripped.startswith('"') and stripped.endswith('"')))
    server.reply = Reply(body=completion(content))

    result = make_enhancer(client, server.base_url).enhance("a fox")

    assert 0 < len(result) <= MAX_ENHANCED_CHARS
    assert stripped.startswith(result)
    if len(stripped) <= MAX_ENHANCED_CHARS:
        assert result == stripped


# --- failures -----------------------------------------------------------------------------------------------


def test_server_slower_than_timeout_raises_enhancer_timeout_within_the_timeout(server, client):
    server.reply = Reply(delay_s=5.0)
    enhancer = make_enhancer(client, server.base_url, timeout_s=0.5)

    started = time.monotonic()
    with pytest.raises(EnhancerError) as caught:
        enhancer.enhance("a fox")

    assert caught.value.key == "enhancer_timeout"
    assert time.monotonic() - started < 2.0


def test_server_trickling_the_body_is_cut_off_at_the_deadline(server, client):
    # Each byte arrives well inside the read timeout, so only the overall deadline can stop this.
    server.reply = Reply(trickle_s=0.05)
    enhancer = make_enhancer(client, server.base_url, timeout_s=0.5)

    started = time.monotonic()
    with pytest.raises(EnhancerError) as caught:
        enhancer.enhance("a fox")

    assert caught.value.key == "enhancer_timeout"
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("status", [500, 401])
def test_error_status_raises_http_error_with_status_but_never_the_key(server, client, status):
    # Some providers echo the key they rejected; none of it may reach the message.
    server.reply = Reply(status=status, body=json.dumps({"error": f"Incorrect API key provided: {API_KEY}"}).encode())

    with pytest.raises(EnhancerError) as caught:
        make_enhancer(client, server.base_url, api_key=API_KEY).enhance("a fox")

    assert caught.value.key == "enhancer_http_error"
    assert str(status) in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>Bad gateway</html>", id="not-json"),
        pytest.param(b'{"id": "chatcmpl-1", "object": "chat.completion"}', id="no-choices"),
        pytest.param(b'{"choices": []}', id="empty-choices"),
        pytest.param(b'{"choices": [{"message": {"role": "assistant"}}]}', id="no-content"),
        pytest.param(completion(None), id="null-content"),
        pytest.param(completion(""), id="empty-content"),
        pytest.param(completion("  \n "), id="blank-content"),
        pytest.param(completion('""'), id="only-quotes"),
        pytest.param(b"[1, 2, 3]", id="json-array"),
    ],
)
def test_malformed_body_raises_bad_response(server, client, body):
    server.reply = Reply(body=body)

    with pytest.raises(EnhancerError) as caught:
        make_enhancer(client, server.base_url).enhance("a fox")

    assert caught.value.key == "enhancer_bad_response"


def test_body_larger_than_limit_raises_bad_response(server, client):
    server.reply = Reply(body=completion("x" * (MAX_RESPONSE_BYTES + 1)))

    with pytest.raises(EnhancerError) as caught:
        make_enhancer(client, server.base_url).enhance("a fox")

    assert caught.value.key == "enhancer_bad_response"


def test_connection_refused_raises_unreachable(client, closed_port):
    enhancer = make_enhancer(client, f"http://127.0.0.1:{closed_port}/v1", api_key=API_KEY)

    with pytest.raises(EnhancerError) as caught:
        enhancer.enhance("a fox")

    assert caught.value.key == "enhancer_unreachable"
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompt_raises_empty_prompt_without_calling_the_server(server, client, prompt):
    with pytest.raises(EnhancerError) as caught:
        make_enhancer(client, server.base_url).enhance(prompt)

    assert caught.value.key == "enhancer_empty_prompt"
    assert server.requests == []


def test_failure_is_logged_without_prompt_or_key(server, client, caplog):
    server.reply = Reply(status=500)
    prompt = "a secret birthday surprise for Alice"

    with caplog.at_level(logging.WARNING, logger="glmimage.enhancer"), pytest.raises(EnhancerError):
        make_enhancer(client, server.base_url, api_key=API_KEY).enhance(prompt)

    assert caplog.records, "a failure must be logged"
    assert all(record.name == "glmimage.enhancer" for record in caplog.records)
    assert prompt not in caplog.text
    assert API_KEY not in caplog.text


def test_success_is_not_logged(server, client, caplog):
    with caplog.at_level(logging.DEBUG, logger="glmimage.enhancer"):
        make_enhancer(client, server.base_url, api_key=API_KEY).enhance("a fox")

    assert caplog.records == []


def test_error_keys_are_the_documented_ones_and_unknown_keys_are_refused():
    assert set(ERROR_KEYS) == {
        "enhancer_timeout",
        "enhancer_http_error",
        "enhancer_bad_response",
        "enhancer_unreachable",
        "enhancer_empty_prompt",
    }
    with pytest.raises(ValueError):
        EnhancerError("enhancer_typo")


# --- URL normalisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/v1/chat/completions", "/v1/chat/completions/"])
def test_base_url_and_full_url_both_reach_chat_completions(server, client, suffix):
    url = f"http://127.0.0.1:{server.server_address[1]}{suffix}"

    assert make_enhancer(client, url).enhance("a fox") == "A detailed caption."
    assert server.requests[0].path == ENDPOINT_PATH


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"GLMIMAGE_ENHANCER_URL": "http://127.0.0.1:8000/v1"},
        {"GLMIMAGE_ENHANCER_MODEL": "glm-4-flash"},
        {"GLMIMAGE_ENHANCER_URL": "  ", "GLMIMAGE_ENHANCER_MODEL": "glm-4-flash"},
        {"GLMIMAGE_ENHANCER_URL": "http://127.0.0.1:8000/v1", "GLMIMAGE_ENHANCER_MODEL": ""},
    ],
)
def test_from_env_returns_none_when_url_or_model_is_unset(environ):
    assert EnhancerConfig.from_env(environ) is None


def test_from_env_reads_url_model_key_and_timeout():
    config = EnhancerConfig.from_env(
        {
            "GLMIMAGE_ENHANCER_URL": "https://open.bigmodel.cn/api/paas/v4",
            "GLMIMAGE_ENHANCER_MODEL": "glm-4-flash",
            "GLMIMAGE_ENHANCER_KEY": API_KEY,
            "GLMIMAGE_ENHANCER_TIMEOUT": "7.5",
        }
    )

    assert config == EnhancerConfig(
        url="https://open.bigmodel.cn/api/paas/v4", model="glm-4-flash", api_key=API_KEY, timeout_s=7.5
    )


def test_from_env_uses_demo_defaults_without_key_or_timeout():
    config = EnhancerConfig.from_env(
        {"GLMIMAGE_ENHANCER_URL": "http://127.0.0.1:8000/v1", "GLMIMAGE_ENHANCER_MODEL": "glm-4"}
    )

    assert config is not None
    assert (config.api_key, config.timeout_s, config.max_tokens, config.temperature, config.top_p) == (
        "",
        20.0,
        300,
        0.01,
        0.7,
    )


def test_from_env_refuses_a_timeout_that_is_not_a_number():
    with pytest.raises(ValueError, match="GLMIMAGE_ENHANCER_TIMEOUT"):
        EnhancerConfig.from_env(
            {
                "GLMIMAGE_ENHANCER_URL": "http://127.0.0.1:8000/v1",
                "GLMIMAGE_ENHANCER_MODEL": "glm-4",
                "GLMIMAGE_ENHANCER_TIMEOUT": "20s",
            }
        )


def test_key_is_not_in_repr_or_str_of_config():
    config = EnhancerConfig(url="http://127.0.0.1:8000/v1", model="glm-4", api_key=API_KEY)

    assert API_KEY not in repr(config)
    assert API_KEY not in str(config)
    assert "glm-4" in repr(config)


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "127.0.0.1:8000/v1"},
        {"url": "ftp://127.0.0.1/v1"},
        {"url": ""},
        {"model": " "},
        {"timeout_s": 0},
        {"timeout_s": float("inf")},
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0},
    ],
)
def test_config_refuses_invalid_settings_at_creation(overrides):
    settings_ = {"url": "http://127.0.0.1:8000/v1", "model": "glm-4", **overrides}

    with pytest.raises(ValueError):
        EnhancerConfig(**settings_)
