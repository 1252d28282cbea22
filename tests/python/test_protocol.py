"""The Open Inference Protocol as its clients speak it: Triton's binary tensor data extension,
compressed bodies both ways, and the fields KServe's REST client sends."""
import gzip
import json
import zlib

import numpy as np
import pytest
import requests
import torch

import lepton
from conftest import AddN, Pair, Twice

TOKEN = "s3cret-token"


class Complex(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x, x)


@pytest.fixture
def server(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("twice", Twice(), version="t1")  # no signature: any dtype
    registry.register("complex", Complex(), version="c1")
    registry.register("pair", Pair(), version="p1", example_inputs=(torch.zeros(1, 2), torch.zeros(1, 2)))
    s = lepton.serve(registry, port=0, token=TOKEN, max_body_bytes=1 << 20)
    yield s
    s.stop()


def binary_request(header, *arrays):
    """A body of JSON followed by the arrays' bytes, and its headers."""
    head = json.dumps(header).encode()
    body = head + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return body, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def split_binary(response):
    """The JSON part of a binary response and the bytes after it."""
    n = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:n]), response.content[n:]


def test_binary_inputs_and_outputs(server):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "parameters": {"binary_data_output": True}}
    body, headers = binary_request(header, x)
    r = requests.post(server.url + "/v2/models/m/infer", data=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    meta, rest = split_binary(r)
    out = meta["outputs"][0]
    assert out["parameters"] == {"binary_data_size": 32} and "data" not in out
    assert np.array_equal(np.frombuffer(rest, dtype=np.float32).reshape(out["shape"]), x + 1)


def test_binary_outputs_asked_one_by_one_and_json_inputs_mixed_in(server):
    a = np.array([[1, 2]], dtype=np.float32)
    header = {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                         {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [3, 4]}],
              "outputs": [{"name": "output_0", "parameters": {"binary_data": False}},
                          {"name": "output_1", "parameters": {"binary_data": True}}]}
    body, headers = binary_request(header, a)
    r = requests.post(server.url + "/v2/models/pair/infer", data=body, headers=headers)
    assert r.status_code == 200, r.text
    meta, rest = split_binary(r)
    outs = {o["name"]: o for o in meta["outputs"]}
    assert outs["output_0"]["data"] == [4.0, 6.0]
    assert outs["output_1"]["datatype"] == "INT64"
    assert np.frombuffer(rest, dtype=np.int64).tolist() == [3, 8]


@pytest.mark.parametrize("lie,match", [
    ("past_the_body", "past the end"),
    ("left_over", "no input's binary_data_size claims"),
    ("wrong_size", "takes 16"),
    ("header_too_long", "Inference-Header-Content-Length is"),
    ("no_header", "needs an Inference-Header-Content-Length header"),
    ("not_a_number", "byte count"),
    ("data_and_binary", "both 'data' and binary_data_size"),
])
def test_binary_bodies_that_lie_about_their_sizes_are_refused(server, lie, match):
    x = np.zeros((1, 4), dtype=np.float32)
    size = {"wrong_size": 12}.get(lie, 16)
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    if lie == "data_and_binary":
        tensor["data"] = [0, 0, 0, 0]
    body, headers = binary_request({"inputs": [tensor]}, x)
    if lie == "past_the_body":
        body = body[:-4]
    elif lie == "left_over":
        body += b"\0" * 4
    elif lie == "header_too_long":
        headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    elif lie == "no_header":
        del headers["Inference-Header-Content-Length"]
    elif lie == "not_a_number":
        headers["Inference-Header-Content-Length"] = "-5"
    r = requests.post(server.url + "/v2/models/m/infer", data=body, headers=headers)
    assert r.status_code == 400 and match in r.json()["error"], r.text
    assert requests.post(server.url + "/v2/models/m/infer",
                         json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                           "data": [0, 0, 0, 0]}]}).status_code == 200


def infer_body(x):
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}


@pytest.mark.parametrize("coding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_requests_and_responses(server, coding, compress):
    x = torch.arange(400, dtype=torch.float32).reshape(100, 4)
    raw = json.dumps(infer_body(x)).encode()
    r = requests.post(server.url + "/v2/models/m/infer", data=compress(raw),
                      headers={"Content-Encoding": coding, "Accept-Encoding": coding})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Encoding"] == coding  # requests inflated it for us
    assert r.json()["outputs"][0]["data"][:3] == [1.0, 2.0, 3.0]


def test_a_compression_bomb_is_refused_without_inflating_it_all(server):
    bomb = gzip.compress(b"[" + b"0," * (8 << 20) + b"0]")  # 16 MB of JSON in a few KB
    assert len(bomb) < 100_000
    r = requests.post(server.url + "/v2/models/m/infer", data=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "inflates past" in r.json()["error"]


@pytest.mark.parametrize("coding,body,status", [
    ("br", b"x", 415), ("gzip", b"not gzip at all", 400), ("gzip", gzip.compress(b"{}")[:-6], 400)])
def test_unknown_and_corrupt_codings(server, coding, body, status):
    r = requests.post(server.url + "/v2/models/m/infer", data=body, headers={"Content-Encoding": coding})
    assert r.status_code == status, r.text


def test_kserve_request_fields_and_response_shape(server):
    x = torch.zeros(1, 4)
    body = {**infer_body(x), "model_name": "m", "id": "kserve-1", "parameters": None}
    body["inputs"][0]["parameters"] = None
    r = requests.post(server.url + "/v2/models/m/infer", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["id"] == "kserve-1"
    for value in reply["parameters"].values():  # strings, numbers or booleans only
        assert isinstance(value, (str, int, float, bool))
    assert reply["parameters"]["lepton_versions"] == "v1"
    # Without an id of its own, the response carries lepton's request id.
    reply = requests.post(server.url + "/v2/models/m/infer", json=infer_body(x)).json()
    assert reply["id"] == reply["parameters"]["lepton_request_id"]
    wrong = {**infer_body(x), "model_name": "other"}
    r = requests.post(server.url + "/v2/models/m/infer", json=wrong)
    assert r.status_code == 400 and "other" in r.json()["error"]


def test_server_metadata_lists_binary_tensor_data(server):
    assert "binary_tensor_data" in requests.get(server.url + "/v2").json()["extensions"]


def test_a_wrong_method_gets_405_with_allow(server):
    r = requests.get(server.url + "/v2/models/m/infer")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = requests.post(server.url + "/v2/lepton/models/m/policy", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 405 and r.headers["Allow"] == "GET, PUT"


def test_fp16_and_bf16_travel_as_json_and_as_binary(server):
    r = requests.post(server.url + "/v2/models/twice/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [0.5, 1.5, -2.25]}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == "FP16" and out["data"] == [1.0, 3.0, -4.5]
    x = torch.tensor([[1.0, 2.5, -3.0]], dtype=torch.bfloat16)
    raw = x.view(torch.int16).numpy()
    header = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BF16", "parameters": {"binary_data_size": 6}}],
              "parameters": {"binary_data_output": True}}
    body, headers = binary_request(header, raw)
    r = requests.post(server.url + "/v2/models/twice/infer", data=body, headers=headers)
    assert r.status_code == 200, r.text
    meta, rest = split_binary(r)
    assert meta["outputs"][0]["datatype"] == "BF16"
    got = torch.frombuffer(bytearray(rest), dtype=torch.bfloat16).reshape(1, 3)
    assert torch.equal(got, x * 2)
    r = requests.post(server.url + "/v2/models/twice/infer",
                      json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]}]})
    assert r.status_code == 400 and "FP16 range" in r.json()["error"]


def test_an_output_the_protocol_cannot_carry_is_an_error_not_a_wrong_answer(server):
    r = requests.post(server.url + "/v2/models/complex/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
    assert r.status_code == 500
    logged = requests.get(server.url + "/v2/lepton/events?since=0&limit=100000",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert any(r.json()["request_id"] in e["message"] and "dtype complex64" in e["message"] for e in logged)


def test_the_repository_index_lists_every_live_version(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4))
    models = {"m": {"versions": ["v1", "v2"], "policy": {"type": "weighted", "weights": {"v1": 1, "v2": 1}}}}
    with lepton.serve(registry, port=0, token=TOKEN, models=models, only=True) as s:
        index = requests.post(s.url + "/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert sorted((x["name"], x["version"], x["state"]) for x in index) == [("m", "v1", "READY"), ("m", "v2", "READY")]


def test_binary_floats_go_back_uncompressed_where_compressing_saves_little(server):
    """Deflating a megabyte of floats costs tens of milliseconds to save a few percent: a client
    that accepts gzip gets binary floats as they are, and JSON compressed."""
    x = np.random.default_rng(0).standard_normal((1, 100_000)).astype(np.float32)
    header = {"inputs": [{"name": "x", "shape": [1, 100_000], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "parameters": {"binary_data_output": True}}
    body, headers = binary_request(header, x)
    r = requests.post(server.url + "/v2/models/twice/infer", data=body,
                      headers={**headers, "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and "Content-Encoding" not in r.headers
    meta, rest = split_binary(r)
    assert np.array_equal(np.frombuffer(rest, dtype=np.float32), x.ravel() * 2)
    small = np.arange(4000, dtype=np.float32).reshape(1, 4000)
    r = requests.post(server.url + "/v2/models/twice/infer", json=infer_body(small), headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_shared_memory_region_is_refused_rather_than_answered_elsewhere(server, where):
    body = infer_body(torch.zeros(1, 4))
    region = {"shared_memory_region": "r0", "shared_memory_byte_size": 16}
    if where == "input":
        body["inputs"][0]["parameters"] = region
    else:
        body["outputs"] = [{"name": "output_0", "parameters": region}]
    r = requests.post(server.url + "/v2/models/m/infer", json=body)
    assert r.status_code == 400 and "shared memory region" in r.json()["error"], r.text


def test_model_configuration_in_tritons_shape(server, registry):
    cfg = requests.get(server.url + "/v2/models/m/config").json()
    assert cfg["name"] == "m" and cfg["max_batch_size"] == 0 and "dynamic_batching" not in cfg
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert cfg["output"][0]["data_type"] == "TYPE_FP32"
    assert cfg["version_policy"] == {"specific": {"versions": ["v1"]}}
    assert requests.get(server.url + "/v2/models/m/versions/v1/config").status_code == 200
    assert requests.get(server.url + "/v2/models/m/versions/v9/config").status_code == 404
    assert requests.get(server.url + "/v2/models/nope/config").status_code == 404
    with lepton.serve(registry, port=0, max_batch_size=8, max_queue_delay_ms=2) as batching:
        cfg = requests.get(batching.url + "/v2/models/pair/config").json()
        assert cfg["max_batch_size"] == 8 and cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
        assert [i["dims"] for i in cfg["input"]] == [[2], [2]]  # the batch dimension left out
