"""The one adapter between rayfleet and a Kubernetes API server (the `kubernetes` client).

Kept thin on purpose: get, list, create, merge-patch and status-patch of the few kinds the
operator and the kubectl plugin touch, every object as a plain dict, every API error turned
into a one-line RayfleetError that names the object and the remedy. The logic that decides
what to send lives in `reconcile` and `serveconfig`, pure and tested without a cluster.

Configuration: in-cluster (the operator's ServiceAccount) first, then the kubeconfig
(`$KUBECONFIG` or ~/.kube/config, optionally a `--context`), like kubectl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rayfleet.errors import BadInputError, RayfleetError, WorkFailedError
from rayfleet.k8s import crd, kueue
from rayfleet.lazy import lazy

# The generated client takes ~0.5 s to import: only when a command talks to a cluster.
kubernetes = lazy("kubernetes", purpose="talking to a Kubernetes API server")
urllib3_exceptions = lazy("urllib3.exceptions", purpose="talking to a Kubernetes API server")

MERGE_PATCH = "application/merge-patch+json"
# The generated client sends no Content-Type on creates (and ignores _content_type there).
JSON_HEADERS = {"Content-Type": "application/json"}


class KubeAPIError(WorkFailedError):
    """The API server refused or failed a request."""


class NotFoundError(BadInputError):
    """The object asked for does not exist."""


class ConflictError(KubeAPIError):
    """The object changed between read and write (resourceVersion precondition)."""


class NoClusterError(BadInputError):
    """No kubeconfig or in-cluster credentials."""


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


API_RESOURCES = {
    "RayService": Kind("ray.io", "v1", "rayservices"),
    "RayJob": Kind("ray.io", "v1", "rayjobs"),
    "Workload": Kind(kueue.WORKLOAD_GROUP, kueue.WORKLOAD_VERSION, kueue.WORKLOAD_PLURAL),
    crd.KIND: Kind(crd.GROUP, crd.VERSION, crd.PLURAL),
    "NetworkPolicy": Kind("networking.k8s.io", "v1", "networkpolicies"),
    "PodDisruptionBudget": Kind("policy", "v1", "poddisruptionbudgets"),
}
_CUSTOM = {"RayService", "RayJob", "Workload", crd.KIND}


def _message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))


class KubeAPI:
    """Namespaced reads and writes against the configured API server."""

    def __init__(self, context: str | None = None, api_client: Any = None):
        self._context = context
        self._api = api_client

    # ------------------------------------------------------------------ plumbing

    @property
    def api(self):
        if self._api is None:
            config = kubernetes.config
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config(context=self._context)
                except (config.ConfigException, OSError) as exc:
                    raise NoClusterError(
                        f"no Kubernetes credentials ({str(exc).splitlines()[0][:160]}); set "
                        "KUBECONFIG or run inside a cluster"
                    ) from None
            self._api = kubernetes.client.ApiClient()
        return self._api

    def default_namespace(self) -> str:
        """The kubeconfig context's namespace (or the pod's), else `default`, as kubectl."""
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                return f.read().strip()
        except OSError:
            pass
        config = kubernetes.config
        try:
            _, active = config.list_kube_config_contexts()
        except (config.ConfigException, OSError):
            return "default"
        if self._context:
            contexts, _ = config.list_kube_config_contexts()
            active = next((c for c in contexts if c["name"] == self._context), active)
        return (active or {}).get("context", {}).get("namespace") or "default"

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            out = fn(*args, **kwargs)
        except kubernetes.client.exceptions.ApiException as exc:
            message = _message(exc)
            if exc.status == 404:
                raise NotFoundError(f"{what}: not found ({message})") from None
            if exc.status == 409:
                raise ConflictError(
                    f"{what}: changed while we edited it ({message}); run the command again"
                ) from None
            if exc.status in (401, 403):
                raise KubeAPIError(
                    f"{what}: not allowed ({message}); check your RBAC permissions"
                ) from None
            raise KubeAPIError(f"{what}: HTTP {exc.status} ({message})") from None
        except (urllib3_exceptions.HTTPError, OSError) as exc:
            raise KubeAPIError(
                f"{what}: cannot reach the API server ({str(exc)[:160]}); check your kubeconfig"
            ) from None
        return self.api.sanitize_for_serialization(out) if out is not None else None

    def _custom(self):
        return kubernetes.client.CustomObjectsApi(self.api)

    def _typed(self, kind: str):
        if kind == "NetworkPolicy":
            return kubernetes.client.NetworkingV1Api(self.api), "network_policy"
        if kind == "PodDisruptionBudget":
            return kubernetes.client.PolicyV1Api(self.api), "pod_disruption_budget"
        raise RayfleetError(f"kind {kind} is not handled here")

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"{kind} {namespace}/{name}"
        try:
            if kind in _CUSTOM:
                k = API_RESOURCES[kind]
                obj = self._call(
                    what,
                    self._custom().get_namespaced_custom_object,
                    k.group, k.version, namespace, k.plural, name,
                )  # fmt: skip
            else:
                api, suffix = self._typed(kind)
                obj = self._call(what, getattr(api, f"read_namespaced_{suffix}"), name, namespace)
        except NotFoundError:
            return None
        obj.setdefault("apiVersion", API_RESOURCES[kind].api_version)
        obj.setdefault("kind", kind)
        return obj

    def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a custom kind in `namespace` (None: every namespace)."""
        k = API_RESOURCES[kind]
        api = self._custom()
        kwargs = {"label_selector": label_selector} if label_selector else {}
        where = f"{kind} in {namespace or 'all namespaces'}"
        if namespace is None:
            out = self._call(
                where, api.list_cluster_custom_object, k.group, k.version, k.plural, **kwargs
            )
        else:
            out = self._call(
                where, api.list_namespaced_custom_object, k.group, k.version, namespace, k.plural,
                **kwargs,
            )  # fmt: skip
        return list(out.get("items") or [])

    # ------------------------------------------------------------------ writes

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        what = f"creating {kind} {namespace}/{body['metadata']['name']}"
        if kind in _CUSTOM:
            k = API_RESOURCES[kind]
            return self._call(
                what,
                self._custom().create_namespaced_custom_object,
                k.group, k.version, namespace, k.plural, body, _headers=JSON_HEADERS,
            )  # fmt: skip
        api, suffix = self._typed(kind)
        return self._call(
            what,
            getattr(api, f"create_namespaced_{suffix}"),
            namespace,
            body,
            _headers=JSON_HEADERS,
        )

    def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], *, status: bool = False
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386). Put `metadata.resourceVersion` in it to make it fail
        with ConflictError when the object changed since it was read."""
        what = f"patching {kind} {namespace}/{name}{'/status' if status else ''}"
        if kind in _CUSTOM:
            k = API_RESOURCES[kind]
            api = self._custom()
            fn = (
                api.patch_namespaced_custom_object_status
                if status
                else (api.patch_namespaced_custom_object)
            )
            return self._call(
                what, fn, k.group, k.version, namespace, k.plural, name, patch,
                _content_type=MERGE_PATCH,
            )  # fmt: skip
        api, suffix = self._typed(kind)
        return self._call(
            what, getattr(api, f"patch_namespaced_{suffix}"), name, namespace, patch,
            _content_type=MERGE_PATCH,
        )  # fmt: skip
