"""Per-session data: history (capped, newest first), the session log, PNG files and their clean-up."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from glmimage.limits import MAX_HISTORY_ENTRIES, MAX_LOG_ENTRIES
from glmimage.requests import GenerationRequest
from glmimage.sessions import (
    FileSweeper,
    HistoryEntry,
    Session,
    SessionEnded,
    a1111_parameters,
    dispose_session,
    save_png,
)

REQUEST = GenerationRequest(
    prompt="a red apple",
    negative_prompt="blurry",
    style="none",
    width=512,
    height=512,
    num_images=1,
    seed=42,
    randomize_seed=False,
    num_inference_steps=2,
    guidance_scale=3.5,
)


def add_entry(session: Session, name: str, created: float | None = None) -> HistoryEntry:
    path = session.new_file()
    save_png(Image.new("RGB", (8, 8), "red"), path, None)
    entry = HistoryEntry(
        id=name,
        created=time.time() if created is None else created,
        files=[str(path)],
        request=REQUEST.to_dict(),
        seed=42,
        timings={"model_s": 0.1},
    )
    session.add_history(entry)
    return entry


@pytest.fixture
def session(tmp_path) -> Session:
    return Session(str(tmp_path))


def test_history_is_newest_first(session):
    for name in ("first", "second", "third"):
        add_entry(session, name)
    assert [e.id for e in session.history] == ["third", "second", "first"]


def test_history_keeps_at_most_the_cap_and_deletes_the_files_of_dropped_entries(session):
    entries = [add_entry(session, f"e{i}") for i in range(MAX_HISTORY_ENTRIES + 3)]
    assert len(session.history) == MAX_HISTORY_ENTRIES
    assert session.history[0].id == f"e{MAX_HISTORY_ENTRIES + 2}" and session.history[-1].id == "e3"
    assert all(not Path(e.files[0]).exists() for e in entries[:3])
    assert all(Path(e.files[0]).exists() for e in entries[3:])


def test_clear_history_deletes_every_entry_and_the_sessions_folder(session):
    files = [add_entry(session, f"e{i}").files[0] for i in range(3)]
    assert session.clear_history() == 3
    assert session.history == []
    assert not any(Path(f).exists() for f in files)
    assert not session.folder.exists()
    assert session.clear_history() == 0


def test_clearing_one_session_leaves_another_sessions_files(tmp_path):
    first, second = Session(str(tmp_path)), Session(str(tmp_path))
    add_entry(first, "a")
    kept = add_entry(second, "b").files[0]
    first.clear_history()
    assert Path(kept).exists() and len(second.history) == 1
    assert first.folder != second.folder


def test_expired_entries_are_dropped_with_their_files_and_fresh_ones_stay(session):
    old = add_entry(session, "old", created=1000.0)
    fresh = add_entry(session, "fresh", created=5000.0)
    session.drop_expired(max_age_s=3600, now=5000.0)
    assert [e.id for e in session.history] == ["fresh"]
    assert not Path(old.files[0]).exists() and Path(fresh.files[0]).exists()


def test_dispose_drops_history_log_and_files(session):
    add_entry(session, "a")
    session.record("generated")
    folder = session.folder
    dispose_session(session)
    assert session.history == [] and session.log == [] and not folder.exists()


def test_dispose_session_ignores_anything_that_is_not_a_session():
    not_a_session = {"history": ["kept"]}
    dispose_session(None)
    dispose_session(not_a_session)
    assert not_a_session == {"history": ["kept"]}


def test_each_copy_of_the_default_session_gets_its_own_id_and_folder(tmp_path):
    default = Session(str(tmp_path))
    one, two = copy.deepcopy(default), copy.deepcopy(default)
    assert one.folder != two.folder
    assert one.id and two.id and one.id != two.id
    assert default.id == ""


def test_the_log_records_events_in_order_and_keeps_only_the_newest(session):
    for i in range(MAX_LOG_ENTRIES + 5):
        session.record("generated", n=i)
    assert len(session.log) == MAX_LOG_ENTRIES
    assert session.log[0]["n"] == 5 and session.log[-1]["n"] == MAX_LOG_ENTRIES + 4
    assert set(session.log[-1]) == {"time", "event", "n"}


def test_log_json_keeps_chinese_readable(session):
    session.record("refused", prompt="一只猫")
    data = json.loads(session.log_json())
    assert data["events"][0]["prompt"] == "一只猫" and "session_started" in data
    assert "一只猫" in session.log_json()


def test_png_with_parameters_carries_them_in_an_a1111_text_chunk(tmp_path):
    text = a1111_parameters("a red apple", "blurry", REQUEST, 42, "tiny")
    path = save_png(Image.new("RGB", (16, 16)), tmp_path / "a.png", text)
    assert Image.open(path).text["parameters"] == text
    assert text.splitlines() == [
        "a red apple",
        "Negative prompt: blurry",
        "Steps: 2, Sampler: FlowMatchEuler, CFG scale: 3.5, Seed: 42, Size: 512x512, Model: tiny, Style: none",
    ]


def test_png_without_parameters_carries_no_metadata(tmp_path):
    path = save_png(Image.new("RGB", (16, 16)), tmp_path / "b.png", None)
    assert Image.open(path).text == {}


def test_a1111_parameters_without_negative_prompt_has_no_negative_line():
    assert "Negative prompt" not in a1111_parameters("一只猫", "", REQUEST, 7, "tiny")
    assert a1111_parameters("一只猫", "", REQUEST, 7, "tiny").startswith("一只猫\nSteps: 2")


def test_sweeper_deletes_old_files_and_empty_folders_and_keeps_new_ones(tmp_path):
    old_dir, new_dir = tmp_path / "session-old", tmp_path / "session-new"
    old_dir.mkdir()
    new_dir.mkdir()
    old_file, new_file = old_dir / "a.png", new_dir / "b.png"
    old_file.write_bytes(b"x")
    new_file.write_bytes(b"y")
    past = time.time() - 1000
    os.utime(old_file, (past, past))
    sweeper = FileSweeper(tmp_path, ttl_s=500)
    assert sweeper.sweep() == 1
    assert not old_file.exists() and new_file.exists()
    # An emptied folder goes once it has stayed empty for the TTL, not before; the one in use stays.
    assert old_dir.exists()
    os.utime(old_dir, (past, past))
    assert sweeper.sweep() == 0
    assert not old_dir.exists() and new_file.exists()


def test_a_sweep_finishes_its_pass_while_sessions_write_and_clear_their_folders(tmp_path):
    # Sessions create, write into and clear their folders on their own threads while the sweeper walks the tree. A
    # folder that vanishes under the walk is passed over, every expired file still goes, and no session ever finds
    # the folder it was just given removed under it.
    stop, failures = threading.Event(), []
    sessions = [Session(str(tmp_path)) for _ in range(4)]

    def busy_sessions() -> None:
        while not stop.is_set():
            for session in sessions:
                try:
                    session.new_file().write_bytes(b"x")
                except OSError as error:
                    failures.append(error)
                session.clear_history()

    sweeper = FileSweeper(tmp_path, ttl_s=500)
    worker = threading.Thread(target=busy_sessions)
    worker.start()
    try:
        for round_ in range(300):
            expired = tmp_path / f"session-old{round_}" / "a.png"
            expired.parent.mkdir()
            expired.write_bytes(b"x")
            os.utime(expired, (time.time() - 1000,) * 2)
            sweeper.sweep()
            assert not expired.exists()
            os.utime(expired.parent, (time.time() - 1000,) * 2)  # and the emptied folder stays quiet for the TTL
            sweeper.sweep()
    finally:
        stop.set()
        worker.join()
    assert failures == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("session-old")] == []


def test_sweeper_on_a_missing_folder_does_nothing(tmp_path):
    assert FileSweeper(tmp_path / "missing", ttl_s=10).sweep() == 0


def test_sweeper_deletes_expired_files_on_its_schedule_and_everything_at_close(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    doomed = root / "a.png"
    doomed.write_bytes(b"x")
    sweeper = FileSweeper(root, ttl_s=0.2, interval_s=0.05).start()
    deadline = time.monotonic() + 5
    while doomed.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not doomed.exists()
    (root / "b.png").write_bytes(b"y")
    sweeper.close()
    assert not root.exists()


def test_an_ended_session_takes_no_file_log_line_or_history_entry(tmp_path):
    session = Session(str(tmp_path))
    session.record("generated")
    session.new_file().write_bytes(b"png")
    session.dispose()
    assert session.disposed and session.log == [] and not session.folder.exists()
    session.record("generated")
    with pytest.raises(SessionEnded):
        session.new_file()
    assert session.log == [] and not session.folder.exists()


def test_every_visit_gets_its_own_copy_of_the_default_session_with_its_own_lock(tmp_path):
    default = Session(str(tmp_path))
    visit = copy.deepcopy(default)
    assert visit == default and visit.lock is not default.lock
    with visit.lock, visit.lock:  # re-entrant: a change may call another
        visit.clear_history()
