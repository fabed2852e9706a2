"""The predict client's retry policy against a real HTTP server on 127.0.0.1 (scripted answers),
and the `rayfleet predict` input handling."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rayfleet.errors import WorkFailedError
from rayfleet.serve.client import InferenceError, PredictClient, UnavailableError

pytestmark = pytest.mark.unit
PROBS = [0.0] * 7 + [0.9, 0.1, 0.0]
OK = {"model_name": "m", "model_version": "1", "outputs": [
    {"name": "predicted_class", "datatype": "INT64", "shape": [1], "data": [7]},
    {"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": PROBS},
]}  # fmt: skip
META = {"name": "m", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]}


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next scripted (status, body, content type)."""

    def __init__(self, script):
        self.script = list(script)
        self.seen: list[tuple[str, str, bytes]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, body))
        if self.path.endswith("/v2/models/m"):
            status, doc, ctype, headers = 200, META, "application/json", {}
        else:
            status, doc, ctype, headers = (*self.server.script.pop(0), {})[:4]
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server(request):
    srv = Scripted(request.param)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


JSON = "application/json"
BODY = {"inputs": []}


@pytest.mark.parametrize(
    "server",
    [[(503, {"error": "busy"}, JSON), (502, b"bad gateway", "text/plain"), (200, OK, JSON)]],
    indirect=True,
)
def test_retries_503_and_502_then_succeeds(server):
    client = PredictClient(server.url, retries=3, backoff_s=0.01)
    assert client.infer("m", BODY) == OK
    assert (client.stats.attempts, client.stats.retried) == (3, 1)


@pytest.mark.parametrize(
    "server", [[(500, b"Internal Server Error", "text/plain"), (200, OK, JSON)]], indirect=True
)
def test_retries_a_proxy_500_from_a_dead_replica(server):
    client = PredictClient(server.url, retries=2, backoff_s=0.01)
    assert client.infer("m", BODY) == OK and client.stats.attempts == 2


@pytest.mark.parametrize(
    "server", [[(500, {"error": "internal error: KeyError"}, JSON)]], indirect=True
)
def test_does_not_retry_the_apps_own_500(server):
    client = PredictClient(server.url, retries=3, backoff_s=0.01)
    with pytest.raises(WorkFailedError, match="HTTP 500: internal error: KeyError"):
        client.infer("m", BODY)
    assert client.stats.attempts == 1


@pytest.mark.parametrize("server", [[(400, {"error": "shape is wrong"}, JSON)]], indirect=True)
def test_bad_input_is_not_retried(server):
    client = PredictClient(server.url, retries=3, backoff_s=0.01)
    with pytest.raises(InferenceError, match="HTTP 400: shape is wrong") as err:
        client.infer("m", BODY)
    assert err.value.exit_code == 2 and client.stats.attempts == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried_with_bounded_backoff():
    url = f"http://127.0.0.1:{_closed_port()}"
    client = PredictClient(url, retries=3, backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="no answer after 4 attempt"):
        client.infer("m", BODY)
    assert client.stats.attempts == 4 and time.monotonic() - started < 5


# ----------------------------------------------------------------------- rayfleet predict


def _cli() -> typer.Typer:
    from rayfleet.cli.serve_commands import predict

    app = typer.Typer()
    app.command()(predict)
    app.command("noop")(lambda: None)  # keeps `predict` a named subcommand
    return app


@pytest.mark.parametrize("server", [[(200, OK, JSON)]], indirect=True)
def test_predict_builds_the_request_from_model_metadata(server, tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(np.zeros((1, 8, 8)).tolist()))
    result = CliRunner().invoke(_cli(), ["predict", "m", "--input", str(path), "--url", server.url])
    assert result.exit_code == 0, result.output
    assert "0  class 7  p=0.900" in result.output
    method, url_path, body = server.seen[-1]
    assert (method, url_path) == ("POST", "/v2/models/m/infer")
    assert json.loads(body)["inputs"][0]["shape"] == [1, 1, 8, 8]


@pytest.mark.parametrize("server", [[(200, OK, JSON)]], indirect=True)
def test_predict_reads_stdin_and_npy(server, tmp_path):
    tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0] * 64}
    request = {"inputs": [tensor]}
    args = ["predict", "m", "--input", "-", "--url", server.url, "-o", "json"]
    result = CliRunner().invoke(_cli(), args, input=json.dumps(request))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == OK
    server.script.append((200, OK, JSON))
    deprecated = [*args[:-2], "--json"]  # the old flag, kept as a hidden alias of -o json
    result = CliRunner().invoke(_cli(), deprecated, input=json.dumps(request))
    assert result.exit_code == 0 and json.loads(result.output) == OK, result.output
    assert json.loads(server.seen[-1][2]) == request  # an OIP request is sent as it is
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    server.script.append((200, OK, JSON))
    args = ["predict", "m", "-i", str(tmp_path / "x.npy"), "--url", server.url]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(server.seen[-1][2])["inputs"][0]["shape"] == [2, 1, 8, 8]


@pytest.mark.parametrize("server", [[]], indirect=True)
@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{oops", "not valid JSON"),
        ('{"x": 1}', 'OIP request with "inputs"'),
        ('["a"]', "array of numbers"),
        ("[[1, 2]]", "input has shape [1, 2]"),
    ],
)
def test_predict_bad_input_files_exit_2(server, tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    result = CliRunner().invoke(_cli(), ["predict", "m", "--input", str(path), "--url", server.url])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
