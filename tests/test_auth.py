"""Private deployments (--auth-file): an htpasswd file with bcrypt hashes (as ``htpasswd -B`` writes them), a login
page, gradio_client with ``auth=``; without the right login no page, no API and no files; failed logins limited
per address; passwords never in a log."""

from __future__ import annotations

import logging

import httpx
import pytest
from conftest import request_kwargs
from gradio_client import Client
from rawhttp import http_client

from glmimage import auth
from glmimage.auth import LoginThrottle, PasswordFile, parse_htpasswd, set_user
from glmimage.config import load_settings

# Written by Apache's `htpasswd -nbB -C 5` (apache2-utils 2.4.68): the $2y$ form, cost 5 so tests stay quick.
ALICE, ALICE_PASSWORD = "alice", "correct horse 电池"
BOB, BOB_PASSWORD = "bob", "hunter2!"
HTPASSWD = (
    "# users of the lab's GLM Image\n"
    "alice:$2y$05$vZZWz/LxLGPW1rco5HNO0OsRK7cDt0dHbDWDW7R1NgmwwgCyes.kS\n"
    "\n"
    "bob:$2y$05$ScPj0fssXnl9qb7U0AWYL.TO4sxwjn1uoZpfqBto8IStGxO3bwSYi\n"
)
WRONG_USER = "wrong-user-canary"
WRONG_PASSWORD = "wrong-password-canary"


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(HTPASSWD, encoding="utf-8")
    return path


def test_htpasswd_bcrypt_lines_from_apache_are_accepted_and_checked(htpasswd):
    passwords = PasswordFile(htpasswd)
    assert set(passwords.users()) == {ALICE, BOB}
    assert passwords.verify(ALICE, ALICE_PASSWORD) and passwords.verify(BOB, BOB_PASSWORD)
    assert not passwords.verify(ALICE, BOB_PASSWORD)
    assert not passwords.verify(WRONG_USER, ALICE_PASSWORD)


def test_other_hash_kinds_and_broken_lines_are_refused_naming_the_line_not_the_hash():
    with pytest.raises(ValueError, match="line 2: user 'carol' has no bcrypt hash") as caught:
        parse_htpasswd("alice:$2y$05$abc\ncarol:$apr1$abc$secretlooking\n")
    assert "secretlooking" not in str(caught.value)
    with pytest.raises(ValueError, match="line 1: not a user:hash line"):
        parse_htpasswd("just-a-name\n")


def test_the_settings_refuse_a_missing_or_empty_auth_file_with_exit_code_2(tmp_path, capsys):
    from glmimage.web.server import main

    assert main(["--auth-file", str(tmp_path / "missing")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="has no users"):
        load_settings(["--auth-file", str(empty)], environ={})


def test_auth_add_asks_twice_writes_a_htpasswd_line_and_changes_or_removes_a_user(tmp_path, monkeypatch, capsys):
    path = tmp_path / "users"
    answers = iter(["s3cret pass", "s3cret pass", "new pass", "new pass", "one", "other"])
    monkeypatch.setattr(auth.getpass, "getpass", lambda prompt="": next(answers))
    assert auth.main(["add", ALICE, "--file", str(path)]) == 0
    line = path.read_text().strip()
    assert line.startswith(f"{ALICE}:$2y$12$") and "s3cret" not in line
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert PasswordFile(path).verify(ALICE, "s3cret pass")

    assert auth.main(["add", ALICE, "--file", str(path)]) == 0
    assert "changed the password of alice" in capsys.readouterr().out
    assert len(path.read_text().splitlines()) == 1 and PasswordFile(path).verify(ALICE, "new pass")

    before = path.read_text()
    assert auth.main(["add", BOB, "--file", str(path)]) == 1  # the two typings differ
    assert "differ" in capsys.readouterr().err and path.read_text() == before

    assert auth.main(["add", "bad:name", "--file", str(path)]) == 1
    assert auth.main(["remove", ALICE, "--file", str(path)]) == 0
    assert path.read_text() == ""


def test_a_running_server_sees_a_user_added_to_the_file(htpasswd):
    passwords = PasswordFile(htpasswd)
    assert not passwords.verify("carol", "carol's password")
    set_user(htpasswd, "carol", auth.hash_password("carol's password"))
    assert passwords.verify("carol", "carol's password") and passwords.verify(ALICE, ALICE_PASSWORD)
    assert "# users of the lab's GLM Image" in htpasswd.read_text()  # the operator's comments stay


def test_failed_logins_are_limited_per_address_and_age_out():
    now = [0.0]
    throttle = LoginThrottle(allowed=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("203.0.113.7") == 0
        throttle.failed("203.0.113.7")
        now[0] += 1
    assert throttle.retry_after("203.0.113.7") == pytest.approx(57)
    assert throttle.retry_after("203.0.113.8") == 0  # another address is not held up
    now[0] += 57
    assert throttle.retry_after("203.0.113.7") == 0


@pytest.fixture(scope="module")
def private_server(start_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    path.write_text(HTPASSWD, encoding="utf-8")
    return start_server(auth_file=str(path))


def login(client: httpx.Client, user: str, password: str) -> httpx.Response:
    return client.post("/login", data={"username": user, "password": password})


def test_without_a_login_there_is_no_page_no_api_and_no_file(private_server):
    # A picture made by someone logged in, so there is a real file to ask for.
    member = Client(private_server.url, auth=(ALICE, ALICE_PASSWORD), verbose=False, download_files=False)
    images, _seed, _details = member.predict(**request_kwargs(), api_name="/generate")
    file_url = images[0]["image"]["url"]
    member.close()

    anonymous = http_client(private_server.url, source="127.0.0.21")
    page = anonymous.get("/")
    assert page.status_code == 200 and '"auth_required":true' in page.text  # Gradio's login page
    for private in ("/generate", "label.prompt", "button.generate", "negative_prompt"):
        assert private not in page.text  # neither the page's components nor the API description
    refused = {
        "GET /config": anonymous.get("/config"),
        "GET /gradio_api/info": anonymous.get("/gradio_api/info"),
        "GET file=": anonymous.get(file_url),
        "POST queue/join": anonymous.post(
            "/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x" * 11}
        ),
        "POST /gradio_api/upload": anonymous.post("/gradio_api/upload", files={"files": ("a.txt", b"hello")}),
        "POST call/generate": anonymous.post("/gradio_api/call/generate", json={"data": []}),
        "GET heartbeat": anonymous.get("/gradio_api/heartbeat/" + "x" * 11),
        "POST cancel": anonymous.post("/gradio_api/cancel", json={"session_hash": "x", "event_id": "y"}),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 401)
    # The operators' routes stay open for load balancers and Prometheus; they hold nothing private.
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/metrics").status_code == 200

    assert login(anonymous, ALICE, ALICE_PASSWORD).status_code == 200
    assert anonymous.get("/gradio_api/info").status_code == 200
    assert anonymous.get(file_url).status_code == 200
    assert '"/generate"' in anonymous.get("/").text


def test_the_right_login_generates_through_gradio_client_and_a_wrong_one_gets_nothing(private_server):
    client = Client(private_server.url, auth=(BOB, BOB_PASSWORD), verbose=False)
    images, seed, _details = client.predict(**request_kwargs(), api_name="/generate")
    assert len(images) == 1 and seed == request_kwargs()["seed"]
    client.close()
    with pytest.raises(ValueError, match="Could not login"):
        Client(private_server.url, auth=(BOB, WRONG_PASSWORD), verbose=False)
    with pytest.raises(ValueError):  # no login at all: Gradio's config is refused
        Client(private_server.url, verbose=False)


def test_failed_logins_from_one_address_are_refused_for_a_while_and_never_logged(private_server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    attacker = http_client(private_server.url, source="127.0.0.31")
    statuses = [login(attacker, WRONG_USER, WRONG_PASSWORD).status_code for _ in range(auth.LOGIN_FAILURES_ALLOWED)]
    assert statuses == [400] * auth.LOGIN_FAILURES_ALLOWED
    throttled = login(attacker, ALICE, ALICE_PASSWORD)  # even the right password, until the window has passed
    assert throttled.status_code == 429 and "Too many failed logins" in throttled.text
    assert 0 < int(throttled.headers["retry-after"]) <= auth.LOGIN_WINDOW_S
    visitor = http_client(private_server.url, source="127.0.0.32")
    assert login(visitor, ALICE, ALICE_PASSWORD).status_code == 200  # another address logs in as usual

    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "login failed" in caplog.text and "login: alice" in caplog.text  # the attempts were logged...
    for secret in (WRONG_PASSWORD, WRONG_USER, ALICE_PASSWORD, BOB_PASSWORD, "$2y$"):
        assert secret not in logged  # ...without a password, a hash or a mistyped user name
