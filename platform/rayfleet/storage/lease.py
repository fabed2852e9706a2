"""One driver per run name: an expiring lease in storage, taken by a conditional create.

Two drivers of the same run name would write checkpoints into one folder, resume from each
other's epochs and prune each other's checkpoints. Before a driver touches a run it takes
`<run>/lease.json` (create-only write: exactly one of two racing drivers wins), renews it
every third of its time-to-live while it works, and deletes it when it ends. A driver that
dies without releasing (SIGKILL, a lost node) stops renewing, so its lease expires after
`ttl_s` and the next driver (a `submit --retries` resubmission, say) waits that long at most
and takes it over, again by compare-and-swap.

Expiry uses wall-clock time from different machines; the TTL is tens of seconds, far above
the clock skew NTP leaves, and a holder that finds its lease taken stops renewing and warns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from rayfleet.errors import BadInputError
from rayfleet.retry import poll
from rayfleet.storage import documents
from rayfleet.storage.uri import StorageURI

LEASE = "lease.json"
TTL_ENV = "RAYFLEET_LEASE_TTL_S"
DEFAULT_TTL_S = 30.0
log = logging.getLogger(__name__)


class RunLockedError(BadInputError):
    """Another live driver holds this run's lease."""


def default_ttl() -> float:
    try:
        return max(3.0, float(os.environ.get(TTL_ENV, DEFAULT_TTL_S)))
    except ValueError:
        return DEFAULT_TTL_S


class Lease:
    """The lease on one run folder; use as a context manager around the driver's work."""

    def __init__(self, run_uri: StorageURI, *, what: str, ttl_s: float | None = None):
        self.uri = run_uri.join(LEASE)
        self.what = what  # "run digits", "sweep digits-sweep": for messages
        self.ttl_s = ttl_s or default_ttl()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _doc(self) -> bytes:
        now = time.time()
        return json.dumps(
            {"holder": self.holder, "renewed": now, "expires": now + self.ttl_s}
        ).encode()

    def acquire(self, *, wait_s: float | None = None) -> None:
        """Take the lease, waiting up to `wait_s` (default: one TTL and a bit) for a holder
        that stopped renewing; a holder that keeps renewing means another live driver."""
        held: dict | None = None

        def take() -> bool | None:
            nonlocal held
            current = documents.read(self.uri)
            held = current.json()
            expired = held is None or float(held.get("expires", 0)) < time.time()
            if current.data is None or expired:
                try:
                    self._version = documents.write(self.uri, self._doc(), expect=current.version)
                    return True
                except documents.Conflict:
                    return take()  # someone else moved first: look again at once
            return None

        def locked() -> RunLockedError:
            holder = (held or {}).get("holder", "another driver")
            return RunLockedError(
                f"{self.what} is being run by {holder} (lease {self.uri} renewed "
                f"{time.time() - float((held or {}).get('renewed', 0)):.0f}s ago); wait for "
                "it to finish, stop it (rayfleet jobs stop NAME), or use another "
                "metadata.name"
            )

        poll(
            take,
            timeout=self.ttl_s + 5 if wait_s is None else wait_s,
            interval=1.0,
            what=f"the lease {self.uri}",
            on_timeout=locked,
        )
        self._thread = threading.Thread(target=self._renew, daemon=True, name="rayfleet-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._version = documents.write(self.uri, self._doc(), expect=self._version)
            except documents.Conflict:
                self.lost = True
                log.warning("%s: lease %s was taken by another driver", self.what, self.uri)
                return
            except Exception as exc:  # noqa: BLE001 - a storage blip: try again next period
                log.warning("%s: could not renew lease %s: %s", self.what, self.uri, exc)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost or self._version is None:
            return
        current = documents.read(self.uri)
        if current.version == self._version:
            documents.delete(self.uri)
        self._version = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
