"""A real S3 protocol server on loopback (moto), for the quickstart and the tests.

moto is an optional dependency: the `demo` extra (`pip install 'rayfleet[demo]'`) brings it,
and without it starting the server fails with one line that names the extra.

Not a mock object: clients talk HTTP S3 to it through the same boto3 and pyarrow code they
use against AWS. It binds 127.0.0.1 only and lives as long as the process that started it.
moto keeps its buckets in process memory, so `restart()` on the same port brings the same
objects back: a faithful way to simulate a storage outage.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from rayfleet.errors import BadInputError

EXTRA = "demo"  # pip install 'rayfleet[demo]' brings moto's server


def _moto_server():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise BadInputError(
            "the loopback S3 server needs moto's server, which is not installed; "
            f"run: pip install 'rayfleet[{EXTRA}]'"
        ) from None
    return ThreadedMotoServer


class LoopbackS3:
    def __init__(self, port: int = 0):
        self._cls = _moto_server()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = self._cls(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point every client (and Ray worker) here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "rayfleet-local",
            "AWS_SECRET_ACCESS_KEY": "rayfleet-local",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="rayfleet-local",
            aws_secret_access_key="rayfleet-local",
        ).create_bucket(Bucket=name)

    def stop(self) -> None:
        self._server.stop()

    def restart(self) -> None:
        """Start again on the same port; buckets and objects are still there."""
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()


@contextmanager
def loopback_s3(bucket: str | None = None):
    """A LoopbackS3 with its AWS env variables exported for the duration."""
    server = LoopbackS3()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        if bucket:
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
