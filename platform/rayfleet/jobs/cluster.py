"""A Ray cluster's Jobs API, with failures turned into one line each.

Ray's `JobSubmissionClient` has no request timeout (an address that swallows packets hangs
the CLI) and reports a missing or wrong token as a multi-paragraph error. `connect` first
asks the dashboard for its version with a short timeout and the token rayfleet resolved, so
an unreachable address fails in seconds naming it, and a 401/403 says which token was sent
(or that none was) and how to fix it. Every later call goes through `call`, which maps the
same failures the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rayfleet.errors import ClusterError, ClusterUnreachableError, JobNotFoundError
from rayfleet.jobs.target import Target, check_transport
from rayfleet.lazy import lazy

httpx = lazy("httpx")

T = TypeVar("T")
PROBE_TIMEOUT_S = 5.0
RAYFLEET_RUN = "rayfleet.run"
"""Job metadata key naming the run: how `rayfleet jobs` finds a run's submissions."""


def auth_error(target: Target, status: int) -> ClusterError:
    if status == 401 or target.token is None:
        return ClusterError(
            f"{target.address}: the cluster requires a Ray auth token and none was sent; set "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or pass --token-file "
            "(`ray get-auth-token` prints it on the head node)"
        )
    return ClusterError(
        f"{target.address}: the cluster refused the Ray auth token from {target.token.source} "
        "(HTTP 403: wrong token); use the token of this cluster"
    )


def probe(target: Target) -> str:
    """The cluster's Ray version, or ClusterError within PROBE_TIMEOUT_S."""
    url = f"{target.address}/api/version"
    try:
        response = httpx.get(url, headers=target.headers(), timeout=PROBE_TIMEOUT_S)
    except httpx.TimeoutException:
        raise ClusterUnreachableError(
            f"{target.address}: no answer from the Ray dashboard within {PROBE_TIMEOUT_S:.0f} s; "
            "check the address (the dashboard port, 8265 by default) and the network"
        ) from None
    except httpx.HTTPError as exc:
        raise ClusterUnreachableError(
            f"{target.address}: cannot reach the Ray dashboard ({type(exc).__name__}: "
            f"{str(exc)[:120]}); check the address and that the cluster is up"
        ) from None
    if response.status_code in (401, 403):
        raise auth_error(target, response.status_code)
    try:
        response.raise_for_status()
        return str(response.json()["ray_version"])
    except (httpx.HTTPStatusError, ValueError, KeyError):
        raise ClusterError(
            f"{target.address}: not a Ray dashboard (GET /api/version answered "
            f"{response.status_code}); use the dashboard URL, e.g. http://HEAD:8265"
        ) from None


class Cluster:
    """The Jobs API of one cluster. Construct with `connect`."""

    def __init__(self, target: Target, client):
        self.target = target
        self.client = client

    @property
    def address(self) -> str:
        return self.target.address

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call a JobSubmissionClient method; auth, connection and unknown-job failures
        become ClusterError / JobNotFoundError (one line, exit 2)."""
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return fn(*args, **kwargs)
        except AuthenticationError as exc:
            raise auth_error(self.target, 401 if "required" in str(exc) else 403) from None
        except (ConnectionError, requests.ConnectionError) as exc:
            raise ClusterUnreachableError(
                f"{self.address}: lost the Ray dashboard ({str(exc).splitlines()[0][:120]})"
            ) from None
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "status code 404" in str(exc):
                raise JobNotFoundError(
                    f"{self.address}: {str(exc).splitlines()[0][:200]}; "
                    "list jobs with: rayfleet jobs list"
                ) from None
            if "status code" in str(exc):
                raise ClusterError(f"{self.address}: {str(exc).splitlines()[0][:300]}") from None
            raise

    def jobs(self):
        return self.call(self.client.list_jobs)

    def info(self, submission_id: str):
        return self.call(self.client.get_job_info, submission_id)

    def logs(self, submission_id: str) -> str:
        return self.call(self.client.get_job_logs, submission_id)

    def stop(self, submission_id: str) -> bool:
        return self.call(self.client.stop_job, submission_id)

    def run_jobs(self, name: str, jobs: list | None = None) -> list:
        """Every submission of run `name` (among `jobs`, else all on the cluster), oldest first."""
        jobs = self.jobs() if jobs is None else jobs
        found = [j for j in jobs if (j.metadata or {}).get(RAYFLEET_RUN) == name]
        return sorted(found, key=lambda j: (j.start_time or 0, j.submission_id or ""))

    def find(self, name_or_id: str):
        """The newest submission of a run name, or the job with that submission id."""
        jobs = self.jobs()
        if runs := self.run_jobs(name_or_id, jobs):
            return runs[-1]
        for job in jobs:
            if name_or_id in (job.submission_id, job.job_id):
                return job
        raise JobNotFoundError(
            f"{self.address}: no job for run or submission id {name_or_id!r}; "
            "list them with: rayfleet jobs list"
        )


def connect(target: Target) -> Cluster:
    """Probe the dashboard (fast, clear failures), then open Ray's JobSubmissionClient."""
    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs every upload and websocket close at INFO; rayfleet says what matters.
    for name in ("ray.dashboard", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)
    check_transport(target)  # resolve() refused it already; this is the one place that sends
    probe(target)
    cluster = Cluster(target, None)
    cluster.client = cluster.call(
        JobSubmissionClient, target.address, headers=target.headers() or None
    )
    return cluster
