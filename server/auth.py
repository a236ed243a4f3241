"""API keys and the request's project.

A key is `tw_<id>_<secret>`; the database keeps only a random salt and SHA-256(salt + secret) (the
secret has 256 random bits, so a slow password hash adds nothing), compared in constant time.
While no key is active a server on a loopback address is open and every request belongs to the
`default` project; once a key exists every request must carry one as `authorization: Bearer <key>`
metadata and sees only its key's project. A server on a public address never falls open: when its
last key is revoked it refuses every call until a key exists. One told to run open on a public
address is open only until its first key is created, and refuses calls like the others from then.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import TrainwireError
from .logs import Throttle

log = logging.getLogger("trainwire.server")

DEFAULT_PROJECT = "default"
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KEY_PREFIX = "tw_"  # every key starts so; a key id (16 hex digits) never does
KEY_ID = re.compile(r"[0-9a-f]{16}")
_KEY = re.compile("^" + re.escape(KEY_PREFIX) + r"([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
# Health and reflection answer everyone, so load balancers and stock tools work without a key.
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

CURRENT_PROJECT: ContextVar[str] = ContextVar("trainwire_project", default=DEFAULT_PROJECT)
CURRENT_CLIENT: ContextVar[str] = ContextVar("trainwire_client", default="")
# The key checker that admitted the current call with a key: a stream asks it again, between
# messages, whether that key is still active (`check_key_still_active`).
CURRENT_CHECKER: ContextVar[KeyChecker | None] = ContextVar("trainwire_checker", default=None)


def current_project() -> str:
    return CURRENT_PROJECT.get()


def current_client() -> str:
    return CURRENT_CLIENT.get()


class Unauthenticated(TrainwireError):
    code = grpc.StatusCode.UNAUTHENTICATED


@dataclass(frozen=True)
class NewKey:
    id: str
    project: str
    key: str


def new_secret() -> tuple[str, str]:
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(key: str) -> tuple[str, str] | None:
    match = _KEY.match(key)
    return None if match is None else (match.group(1), match.group(2))


def masked_key(key: str) -> str:
    """A key, or what looks like one, fit to show: `tw_<id>_…` (the id is no secret), or `tw_…`
    when no id can be read from it."""
    parsed = parse_key(key)
    return f"{KEY_PREFIX}{parsed[0]}_…" if parsed else f"{KEY_PREFIX}…"


def check_project_name(project: str) -> str:
    if not PROJECT_NAME.match(project):
        raise ValueError(
            "a project name is 1-64 lowercase letters, digits, '_' or '-', starting with a letter "
            f"or digit. Received: {project!r}"
        )
    return project


@dataclass(frozen=True)
class KeyRecord:
    id: str
    project: str
    salt: bytes
    secret_hash: bytes


class KeyChecker:
    """Answers "which project does this bearer key belong to?", caching the key table briefly
    (a revoked key stops working within `ttl_s`). Without an active key, calls are answered in
    the default project if `open_without_keys`, else refused. Given `any_key_created` (a public
    server allowed to run open), it is open only until that answers True: once a key was ever
    created, calls are refused while none is active."""

    def __init__(
        self,
        load_keys: Callable[[], list[KeyRecord]],
        ttl_s: float = 2.0,
        open_without_keys: bool = True,
        any_key_created: Callable[[], bool] | None = None,
    ) -> None:
        self.load_keys = load_keys
        self.ttl_s = ttl_s
        self.open_without_keys = open_without_keys
        self.any_key_created = any_key_created
        self._keys: dict[str, KeyRecord] = {}
        # Only ever goes from False to True: a key's row is never deleted, so once one was seen
        # the database need not be asked again.
        self._closed_for_good = False
        self._loaded = float("-inf")
        self._lock = threading.Lock()
        self._background = False
        self._warnings = Throttle()

    def _load(self) -> dict[str, KeyRecord]:
        """The active keys, read now; closes for good a server open until its first key once a
        key exists, active or revoked."""
        keys = {key.id: key for key in self.load_keys()}
        if self.any_key_created is not None and not self._closed_for_good:
            self._closed_for_good = bool(keys) or self.any_key_created()
        return keys

    def refresh(self) -> None:
        """Reads the key table now."""
        keys = self._load()
        with self._lock:
            self._keys = keys
            self._loaded = time.monotonic()

    def refresh_in_background(self, stopped: threading.Event) -> None:
        """Re-reads the keys every ttl_s / 2 in a thread of its own until `stopped`; callers
        then never wait on the database (a server's event loop must not)."""

        def run() -> None:
            while not stopped.wait(self.ttl_s / 2):
                try:
                    self.refresh()
                except Exception as error:  # the database is away: keep the keys we have
                    # Twice a second while it lasts: a warning once a minute is enough.
                    log.log(self._warnings.level(), "cannot refresh API keys: %s", error)

        self._background = True
        threading.Thread(target=run, name="api-keys", daemon=True).start()

    def _active_keys(self) -> dict[str, KeyRecord]:
        if self._background or time.monotonic() - self._loaded <= self.ttl_s:
            return self._keys
        with self._lock:
            if time.monotonic() - self._loaded > self.ttl_s:
                self._keys = self._load()
                self._loaded = time.monotonic()
            return self._keys

    @property
    def required(self) -> bool:
        """Some key is active (and calls must carry one)."""
        return bool(self._active_keys())

    @property
    def is_open(self) -> bool:
        """Calls need no key now: none is active and the server may run open without one."""
        return not self._active_keys() and self.open_without_keys and not self._closed_for_good

    def is_active(self, key_id: str) -> bool:
        """Whether the key of this id is active (not revoked), as of the last read."""
        return key_id in self._active_keys()

    def project_of(self, metadata: tuple[tuple[str, Any], ...] | None) -> tuple[str, str]:
        """(project, client id) of a request; Unauthenticated if a key is needed and bad."""
        keys = self._active_keys()
        if not keys:
            if self.open_without_keys and not self._closed_for_good:
                return DEFAULT_PROJECT, ""
            raise Unauthenticated(
                "this server requires an API key and none is active (the last one was revoked): "
                "an operator must create one with `trainwire keys create --project NAME`"
            )
        # Spaces around the value are no part of it (RFC 9110's optional whitespace), and a
        # client building the header by hand may leave some.
        header = str(next((v for k, v in metadata or () if k == "authorization"), "")).strip()
        # The scheme is case-insensitive (RFC 7235): `bearer tw_…` too. Its 7 characters alone
        # are lowered, not the header: a slice and a short lower() on every call.
        if header[:7].lower() != "bearer ":
            raise Unauthenticated(
                "this server requires an API key: send it as `authorization: Bearer <key>` "
                f"metadata (the SDK's api_key= or TRAINWIRE_API_KEY){_misread(header)}"
            )
        parsed = parse_key(header[7:].strip())
        record = keys.get(parsed[0]) if parsed else None
        if parsed is None or record is None:
            raise Unauthenticated("the API key is not valid: it is unknown or was revoked")
        if not hmac.compare_digest(hash_secret(record.salt, parsed[1]), record.secret_hash):
            raise Unauthenticated("the API key is not valid: it is unknown or was revoked")
        return record.project, record.id


def _misread(header: str) -> str:
    """Why an `authorization` value without the Bearer scheme was not read, when one was sent;
    never the value, which may be a secret. A client written by hand most often sends the key
    alone."""
    if not header:
        return ""
    if header.lower() == "bearer":
        return "; the authorization metadata held the `Bearer` scheme but no key after it"
    if parse_key(header):
        return "; the authorization metadata held a key without the `Bearer ` before it"
    return "; the authorization metadata held no `Bearer ` scheme"


def check_key_still_active() -> None:
    """Unauthenticated if the key the current call was admitted with has been revoked since.

    A call's key is checked when it starts; a stream (a watch, a prediction stream) may stay
    open for hours, so it checks again between messages: a watch polls, so a revoked key ends it
    within the key table's refresh (about a second), as it refuses new calls; a prediction
    stream is refused at its next message. Cheap: a dictionary lookup.
    """
    checker = CURRENT_CHECKER.get()
    # Cut on a server that fell open too: the stream would go on serving its key's project,
    # which no new call reaches once the key is gone.
    if checker is not None and not checker.is_active(CURRENT_CLIENT.get()):
        raise Unauthenticated(
            "the API key this stream was opened with has been revoked; open it again (with an "
            "active key, where the server requires one)"
        )
