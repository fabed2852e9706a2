"""The thin Kubernetes adapter against a recording HTTP server on 127.0.0.1: the paths and
verbs it sends, the merge-patch content type (the kubernetes client would otherwise pick
JSON Patch for some bodies), and API errors turned into one-line rayfleet errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayfleet.k8s.client import ConflictError, KubeAPI, KubeAPIError

pytestmark = pytest.mark.k8s


class Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str, dict]] = []
    replies: dict[tuple[str, str], tuple[int, dict]] = {}

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.requests.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
        status, reply = self.replies.get((self.command, self.path.split("?")[0]), (200, body))
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Recorder.requests, Recorder.replies = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cluster(server):
    from kubernetes import client

    config = client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    config.retries = 0
    return KubeAPI(api_client=client.ApiClient(config))


def status(code: int, message: str) -> tuple[int, dict]:
    return code, {"kind": "Status", "status": "Failure", "code": code, "message": message}


def test_custom_objects_paths_and_merge_patch(cluster):
    rs = "/apis/ray.io/v1/namespaces/ml/rayservices/digits"
    Recorder.replies[("GET", rs)] = (200, {"metadata": {"name": "digits"}, "spec": {}})
    got = cluster.get("RayService", "ml", "digits")
    assert got["kind"] == "RayService" and got["apiVersion"] == "ray.io/v1"
    patch = {"metadata": {"resourceVersion": "5"}, "spec": {"serveConfigV2": "applications: []"}}
    cluster.patch("RayService", "ml", "digits", patch)
    cluster.patch("ModelDeployment", "ml", "digits", {"status": {"replicas": 3}}, status=True)
    cluster.create("RayService", "ml", {"metadata": {"name": "new"}})
    cluster.list("ModelDeployment", None)
    sent = [(m, p.split("?")[0], t) for m, p, t, _ in Recorder.requests]
    assert sent == [
        ("GET", rs, ""),
        ("PATCH", rs, "application/merge-patch+json"),
        (
            "PATCH",
            "/apis/rayfleet.io/v1alpha1/namespaces/ml/modeldeployments/digits/status",
            "application/merge-patch+json",
        ),
        ("POST", "/apis/ray.io/v1/namespaces/ml/rayservices", "application/json"),
        ("GET", "/apis/rayfleet.io/v1alpha1/modeldeployments", ""),
    ]
    assert Recorder.requests[1][3] == patch


def test_built_in_kinds(cluster):
    cluster.patch("NetworkPolicy", "ml", "digits", {"metadata": {"labels": {"a": "b"}}})
    cluster.get("PodDisruptionBudget", "ml", "digits-head")
    cluster.create("PodDisruptionBudget", "ml", {"metadata": {"name": "x"}})
    sent = [(m, p.split("?")[0], t) for m, p, t, _ in Recorder.requests]
    assert sent == [
        (
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/digits",
            "application/merge-patch+json",
        ),
        ("GET", "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/digits-head", ""),
        ("POST", "/apis/policy/v1/namespaces/ml/poddisruptionbudgets", "application/json"),
    ]


def test_errors_are_one_line(cluster):
    rs = "/apis/ray.io/v1/namespaces/ml/rayservices/digits"
    Recorder.replies[("GET", rs)] = status(404, 'rayservices.ray.io "digits" not found')
    assert cluster.get("RayService", "ml", "digits") is None
    Recorder.replies[("PATCH", rs)] = status(409, "the object has been modified")
    with pytest.raises(ConflictError, match="changed while we edited it .*run the command again"):
        cluster.patch("RayService", "ml", "digits", {})
    Recorder.replies[("PATCH", rs)] = status(403, "forbidden: User cannot patch")
    with pytest.raises(KubeAPIError, match="not allowed \\(forbidden: User cannot patch\\); check"):
        cluster.patch("RayService", "ml", "digits", {})
