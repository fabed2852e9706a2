"""A stock KServe v2 gRPC client's view of a server: run with the tritonclient[grpc] venv.

`python grpc_client.py HOST:PORT MODEL EXAMPLES.npy` prints one JSON document: the health
and metadata RPCs' answers, ModelInfer's outputs for the examples (tritonclient's defaults:
raw_input_contents in, raw_output_contents out), and the status code and message of each
bad request in BAD_REQUESTS. tests/integration/test_serve_grpc.py runs it by subprocess:
tritonclient[grpc] needs protobuf<7, which the main venv (Ray 2.60) cannot have, so it lives
in its own venv (`make grpc-client`). It imports nothing from rayfleet.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

OUTPUTS = ("logits", "probabilities", "predicted_class")


def infer(client, model: str, x: np.ndarray, *, name="input", datatype="FP32", outputs=OUTPUTS):
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    wanted = [triton.InferRequestedOutput(o) for o in outputs]
    return client.infer(model, [tensor], outputs=wanted, request_id="grpc-client")


def bad_requests(client, model: str, x: np.ndarray) -> dict:
    """Each a request a stock client can send that the server must refuse."""
    return {
        "wrong shape": lambda: infer(client, model, x.reshape(len(x), 64)),
        "wrong datatype": lambda: infer(client, model, x.astype(np.int32), datatype="INT32"),
        "wrong input name": lambda: infer(client, model, x, name="pixels"),
        "unknown output": lambda: infer(client, model, x, outputs=("embedding",)),
        "NaN input": lambda: infer(client, model, np.full_like(x, np.nan)),
        "unknown model": lambda: infer(client, "no-such-model", x),
    }


def main(url: str, model: str, examples: str) -> None:
    x = np.load(examples).astype(np.float32)
    client = triton.InferenceServerClient(url)
    server = client.get_server_metadata()
    meta = client.get_model_metadata(model)
    result = infer(client, model, x)
    refused = {}
    for what, call in bad_requests(client, model, x).items():
        try:
            call()
            refused[what] = {"code": "OK", "message": ""}
        except InferenceServerException as exc:
            refused[what] = {"code": str(exc.status()), "message": exc.message()}
    doc = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": {"name": server.name, "extensions": list(server.extensions)},
        "model": {
            "name": meta.name,
            "versions": list(meta.versions),
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                       for t in meta.inputs],
            "outputs": [t.name for t in meta.outputs],
        },
        "id": result.get_response().id,
        "outputs": {name: result.as_numpy(name).tolist() for name in OUTPUTS},
        "refused": refused,
    }  # fmt: skip
    client.close()
    print(json.dumps(doc))


if __name__ == "__main__":
    main(*sys.argv[1:4])
