"""Private deployments: who may log in (``--auth-file``), and how often one address may get it wrong.

The file is the one Apache's ``htpasswd -B`` writes: ``user:hash`` lines with bcrypt hashes (``$2y$``, ``$2b$``
or ``$2a$``), ``#`` comments and blank lines allowed. It is read again when it changes, so adding a user needs no
restart. ``python -m glmimage.auth add USER --file PATH`` adds a user or changes their password (asked twice,
never echoed); ``remove USER`` takes one out.

No password, hash or failed user name is ever logged: a user name typed wrong is often the password.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path

import bcrypt

log = logging.getLogger("glmimage.auth")

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
# bcrypt reads at most 72 bytes of a password; htpasswd and crypt() ignore the rest, and so does this module.
BCRYPT_MAX_BYTES = 72
# Cost of new hashes: ~0.2 s per check on one core (htpasswd -B defaults to 5, which is cheap to guess against).
BCRYPT_ROUNDS = 12
# Failed logins one client address may make in LOGIN_WINDOW_S before it must wait.
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_S = 300.0


@functools.cache
def _dummy_hash() -> bytes:
    """Checked for unknown users too, so an answer takes as long whether or not the user exists."""
    return bcrypt.hashpw(b"glmimage-no-such-user", bcrypt.gensalt(rounds=BCRYPT_ROUNDS))


def _password_bytes(password: str) -> bytes:
    return password.encode("utf-8")[:BCRYPT_MAX_BYTES]


def check_user_name(name: str) -> str:
    """A user name the file can hold: no colon, no spaces or control characters, at most 255 characters."""
    if not name or len(name) > 255 or ":" in name or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"not a usable user name: {name!r} (no colon, spaces or control characters)")
    return name


def parse_htpasswd(text: str, source: str = "auth file") -> dict[str, bytes]:
    """``{user: bcrypt hash}`` from the file's text; refuses anything but bcrypt hashes, naming the line only."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        if not colon or not name:
            raise ValueError(f"{source}, line {number}: not a user:hash line")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ValueError(
                f"{source}, line {number}: user {name!r} has no bcrypt hash (write it with htpasswd -B, or "
                "python -m glmimage.auth add USER)"
            )
        users[name] = hashed.encode("ascii")
    return users


class PasswordFile:
    """The users of ``--auth-file``, read again whenever the file's modification time or size changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}

    def check_at_start(self) -> None:
        """Refuse a missing, unreadable, malformed or empty file at start-up, with a message for the operator."""
        try:
            users = self.users()
        except OSError as exc:
            raise ValueError(f"--auth-file {self.path}: cannot be read ({exc.strerror})") from None
        if not users:
            raise ValueError(
                f"--auth-file {self.path}: has no users, so nobody could log in; add one with "
                f"python -m glmimage.auth add USER --file {self.path}"
            )

    def users(self) -> dict[str, bytes]:
        with self._lock:
            info = self.path.stat()
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                self._users = parse_htpasswd(self.path.read_text(encoding="utf-8"), f"--auth-file {self.path}")
                self._stamp = stamp
            return self._users

    def verify(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s. Slow on purpose (bcrypt); call it off the event loop.

        A file that became unreadable or malformed while running lets nobody in (and says so in the log) rather
        than failing open."""
        try:
            hashed = self.users().get(user)
        except (OSError, ValueError) as exc:
            log.error("the auth file cannot be used, so every login is refused: %s", exc)
            hashed = None
        ok = bcrypt.checkpw(_password_bytes(password), hashed or _dummy_hash())
        return ok and hashed is not None


class LoginThrottle:
    """Counts failed logins per client address; after ``allowed`` failures within ``window_s`` that address must
    wait until the oldest one is older than the window. Thread-safe; at most ``max_keys`` addresses are kept."""

    def __init__(
        self,
        allowed: int = LOGIN_FAILURES_ALLOWED,
        window_s: float = LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """0 when ``address`` may try to log in now, else the seconds until it may."""
        with self._lock:
            failures = self._recent(address)
            if len(failures) < self.allowed:
                return 0.0
            return failures[len(failures) - self.allowed] + self.window_s - self._clock()

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._recent(address)
            failures.append(self._clock())
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float]:
        """The address's failures within the window; an address with none is not kept."""
        failures = self._failures.get(address, deque())
        now = self._clock()
        while failures and failures[0] + self.window_s <= now:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures


def hash_password(password: str) -> str:
    """A bcrypt hash in the ``$2y$`` form htpasswd -B writes (the same algorithm as bcrypt's ``$2b$``)."""
    hashed = bcrypt.hashpw(_password_bytes(password), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode("ascii")
    return "$2y$" + hashed[4:]


def set_user(path: Path, user: str, hashed: str | None) -> bool:
    """Write ``user``'s hash into the file (None removes the user); returns whether the user was there before.

    Other lines, comments included, stay as they were. Written to a temporary file and renamed, so a server
    reading the file never sees half of it; the file is readable by its owner only."""
    check_user_name(user)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    parse_htpasswd("\n".join(lines), str(path))  # refuse to touch a file that is not one of ours
    kept = [line for line in lines if line.strip().partition(":")[0] != user or line.strip().startswith("#")]
    existed = len(kept) != len(lines)
    if hashed is not None:
        kept.append(f"{user}:{hashed}")
    folder = path.resolve().parent
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in kept))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return existed


def _ask_password(user: str) -> str:
    first = getpass.getpass(f"New password for {user}: ")
    if not first:
        raise ValueError("the password is empty")
    if len(first.encode("utf-8")) > BCRYPT_MAX_BYTES:
        raise ValueError(f"the password is longer than bcrypt reads ({BCRYPT_MAX_BYTES} bytes in UTF-8)")
    if getpass.getpass("Repeat the password: ") != first:
        raise ValueError("the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glmimage.auth",
        description="Manage the users of --auth-file (htpasswd format, bcrypt hashes). The server reads changes "
        "within seconds; a removed user's open browser sessions last until the server restarts.",
    )
    parser.add_argument("command", choices=("add", "remove"), help="add: add a user or change their password")
    parser.add_argument("user")
    parser.add_argument("--file", default=os.environ.get("GLMIMAGE_AUTH_FILE"), help="default GLMIMAGE_AUTH_FILE")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("name the file with --file PATH (or GLMIMAGE_AUTH_FILE)")
    path = Path(args.file)
    try:
        check_user_name(args.user)
        if args.command == "add":
            existed = set_user(path, args.user, hash_password(_ask_password(args.user)))
            print(f"{'changed the password of' if existed else 'added'} {args.user} in {path}")
        elif set_user(path, args.user, None):
            print(f"removed {args.user} from {path}")
        else:
            print(f"{args.user} is not in {path}", file=sys.stderr)
            return 1
    except (ValueError, OSError) as exc:
        print(f"glmimage.auth: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("\nglmimage.auth: nothing changed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
