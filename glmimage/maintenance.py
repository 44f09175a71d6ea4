"""When the server takes no new work: a maintenance file the operator creates, or a shutdown under way.

**Maintenance file** (``--maintenance-file PATH``). While the file exists, its text is the page's banner and the
message new generations are refused with; jobs already accepted run to the end. Deleting it ends maintenance.
The file is looked at at most every :data:`CHECK_INTERVAL_S` seconds, so a change shows within seconds and a
flood of requests costs no more than one ``stat`` per interval. Its format::

    [en]
    Maintenance tonight from 22:00 to 22:30 (UTC+8). New images are paused.
    [zh]
    今晚 22:00–22:30（北京时间）维护，暂停生成新图片。

Each ``[en]``/``[zh]`` line starts that language's text (Markdown); a visitor gets their language, or English
when theirs is missing. A file without such lines is shown as written to everyone; an empty file shows the
page's own "under maintenance" text. At most :data:`MAX_BYTES` are read.

**Drain** (SIGTERM or Ctrl-C). First no new jobs are accepted (``draining``) while the running and queued ones
finish; once the drain time is spent, running jobs stop at their next step (``stopping``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CHECK_INTERVAL_S = 2.0
MAX_BYTES = 8192
_SECTION = re.compile(r"^\s*\[(en|zh)\]\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Notice:
    """The maintenance text, per language; ``""`` under a language means "say it with the page's own words"."""

    texts: dict[str, str]

    def text(self, lang: str) -> str:
        return self.texts.get(lang) or self.texts.get("en") or next(iter(self.texts.values()), "")


def parse_notice(text: str) -> Notice:
    """Split a maintenance file into its ``[en]``/``[zh]`` sections; without sections the text is for everyone."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    before: list[str] = []
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match:
            current = sections.setdefault(match.group(1).lower(), [])
        elif current is not None:
            current.append(line)
        else:
            before.append(line)
    if not sections:
        whole = text.strip()
        return Notice({"en": whole, "zh": whole})
    texts = {lang: "\n".join(lines).strip() for lang, lines in sections.items()}
    if "\n".join(before).strip() and "en" not in texts:  # text above the first header counts as English
        texts["en"] = "\n".join(before).strip()
    return Notice(texts)


class MaintenanceFile:
    """Whether the operator's maintenance file exists, and its text; re-read only when its mtime or size changes."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._notice: Notice | None = None

    def current(self) -> Notice | None:
        """The notice while the file exists, else None. Cheap: one ``stat`` every CHECK_INTERVAL_S at most."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at < CHECK_INTERVAL_S:
                return self._notice
            self._checked_at = now
            try:
                info = os.stat(self.path)
            except OSError:  # no file (or no access to it): no maintenance
                self._stamp, self._notice = None, None
                return None
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                try:
                    with open(self.path, "rb") as file:
                        raw = file.read(MAX_BYTES)
                except OSError:
                    raw = b""  # it exists but cannot be read: maintenance all the same, in the page's words
                self._notice = parse_notice(raw.decode("utf-8", "replace"))
                self._stamp = stamp
            return self._notice


class Drain:
    """A shutdown under way, shared by the server (which starts it) and the service (which obeys it)."""

    def __init__(self) -> None:
        self._draining = threading.Event()
        self._stopping = threading.Event()

    @property
    def draining(self) -> bool:
        """No new jobs: set from the first signal to the end."""
        return self._draining.is_set()

    @property
    def stopping(self) -> bool:
        """The drain time is spent: running jobs stop at their next step, queued ones are refused."""
        return self._stopping.is_set()

    def begin(self) -> None:
        self._draining.set()

    def stop_jobs(self) -> None:
        self._draining.set()
        self._stopping.set()
