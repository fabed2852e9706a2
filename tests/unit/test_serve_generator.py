"""Serving a model that is not a classifier: digits-gan's generator (latents and optional
labels in, images out) through the signature, the protocol (JSON and binary tensors), the
batching of multi-input requests, the FastAPI app and the gRPC API, without Ray.

The checkpoint is the recipe's own: an untrained generator's weights in state.pt (beside a
discriminator, as training writes them) and the manifest meta `train_loop` records, so every
served image is compared with the generator run directly on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from rayfleet.serve.app import InferenceService
from rayfleet.serve.batching import concat_rows, split_rows
from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.grpc.convert import (
    model_infer_response,
    model_metadata_response,
    parse_model_infer,
)
from rayfleet.serve.grpc.servicer import GrpcInference
from rayfleet.serve.loading import ModelLoadError, load_model, signature_from_meta
from rayfleet.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    encode_response,
    encode_response_body,
    model_metadata,
    parse_infer_request,
)
from rayfleet.storage.checkpoints import write_manifest
from rayfleet.train.recipes import STATE_FILE
from rayfleet.train.recipes import digits_gan as gan

from .test_serve_grpc import _code, serving
from .test_serve_protocol import SIG as CLASSIFIER
from .test_serve_protocol import _call

pytestmark = pytest.mark.unit
MODEL, LATENT = "gan", 32
INFER = f"/v2/models/{MODEL}/infer"
CONFIG = {"latent": LATENT, "width": 8, "num_classes": 10}


def gan_meta(**changes) -> dict:
    """The manifest meta digits-gan's train_loop writes (the parts serving reads)."""
    meta = {
        "recipe": "digits-gan",
        "model_config": CONFIG,
        "input": {"shape": [LATENT], "dtype": "float32"},
        "output": {"shape": [1, 8, 8], "dtype": "float32", "range": [0.0, 1.0]},
        "signature": gan.serving_signature(LATENT),
        "conditional": True,
        "num_classes": 10,
    }
    return {**meta, **changes}


def write_gan_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """A digits-gan checkpoint: generator (`model`) and discriminator states, a manifest. The
    BatchNorm running statistics are moved off their defaults so eval mode matters."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    generator = gan.build_model(CONFIG)
    with torch.no_grad():
        for norm in (generator.norm0, generator.norm1):
            norm.running_mean.uniform_(-0.2, 0.2)
            norm.running_var.uniform_(0.5, 1.5)
    state = {
        "model": generator.state_dict(),
        "optimizer": {},
        "discriminator": gan.build_discriminator(CONFIG).state_dict(),
        "d_optimizer": {},
        "epoch": 0,
    }
    torch.save(state, folder / STATE_FILE)
    write_manifest(folder, {**gan_meta(), "epoch": 0, "metrics": {"quality": 0.1}})
    return folder


def local_images(folder: Path, z: np.ndarray, labels) -> np.ndarray:
    """What the generator in `folder` draws, run directly (not through serving code)."""
    generator = gan.build_model(CONFIG)
    state = torch.load(folder / STATE_FILE, weights_only=True)
    generator.load_state_dict(state["model"])
    with torch.no_grad():
        out = generator.eval()(torch.from_numpy(z), torch.as_tensor(labels, dtype=torch.int64))
    return gan.to_unit(out).numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_gan_checkpoint(tmp_path_factory.mktemp("gan") / "checkpoint_e000000-aa")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(str(checkpoint), name=MODEL)


@pytest.fixture(scope="module")
def service(model):
    return InferenceService(model, max_request_bytes=1 << 20)


def _z(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, LATENT)).astype(np.float32)


def _latent(z, **changes) -> dict:
    tensor = {"name": "latent", "shape": list(z.shape), "datatype": "FP32", "data": z.tolist()}
    return {**tensor, **changes}


def _label(labels, datatype="INT64", **changes) -> dict:
    tensor = {"name": "label", "shape": [len(labels)], "datatype": datatype, "data": labels}
    return {**tensor, **changes}


def _request(*tensors, **doc) -> bytes:
    return json.dumps({"inputs": list(tensors), **doc}).encode()


# ------------------------------------------------------------------------- the signature


def test_signature_from_the_recipe_meta_names_inputs_outputs_and_defaults():
    sig = signature_from_meta(gan_meta(), "ckpt")
    assert not sig.classifier
    assert [(t.name, t.shape, t.datatypes, t.optional) for t in sig.inputs] == [
        ("latent", (LATENT,), ("FP32",), False),
        ("label", (), ("INT64", "INT32"), True),
    ]
    assert [(t.name, t.shape, t.datatype) for t in sig.outputs] == [("image", (1, 8, 8), "FP32")]
    # evaluate and compress read the main input as before: the latent vector
    assert (sig.shape, sig.dtype, sig.input_name, sig.num_classes) == (
        (32,),
        "float32",
        "latent",
        10,
    )
    assert sig.inputs[1].default_rows(12).tolist() == [*range(10), 0, 1]
    doc = model_metadata(MODEL, "v1", sig, {"recipe": "digits-gan"})
    assert doc["inputs"] == [
        {"name": "latent", "datatype": "FP32", "shape": [-1, 32]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]
    assert doc["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert doc["parameters"]["signature"] == {
        "label": {
            "datatypes": ["INT64", "INT32"],
            "optional": True,
            "range": [0, 9],
            "default": "when absent, row i of a request gets i % 10",
        },
        "image": {"range": [0.0, 1.0]},
    }
    assert doc["parameters"]["recipe"] == "digits-gan"


def test_a_classifier_signature_and_metadata_are_as_before():
    sig = signature_from_meta(
        {"recipe": "digits-cnn", "input": {"shape": [1, 8, 8], "dtype": "float32"},
         "num_classes": 10}, "ckpt",
    )  # fmt: skip
    assert sig == CLASSIFIER and sig.classifier and sig.describe() == {}
    doc = model_metadata("digits", "v1", sig, {"epoch": 3})
    assert doc["parameters"] == {"epoch": 3}
    assert doc["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
    ]


def _signature(**changes):
    doc = gan.serving_signature(LATENT)
    label, image = doc["inputs"][1], doc["outputs"][0]
    for key, value in changes.items():
        where, _, field = key.partition("__")
        target = {"label": label, "image": image, "doc": doc}[where]
        if value is ...:
            target.pop(field)
        else:
            target[field] = value
    return doc


BAD_SIGNATURES = {
    "not an object": [1, 2],
    "no outputs": _signature(doc__outputs=...),
    "empty outputs": _signature(doc__outputs=[]),
    "unknown key": _signature(label__about="x"),
    "output key on an input": _signature(label__module_range=[0, 1]),
    "input key on an output": _signature(image__optional=True),
    "unknown dtype": _signature(label__dtype="int128"),
    "unhashable dtype": _signature(label__also=[["int32"]]),
    "zero dim": _signature(image__shape=[1, 0, 8]),
    "optional without default": _signature(label__default=...),
    "unknown default": _signature(label__default="random"),
    "default without range": _signature(label__range=...),
    "reversed range": _signature(label__range=[9, 0]),
    "module_range without range": _signature(image__range=..., image__module_range=[-1, 1]),
    "repeated name": _signature(label__name="latent"),
    "optional first input": {
        "inputs": [gan.serving_signature(LATENT)["inputs"][1]],
        "outputs": gan.serving_signature(LATENT)["outputs"],
    },
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
def test_a_malformed_signature_is_refused_in_one_line(case):
    with pytest.raises(ModelLoadError) as err:
        signature_from_meta(gan_meta(signature=BAD_SIGNATURES[case]), "s3://b/runs/g/ckpt")
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "checkpoint s3://b/runs/g/ckpt: meta.signature"
    )


def test_a_generator_checkpoint_from_before_signatures_says_retrain():
    meta = gan_meta()
    del meta["signature"]
    with pytest.raises(ModelLoadError, match="records no serving signature.*retrain"):
        signature_from_meta(meta, "ckpt")


# ------------------------------------------------------------------------- loading, forward


def test_loading_serves_the_generator_weights_and_matches_a_direct_forward(checkpoint, model):
    z, labels = _z(7), np.array([3, 1, 4, 1, 5, 9, 2])
    out = model.run({"latent": z, "label": labels})
    assert set(out) == {"image"} and out["image"].shape == (7, 1, 8, 8)
    assert out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"], local_images(checkpoint, z, labels))
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert not model.module.training  # eval mode: BatchNorm uses its running statistics


def test_a_generator_checkpoint_holding_code_is_refused(tmp_path, checkpoint):
    import pickle

    folder = write_gan_checkpoint(tmp_path / "checkpoint_e000000-bb")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    state = torch.load(folder / STATE_FILE, weights_only=True)
    state["discriminator"] = Payload()  # not even in the part serving uses
    torch.save(state, folder / STATE_FILE, pickle_module=pickle)
    write_manifest(folder, {**gan_meta(), "epoch": 0})
    with pytest.raises(ModelLoadError, match=r"weights_only=True"):
        load_model(str(folder), name=MODEL)


# ------------------------------------------------------------------------- the protocol


def test_latents_and_labels_parse_in_json_with_int64_or_int32_labels(model):
    z = _z(3)
    for datatype in ("INT64", "INT32"):
        req = parse_infer_request(
            _request(_latent(z), _label([7, 0, 9], datatype)), model.signature
        )
        assert list(req.inputs) == ["latent", "label"] and req.outputs == ("image",)
        np.testing.assert_array_equal(req.inputs["latent"], z)
        assert req.inputs["label"].dtype == np.int64 and req.inputs["label"].tolist() == [7, 0, 9]
    # labels first, nested latents: the same request
    nested = parse_infer_request(_request(_label([7, 0, 9]), _latent(z)), model.signature)
    assert list(nested.inputs) == ["latent", "label"]


def test_without_labels_row_i_gets_digit_i_mod_10(model):
    req = parse_infer_request(_request(_latent(_z(12))), model.signature)
    assert req.inputs["label"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def _bad_requests() -> dict[str, bytes]:
    z = _z(2)
    return {
        "label out of range": _request(_latent(z), _label([3, 10])),
        "negative label": _request(_latent(z), _label([-1, 3])),
        "fractional label": _request(_latent(z), _label([1.5, 3])),
        "float label datatype": _request(_latent(z), _label([1, 3], "FP32")),
        "label shape [N, 1]": _request(_latent(z), _label([1, 3], shape=[2, 1])),
        "label batch differs": _request(_latent(z), _label([1, 3, 5])),
        "latent wrong width": _request(_latent(_z(2)[:, :16]), _label([1, 3])),
        "latent INT64": _request(_latent(z, datatype="INT64")),
        "labels only": _request(_label([1, 3])),
        "label twice": _request(_latent(z), _label([1, 3]), _label([1, 3])),
        "three inputs": _request(_latent(z), _label([1, 3]), _latent(z, name="noise")),
        "unknown input": _request(_latent(z, name="z")),
        "classifier output": _request(_latent(z), outputs=[{"name": "logits"}]),
        "NaN latent": _request(_latent(z)).replace(b"[[", b"[[NaN, ", 1),
    }


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_generator_requests_are_400_with_one_message(model, case):
    with pytest.raises(ProtocolError) as err:
        parse_infer_request(_bad_requests()[case], model.signature)
    assert err.value.status == 400 and "\n" not in err.value.message


def test_messages_name_the_tensor_and_what_it_takes(model):
    messages = {}
    for case in ("label out of range", "latent wrong width", "label shape [N, 1]", "labels only"):
        with pytest.raises(ProtocolError) as err:
            parse_infer_request(_bad_requests()[case], model.signature)
        messages[case] = err.value.message
    assert messages == {
        "label out of range": "input 'label' has value 10; it takes whole numbers from 0 to 9",
        "latent wrong width": (
            "input 'latent' has shape [2, 16]; the model takes [-1, 32] (N >= 1)"
        ),
        "label shape [N, 1]": "input 'label' has shape [2, 1]; the model takes [-1] (N >= 1)",
        "labels only": "input(s) ['latent'] missing; the model takes ['latent', 'label']",
    }


def _binary_body(z: np.ndarray, labels: np.ndarray | None, **doc) -> tuple[bytes, int]:
    """Both inputs as raw bytes after the JSON header, in the order listed."""
    tensors, chunks = [], []
    for name, array, datatype in (("latent", z, "FP32"), ("label", labels, "INT32")):
        if array is None:
            continue
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        params = {"binary_data_size": len(raw)}
        shape = list(array.shape)
        tensors.append({"name": name, "shape": shape, "datatype": datatype, "parameters": params})
        chunks.append(raw)
    head = json.dumps({"inputs": tensors, **doc}).encode()
    return b"".join([head, *chunks]), len(head)


def test_binary_inputs_and_outputs_carry_the_same_numbers_as_json(model, checkpoint):
    z, labels = _z(4, seed=1), np.array([5, 6, 7, 8], dtype=np.int32)
    body, n = _binary_body(
        z, labels, outputs=[{"name": "image", "parameters": {"binary_data": True}}]
    )
    req = parse_infer_request(body, model.signature, json_length=n)
    assert req.binary_outputs == {"image"} and req.inputs["label"].dtype == np.int64
    results = model.run(req.inputs)
    response, length = encode_response_body(MODEL, "v1", req, results)
    header = json.loads(response[:length])
    (image,) = header["outputs"]
    assert image == {
        "name": "image", "datatype": "FP32", "shape": [4, 1, 8, 8],
        "parameters": {"binary_data_size": 4 * 64 * 4},
    }  # fmt: skip
    served = np.frombuffer(response[length:], "<f4").reshape(4, 1, 8, 8)
    np.testing.assert_array_equal(served, local_images(checkpoint, z, labels))
    as_json = encode_response(MODEL, "v1", req, results)["outputs"][0]
    np.testing.assert_array_equal(np.float32(as_json["data"]).reshape(4, 1, 8, 8), served)

    short, n_short = _binary_body(z, labels)
    with pytest.raises(ProtocolError, match="add up to"):
        parse_infer_request(short + b"\0" * 4, model.signature, json_length=n_short)
    with pytest.raises(ProtocolError, match="only 12 bytes follow"):
        parse_infer_request(short[:-4], model.signature, json_length=n_short)


# ------------------------------------------------------------------------- batching


def test_concat_and_split_rows_keep_each_requests_rows():
    items = [
        {"latent": np.full((n, 2), i, np.float32), "label": np.full(n, i, np.int64)}
        for i, n in enumerate((1, 3, 2))
    ]
    joined, sizes = concat_rows(items)
    assert sizes == [1, 3, 2] and joined["latent"].shape == (6, 2)
    assert joined["label"].tolist() == [0, 1, 1, 1, 2, 2]
    outs = split_rows({"image": joined["latent"] * 10, "n": joined["label"]}, sizes)
    for i, (item, out) in enumerate(zip(items, outs, strict=True)):
        np.testing.assert_array_equal(out["image"], item["latent"] * 10)
        assert out["n"].tolist() == [i] * len(item["label"])
    with pytest.raises(ValueError, match="same inputs"):
        concat_rows([items[0], {"latent": items[1]["latent"]}])


def test_batched_forward_of_multi_input_requests_equals_each_alone(service, checkpoint):
    requests = [
        parse_infer_request(_request(_latent(_z(n, seed=n)), *labels), service.model.signature)
        for n, labels in ((1, [_label([4])]), (3, []), (2, [_label([9, 9], "INT32")]))
    ]
    outs = service._forward_batch([r.inputs for r in requests])
    assert service.batches[-1] == 3
    for req, out in zip(requests, outs, strict=True):
        alone = local_images(checkpoint, req.inputs["latent"], req.inputs["label"])
        np.testing.assert_allclose(out["image"], alone, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- the app


def test_app_metadata_and_infer_with_the_stock_tritonclient_encoding(service, checkpoint):
    meta = _call(service, "GET", f"/v2/models/{MODEL}").json()
    assert [i["name"] for i in meta["inputs"]] == ["latent", "label"]
    assert meta["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]

    z, labels = _z(5, seed=3), np.array([0, 2, 4, 6, 8], dtype=np.int64)
    latent, label = (
        triton.InferInput("latent", [5, LATENT], "FP32"),
        triton.InferInput("label", [5], "INT64"),
    )
    latent.set_data_from_numpy(z)  # binary_data=True by default, as a stock client sends
    label.set_data_from_numpy(labels)
    body, json_size = triton.InferenceServerClient.generate_request_body([latent, label])
    r = _call(service, "POST", INFER, content=body, headers={HEADER_LENGTH: str(json_size)})
    assert r.status_code == 200, r.text
    result = triton.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers[HEADER_LENGTH])
    )
    image = result.as_numpy("image")
    assert image.shape == (5, 1, 8, 8) and image.dtype == np.float32
    np.testing.assert_array_equal(image, local_images(checkpoint, z, labels))

    plain = _call(service, "POST", INFER, content=_request(_latent(z)))  # JSON, no labels
    assert plain.status_code == 200 and HEADER_LENGTH.lower() not in plain.headers
    data = np.float32(plain.json()["outputs"][0]["data"]).reshape(5, 1, 8, 8)
    np.testing.assert_array_equal(data, local_images(checkpoint, z, np.arange(5) % 10))

    bad = _call(service, "POST", INFER, content=_request(_latent(z), _label([1, 2, 3, 4, 12])))
    assert bad.status_code == 400
    assert bad.json() == {"error": "input 'label' has value 12; it takes whole numbers from 0 to 9"}


# ------------------------------------------------------------------------- gRPC

Input = pb.ModelInferRequest.InferInputTensor


def _grpc_raw(z, labels, **fields) -> pb.ModelInferRequest:
    inputs = [Input(name="latent", datatype="FP32", shape=list(z.shape))]
    raw = [z.astype("<f4").tobytes()]
    if labels is not None:
        inputs.append(Input(name="label", datatype="INT32", shape=[len(labels)]))
        raw.append(np.asarray(labels, "<i4").tobytes())
    return pb.ModelInferRequest(model_name=MODEL, inputs=inputs, raw_input_contents=raw, **fields)


def test_grpc_raw_and_typed_contents_parse_like_rest(model):
    z, labels = _z(3, seed=4), [1, 2, 3]
    rest = parse_infer_request(_request(_latent(z), _label(labels)), model.signature)
    typed = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            Input(name="latent", datatype="FP32", shape=[3, LATENT],
                  contents=pb.InferTensorContents(fp32_contents=z.reshape(-1).tolist())),
            Input(name="label", datatype="INT32", shape=[3],
                  contents=pb.InferTensorContents(int_contents=labels)),
        ],
    )  # fmt: skip
    for request in (_grpc_raw(z, labels), typed):
        req = parse_model_infer(request, model.signature)
        for name in ("latent", "label"):
            np.testing.assert_array_equal(req.inputs[name], rest.inputs[name])
    response = model_infer_response(MODEL, "v1", rest, model.run(rest.inputs))
    (tensor,) = response.outputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("image", "FP32", [3, 1, 8, 8])
    metadata = model_metadata_response(model_metadata(MODEL, "v1", model.signature, {}))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("latent", "FP32", [-1, LATENT]),
        ("label", "INT64", [-1]),
    ]


def test_grpc_model_infer_answers_images_and_refuses_bad_labels(model, checkpoint):
    z, labels = _z(4, seed=5), [9, 8, 7, 6]

    async def calls(stub):
        answer = await stub.ModelInfer(_grpc_raw(z, labels, id="g1"))
        default = await stub.ModelInfer(_grpc_raw(z, None))
        bad = await _code(stub.ModelInfer(_grpc_raw(z, [9, 8, 7, 60])))
        wrong = await _code(stub.ModelInfer(_grpc_raw(z[:, :8].copy(), labels)))
        return answer, default, bad, wrong

    service = InferenceService(model, max_batch_size=8, batch_wait_timeout_s=0.001)
    answer, default, bad, wrong = serving(GrpcInference(service), calls)
    assert answer.id == "g1" and [o.name for o in answer.outputs] == ["image"]
    image = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(4, 1, 8, 8)
    np.testing.assert_array_equal(image, local_images(checkpoint, z, labels))
    cycled = np.frombuffer(default.raw_output_contents[0], "<f4").reshape(4, 1, 8, 8)
    np.testing.assert_array_equal(cycled, local_images(checkpoint, z, [0, 1, 2, 3]))
    assert bad == (
        "INVALID_ARGUMENT",
        "input 'label' has value 60; it takes whole numbers from 0 to 9",
    )
    assert wrong == (
        "INVALID_ARGUMENT",
        "input 'latent' has shape [4, 8]; the model takes [-1, 32] (N >= 1)",
    )
