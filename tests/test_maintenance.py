"""Maintenance (--maintenance-file): while the file exists, new generations are refused with its text in the
visitor's language and /readyz answers 503; a job accepted before it appeared finishes; deleting it reopens."""

from __future__ import annotations

import os
import time

from conftest import request_kwargs
from rawhttp import call, http_client, read_events, submit

from glmimage.maintenance import CHECK_INTERVAL_S, MaintenanceFile, parse_notice

ZH = {"accept-language": "zh-CN,zh;q=0.9"}


def test_a_file_with_en_and_zh_sections_speaks_each_visitors_language():
    notice = parse_notice("[en]\nBack at **22:00**.\n\n[zh]\n22:00 恢复。\n")
    assert notice.text("en") == "Back at **22:00**."
    assert notice.text("zh") == "22:00 恢复。"


def test_a_file_without_sections_is_shown_as_written_to_everyone():
    notice = parse_notice("  Upgrading the GPU driver, back soon.\n")
    assert notice.text("en") == notice.text("zh") == "Upgrading the GPU driver, back soon."


def test_a_language_missing_from_the_file_falls_back_to_english():
    assert parse_notice("[en]\nBack soon.").text("zh") == "Back soon."
    assert parse_notice("Back soon.\n[zh]\n马上回来").text("en") == "Back soon."  # text above the first header


def test_an_empty_file_still_means_maintenance_with_no_text_of_its_own(tmp_path):
    path = tmp_path / "maintenance"
    path.write_text("")
    notice = MaintenanceFile(path).current()
    assert notice is not None and notice.text("en") == ""


def test_the_file_is_looked_at_only_every_few_seconds_and_changes_show_after_that(tmp_path):
    now = [100.0]
    path = tmp_path / "maintenance"
    watcher = MaintenanceFile(path, clock=lambda: now[0])
    assert watcher.current() is None
    path.write_text("Back at ten.")
    assert watcher.current() is None  # within the interval: the answer it had
    now[0] += CHECK_INTERVAL_S
    assert watcher.current().text("en") == "Back at ten."
    path.write_text("Back at eleven.")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    now[0] += CHECK_INTERVAL_S
    assert watcher.current().text("en") == "Back at eleven."
    path.unlink()
    now[0] += CHECK_INTERVAL_S
    assert watcher.current() is None


def test_the_settings_refuse_a_maintenance_file_in_a_folder_that_does_not_exist(tmp_path):
    import pytest

    from glmimage.config import load_settings

    with pytest.raises(ValueError, match="its folder does not exist"):
        load_settings(["--maintenance-file", str(tmp_path / "no-such-folder" / "maintenance")], environ={})
    assert load_settings([], environ={"GLMIMAGE_MAINTENANCE_FILE": str(tmp_path / "m")}).maintenance_file


def _wait_for(condition, timeout: float = 3 * CHECK_INTERVAL_S + 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not notice the maintenance file in time"
        time.sleep(0.1)


def test_maintenance_refuses_new_generations_with_its_text_lets_accepted_jobs_finish_and_ends_when_deleted(
    start_server, tmp_path
):
    path = tmp_path / "maintenance"
    server = start_server(maintenance_file=str(path))
    client = http_client(server.url)
    assert client.get("/readyz").status_code == 200

    # A job accepted before the file appears, still running while it does.
    accepted = submit(client, request_kwargs(num_inference_steps=12, prompt="accepted before maintenance"))
    assert accepted.status_code == 200
    path.write_text("[en]\nUpgrading the GPU, back at 22:00.\n[zh]\n正在升级 GPU，22:00 恢复。\n", encoding="utf-8")
    _wait_for(lambda: client.get("/readyz").status_code == 503)
    assert client.get("/readyz").json() == {"ready": False, "model_state": "ready", "reasons": ["maintenance"]}

    english = call(client, request_kwargs())
    assert english.kind == "refused"
    assert english.messages["prompt"] == "Paused for maintenance: Upgrading the GPU, back at 22:00."
    chinese = call(client, request_kwargs(), headers=ZH)
    assert chinese.kind == "refused" and chinese.messages["prompt"] == "维护暂停：正在升级 GPU，22:00 恢复。"

    events = read_events(client, accepted.json()["event_id"])
    assert events[-1][0] == "complete"  # the accepted job ran to the end during maintenance

    path.write_text("")  # no text of its own: the page's words
    _wait_for(lambda: call(client, request_kwargs()).messages.get("prompt", "").startswith("Maintenance: new"))
    assert call(client, request_kwargs(), headers=ZH).messages["prompt"].startswith("维护中")

    path.unlink()
    _wait_for(lambda: client.get("/readyz").status_code == 200)
    assert call(client, request_kwargs()).kind == "image"
