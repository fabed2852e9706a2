"""The Ray Serve runtime of a ModelDeployment: the replica class and the application builder.

This is what runs on Serve: `application` is the `import_path` of the config that
`rayfleet.serve.config` builds (for `rayfleet serve`, `rayfleet render` and the operator
alike), and each replica is a `ModelServer` that loads the pinned checkpoint and serves the
Open Inference Protocol app (and, with Serve's gRPC ingress on, the same protocol over
gRPC). It imports Ray Serve and FastAPI (the app), and its replicas load torch: only serving
processes import it. The config itself, and the names in it, live in `serve.config`, which
imports none of these.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from rayfleet.errors import SpecError
from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.auth import server_token
from rayfleet.serve.config import DEPLOYMENT, deployment_options, replica_settings
from rayfleet.serve.grpc.servicer import GrpcInference
from rayfleet.serve.loading import load_model, pin_checkpoint, resolve_source
from rayfleet.serve.runtime import put_busy_report
from rayfleet.specs import parse_spec
from rayfleet.specs.serve import ModelDeployment
from rayfleet.train.busy import BusySampler

__all__ = ["ModelServer", "application"]
log = logging.getLogger(__name__)


@serve.deployment(
    name=DEPLOYMENT,
    # A replica that can't load its checkpoint won't load it on the 20th try either.
    max_constructor_retry_count=3,
    graceful_shutdown_wait_loop_s=1.0,
    graceful_shutdown_timeout_s=15.0,
    # Notice a dead replica in seconds, not Serve's default 10 s, and replace it.
    health_check_period_s=2.0,
    health_check_timeout_s=15.0,
)
@serve.ingress()
class ModelServer:
    """One replica: loads the pinned checkpoint (verified, weights only) and serves the OIP app."""

    def __init__(self, settings: dict[str, Any]):
        # Fail closed: with auth on and no usable token, the replica does not start at all.
        token = server_token(f"deployment {settings['model_name']}") if settings["auth"] else None
        model = load_model(
            settings["checkpoint"],
            name=settings["model_name"],
            device="cuda" if settings.get("gpus", 0) > 0 else "cpu",
        )
        self.service = InferenceService(
            model,
            max_batch_size=settings["max_batch_size"],
            batch_wait_timeout_s=settings["batch_wait_timeout_s"],
            max_request_bytes=settings["max_request_bytes"],
            expose_source=settings["expose_source"],
        )
        self._token = token
        self.grpc = GrpcInference(self.service, token=token)
        # Last: busy time counts from when the replica is ready, as its requested time does.
        self._busy = _start_busy(settings.get("gpus", 0))

    def __del__(self):
        """Serve calls this as the replica shuts down: the busy sampler's final report."""
        busy = getattr(self, "_busy", None)
        if busy is not None:
            self._busy = None
            busy.stop()

    def __serve_build_asgi_app__(self):
        return build_app(self.service, token=self._token)

    # The KServe v2 gRPC API (inference.GRPCInferenceService), when Serve runs its gRPC
    # ingress (spec.grpcPort): Serve calls the ingress replica's method named like the RPC,
    # with its context as `grpc_context` (the name Serve looks for). See `serve.grpc`.

    async def ServerLive(self, request, grpc_context=None):
        return await self.grpc.server_live(request, grpc_context)

    async def ServerReady(self, request, grpc_context=None):
        return await self.grpc.server_ready(request, grpc_context)

    async def ServerMetadata(self, request, grpc_context=None):
        return await self.grpc.server_metadata(request, grpc_context)

    async def ModelReady(self, request, grpc_context=None):
        return await self.grpc.model_ready(request, grpc_context)

    async def ModelMetadata(self, request, grpc_context=None):
        return await self.grpc.model_metadata(request, grpc_context)

    async def ModelInfer(self, request, grpc_context=None):
        return await self.grpc.model_infer(request, grpc_context)


def _start_busy(gpus: float) -> BusySampler | None:
    """This replica process's busy time (CPU; GPU where NVML answers), sampled by
    `train.busy.BusySampler` and kept in Ray's key-value store for `rayfleet serve`'s meter
    (`runtime.busy_reports`); None when it cannot measure (logged): never an error."""
    try:
        context = serve.get_replica_context()
        app, replica = context.replica_id.deployment_id.app_name, context.replica_id.unique_id
        gpu = None
        if gpus > 0:
            import torch

            if torch.cuda.is_available():
                gpu = torch.cuda.current_device()

        def send(report: dict[str, Any], final: bool) -> None:
            put_busy_report(app, {**report, "at": time.time()})

        return BusySampler(send, gpu=gpu, facts={"replica": replica}).start()
    except Exception as exc:  # noqa: BLE001 - measuring never fails serving
        log.warning("busy time not measured on this replica: %s", exc)
        return None


def application(args: dict[str, Any]):
    """Serve application builder (`import_path`): `{"spec": ModelDeployment doc,
    "checkpoint"?: URI}` -> the bound app. Without a checkpoint the source is resolved here."""
    deployment = parse_spec(args.get("spec"), source="serve application args")
    if not isinstance(deployment, ModelDeployment):
        raise SpecError(
            f"serve application args: expected a ModelDeployment, got {deployment.kind}"
        )
    checkpoint = args.get("checkpoint") or str(resolve_source(deployment).uri)
    if not args.get("checkpoint"):  # resolved here: pin it, as `rayfleet serve` does
        warning = pin_checkpoint(deployment, checkpoint)
        if warning:
            logging.getLogger(__name__).warning(warning)
    return ModelServer.options(**deployment_options(deployment)).bind(
        replica_settings(deployment, checkpoint)
    )
