"""The KServe v2 gRPC predict API (`inference.GRPCInferenceService`) on Ray Serve's gRPC ingress.

    predict_v2.proto    the protocol definition (package `inference`, as stock clients call it)
    predict_v2_pb2*.py  its generated stubs, committed (`make grpc-stubs` regenerates them)
    convert             ModelInferRequest -> the REST checks of `serve.protocol`, and back
    servicer            the RPCs over a replica's InferenceService (status codes, auth)

Why the stubs live in this package: Serve pickles each request message from its gRPC proxy
to a replica, so the message classes must import under the same module path everywhere;
tritonclient's own stubs (module `grpc_service_pb2`) do not, and tritonclient[grpc] needs
protobuf<7, which Ray 2.60 cannot run with (FIELD-NOTES).

This module holds names only (no grpc or protobuf import): rendering uses them.
"""

SERVICE = "inference.GRPCInferenceService"
SERVICER_FUNCTION = (
    "rayfleet.serve.grpc.predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)
"""What Serve's gRPCOptions.grpc_servicer_functions names: registers the service's methods."""
