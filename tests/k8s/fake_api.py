"""An in-memory stand-in for the API server behind `rayfleet.k8s.client.KubeAPI`.

No API server can run on these machines, so the operator's and the plugin's wiring (which
object is read, created or patched, with what) is checked against this: objects live in a
dict, a write bumps `metadata.resourceVersion` (and `generation` on spec changes, as the API
server does), merge patches follow RFC 7386, and a patch carrying a stale resourceVersion
fails with ConflictError like a real 409. Ray objects are validated against the strict
KubeRay CRD schema on every write, so a write the API server would refuse fails here too.
"""

from __future__ import annotations

import copy
from typing import Any

from rayfleet.k8s.client import ConflictError, NotFoundError
from rayfleet.k8s.reconcile import apply_merge_patch
from tests.k8s.schemas import CRD_FILES, validate_ray


class FakeCluster:
    def __init__(self, namespace: str = "ml"):
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, Any]] = []
        self._rv = 100
        self.namespace = namespace

    def default_namespace(self) -> str:
        return self.namespace

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Seed an object as if it had been applied."""
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", self.namespace)
        obj["metadata"].setdefault("generation", 1)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}-{obj['kind']}")
        self._bump(obj)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name, None))
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list:
        self.calls.append(("list", kind, namespace or "", label_selector))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and (namespace is None or ns == namespace)
        ]

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", kind, body["metadata"]["name"], copy.deepcopy(body)))
        if (kind, namespace, body["metadata"]["name"]) in self.objects:
            raise ConflictError(f"{kind} {body['metadata']['name']} already exists")
        if kind in CRD_FILES:
            validate_ray(body)
        return self.put({**body, "metadata": {**body["metadata"], "namespace": namespace}})

    def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], *, status: bool = False
    ) -> dict[str, Any]:
        self.calls.append(("patch/status" if status else "patch", kind, name, copy.deepcopy(patch)))
        key = (kind, namespace, name)
        if key not in self.objects:
            raise NotFoundError(f"{kind} {namespace}/{name}: not found")
        obj = self.objects[key]
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
            raise ConflictError(f"patching {kind} {namespace}/{name}: changed")
        if status:  # the status subresource ignores everything but status
            patch = {"status": patch.get("status")}
        else:
            patch = {k: v for k, v in patch.items() if k != "status"}
        new = apply_merge_patch(obj, patch)
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        if kind in CRD_FILES:
            validate_ray(new)
        self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def writes(self) -> list[tuple[str, str, str, Any]]:
        return [c for c in self.calls if c[0] not in ("get", "list")]
