"""One exception tree for everything rayfleet tells a user.

Every error carries the exit code the CLI should use: 2 when the user's input is wrong (a
spec, a URI, a missing bucket: fixing the input fixes it), 1 when the work itself failed.
Messages are one line: what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class RayfleetError(Exception):
    """Root of every error rayfleet raises on purpose."""

    exit_code = 1


class BadInputError(RayfleetError):
    """The user's input is wrong; nothing was started or written."""

    exit_code = 2


class SpecError(BadInputError):
    """A job spec failed to load or validate."""


class StorageError(BadInputError):
    """A storage URI is malformed, or the store behind it can't be used (bucket, credentials)."""


class DatasetError(BadInputError):
    """A dataset is missing or does not have the layout training expects."""


class WorkFailedError(RayfleetError):
    """Validated work ran and failed (training crashed after its retries, for example)."""


class CheckpointError(WorkFailedError):
    """A checkpoint is missing, incomplete or corrupt."""


class ClusterError(BadInputError):
    """A Ray cluster can't be used as given: unreachable address, missing or wrong token."""


class JobNotFoundError(BadInputError):
    """No job on the cluster (or record in storage) answers to the given name or id."""


class ClusterUnreachableError(ClusterError):
    """The cluster's dashboard did not answer (may be transient: a follower retries it)."""
