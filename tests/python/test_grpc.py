"""The protocol's gRPC service (inference.GRPCInferenceService) through a client generated from
lepton's .proto with Debian's grpcio: every call, every datatype, bad and hostile messages, the
token, deadlines, refused compression and metrics."""
import gzip
import importlib
import os
import subprocess
import struct
import sys
import time
from typing import List, Tuple

import numpy as np
import pytest
import requests
import torch

import lepton
from conftest import AddN, Pair, Spin, Twice, lepton_serve

grpc = pytest.importorskip("grpc")

TOKEN = "grpc-s3cret"


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The messages and the stub, generated from lepton's .proto as any client would."""
    out = tmp_path_factory.mktemp("inference_pb")
    proto = lepton.server.PROTO  # installed with the package
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(proto)}", f"--python_out={out}",
                    f"--grpc_python_out={out}", proto], check=True)
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("inference_pb2")
        service = importlib.import_module("inference_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return messages, service


class Shout(torch.nn.Module):
    def forward(self, text: List[str]) -> Tuple[torch.Tensor, List[str]]:
        return torch.tensor([len(t) for t in text]), [t.upper() for t in text]


@pytest.fixture
def served(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4))
    registry.set_alias("m", "production", "v1")
    registry.register("twice", Twice(), version="t1")  # no signature: any dtype
    registry.register("pair", Pair(), version="p1", example_inputs=(torch.zeros(1, 2), torch.zeros(1, 2)))
    registry.register("spin", Spin(), version="s1")
    registry.register("shout", Shout(), version="v1", example_inputs=["hi"])
    s = lepton.serve(registry, port=0, grpc_port=0, token=TOKEN, max_body_bytes=1 << 20,
                     models={"m": {"versions": ["v1", "v2"], "policy": {"type": "weighted",
                                                                         "weights": {"v1": 1, "v2": 0}}}})
    yield s
    s.stop()


@pytest.fixture
def stub(served, pb):
    channel = grpc.insecure_channel(served.grpc_target)
    yield pb[1].GRPCInferenceServiceStub(channel)
    channel.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def raw_request(pb, model, *arrays, datatype="FP32", names=None, **fields):
    req = pb[0].ModelInferRequest(model_name=model, **fields)
    for i, a in enumerate(arrays):
        req.inputs.add(name=(names or [f"x{i}"])[i], datatype=datatype, shape=list(a.shape))
        req.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
    return req


def output(resp, i, dtype):
    o = resp.outputs[i]
    return np.frombuffer(resp.raw_output_contents[i], dtype=dtype).reshape(list(o.shape))


def code_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_health_and_metadata(served, stub, pb):
    m = pb[0]
    assert stub.ServerLive(m.ServerLiveRequest()).live
    assert stub.ServerReady(m.ServerReadyRequest()).ready
    assert stub.ModelReady(m.ModelReadyRequest(name="m")).ready
    assert stub.ModelReady(m.ModelReadyRequest(name="m", version="production")).ready
    meta = stub.ServerMetadata(m.ServerMetadataRequest())
    assert meta.name == "lepton" and meta.version == lepton.__version__
    assert "binary_tensor_data" in meta.extensions and "model_repository" in meta.extensions
    mm = stub.ModelMetadata(m.ModelMetadataRequest(name="m"))
    assert mm.name == "m" and list(mm.versions) == ["v1", "v2"] and mm.platform == "pytorch_torchscript"
    assert [(t.name, t.datatype, list(t.shape)) for t in mm.inputs] == [("x", "FP32", [-1, 4])]
    assert [t.datatype for t in mm.outputs] == ["FP32"]
    assert list(stub.ModelMetadata(m.ModelMetadataRequest(name="m", version="v2")).versions) == ["v2"]
    assert code_of(lambda: stub.ModelReady(m.ModelReadyRequest(name="nope")))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.ModelMetadata(m.ModelMetadataRequest(name="m/../x")))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.ModelMetadata(m.ModelMetadataRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_infer_with_raw_contents_routes_by_policy_or_version(stub, pb):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    resp = stub.ModelInfer(raw_request(pb, "m", x, names=["x"], id="req-1"))
    assert resp.model_name == "m" and resp.model_version == "v1" and resp.id == "req-1"
    assert np.array_equal(output(resp, 0, np.float32), x + 1)
    assert resp.outputs[0].datatype == "FP32" and list(resp.outputs[0].shape) == [2, 4]
    assert resp.parameters["lepton_versions"].string_param == "v1"
    assert resp.parameters["lepton_latency_ms"].double_param >= 0
    pinned = stub.ModelInfer(raw_request(pb, "m", x, names=["x"], model_version="v2"))
    assert pinned.model_version == "v2" and np.array_equal(output(pinned, 0, np.float32), x + 2)
    # Without an id, the response carries lepton's request id.
    assert stub.ModelInfer(raw_request(pb, "m", x, names=["x"])).id


def test_infer_with_typed_contents_and_requested_outputs(stub, pb):
    req = pb[0].ModelInferRequest(model_name="pair")
    for name in ("a", "b"):
        t = req.inputs.add(name=name, datatype="FP32", shape=[1, 2])
        t.contents.fp32_contents.extend([2.0, 3.0])
    req.outputs.add(name="output_1")
    resp = stub.ModelInfer(req)
    assert [o.name for o in resp.outputs] == ["output_1"] and resp.outputs[0].datatype == "INT64"
    assert output(resp, 0, np.int64).tolist() == [[4, 9]]


@pytest.mark.parametrize("datatype,dtype,field", [
    ("BOOL", np.bool_, "bool_contents"), ("UINT8", np.uint8, "uint_contents"), ("INT8", np.int8, "int_contents"),
    ("INT16", np.int16, "int_contents"), ("INT32", np.int32, "int_contents"), ("INT64", np.int64, "int64_contents"),
    ("FP16", np.float16, None), ("BF16", None, None), ("FP32", np.float32, "fp32_contents"),
    ("FP64", np.float64, "fp64_contents"),
])
def test_every_datatype_both_ways(stub, pb, datatype, dtype, field):
    values = [0, 1, 1, 0] if datatype == "BOOL" else [1, -2, 3, 4] if datatype != "UINT8" else [1, 2, 3, 250]
    if datatype == "BF16":
        t = torch.tensor([values], dtype=torch.bfloat16)
        raw = t.view(torch.int16).numpy().tobytes()
    else:
        raw = np.array([values], dtype=dtype).tobytes()
    req = pb[0].ModelInferRequest(model_name="twice")
    req.inputs.add(name="x", datatype=datatype, shape=[1, 4])
    req.raw_input_contents.append(raw)
    resp = stub.ModelInfer(req)
    assert resp.outputs[0].datatype == ("INT64" if datatype == "BOOL" else datatype)
    if datatype == "BF16":
        got = torch.frombuffer(bytearray(resp.raw_output_contents[0]), dtype=torch.bfloat16).tolist()
        assert got == [2 * v for v in values]
    elif datatype != "BOOL":
        assert output(resp, 0, dtype).tolist() == (np.array([values], dtype=dtype) * 2).tolist()
    if field:  # the same through the datatype's contents field
        typed = pb[0].ModelInferRequest(model_name="twice")
        t = typed.inputs.add(name="x", datatype=datatype, shape=[1, 4])
        getattr(t.contents, field).extend([bool(v) for v in values] if datatype == "BOOL" else values)
        assert stub.ModelInfer(typed).raw_output_contents[0] == resp.raw_output_contents[0]


def bad(pb, kind):
    m = pb[0]
    x = np.zeros((1, 4), dtype=np.float32)
    req = raw_request(pb, "m", x, names=["x"])
    if kind == "raw_too_long":
        req.raw_input_contents[0] += b"\0\0\0\0"
    elif kind == "raw_too_short":
        req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
    elif kind == "raw_for_some_inputs":
        req.inputs.add(name="y", datatype="FP32", shape=[1])
    elif kind == "raw_and_contents":
        req.inputs[0].contents.fp32_contents.extend([0, 0, 0, 0])
    elif kind == "contents_in_wrong_field":
        req = m.ModelInferRequest(model_name="m")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.int_contents.extend([0, 0, 0, 0])
    elif kind == "contents_too_few":
        req = m.ModelInferRequest(model_name="m")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0, 0, 0])
    elif kind == "int8_out_of_range":
        req = m.ModelInferRequest(model_name="twice")
        req.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.extend([300])
    elif kind == "fp16_contents":
        req = m.ModelInferRequest(model_name="twice")
        req.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.extend([1])
    elif kind == "bool_not_0_or_1":
        req = m.ModelInferRequest(model_name="twice")
        req.inputs.add(name="x", datatype="BOOL", shape=[2])
        req.raw_input_contents.append(b"\x01\x07")
    elif kind == "unknown_datatype":
        req.inputs[0].datatype = "FP8"
    elif kind == "negative_shape":
        del req.inputs[0].shape[:]
        req.inputs[0].shape.extend([-1, 4])
    elif kind == "huge_shape":
        del req.inputs[0].shape[:]
        req.inputs[0].shape.extend([1 << 40, 1 << 40])
    elif kind == "too_many_dims":
        del req.inputs[0].shape[:]
        req.inputs[0].shape.extend([1] * 17)
    elif kind == "no_inputs":
        req = m.ModelInferRequest(model_name="m")
    elif kind == "no_model":
        req.model_name = ""
    elif kind == "wrong_input_name":
        req.inputs[0].name = "y"
    elif kind == "unknown_output":
        req.outputs.add(name="nope")
    elif kind == "shared_memory":
        req.outputs.add(name="output_0").parameters["shared_memory_region"].string_param = "r"
    elif kind == "bad_timeout":
        req.parameters["timeout"].string_param = "soon"
    elif kind == "bad_priority":
        req.parameters["priority"].int64_param = -1
    return req


@pytest.mark.parametrize("kind,match", [
    ("raw_too_long", "raw_input_contents has 20 bytes but shape [1,4] of FP32 takes 16"),
    ("raw_too_short", "has 15 bytes"),
    ("raw_for_some_inputs", "either every input has raw contents or none"),
    ("raw_and_contents", "both contents and raw_input_contents"),
    ("contents_in_wrong_field", "FP32 elements go in fp32_contents"),
    ("contents_too_few", "shape holds 4 elements but fp32_contents has 3"),
    ("int8_out_of_range", "300 is out of range"),
    ("fp16_contents", "FP16 elements travel only as raw_input_contents"),
    ("bool_not_0_or_1", "BOOL bytes must be 0 or 1"),
    ("unknown_datatype", "datatype 'FP8' is not supported"),
    ("negative_shape", "non-negative"),
    ("huge_shape", "larger than the request limit"),
    ("too_many_dims", "more than 16 dimensions"),
    ("no_inputs", "non-empty list"),
    ("no_model", "needs a model_name"),
    ("wrong_input_name", "x"),
    ("unknown_output", "no output named 'nope'"),
    ("shared_memory", "shared memory"),
    ("bad_timeout", "positive number of microseconds"),
    ("bad_priority", "non-negative integer"),
])
def test_bad_messages_get_invalid_argument_and_lose_nothing(stub, pb, kind, match):
    code, details = code_of(lambda: stub.ModelInfer(bad(pb, kind)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and match in details, details
    x = np.zeros((1, 4), dtype=np.float32)
    assert np.array_equal(output(stub.ModelInfer(raw_request(pb, "m", x, names=["x"])), 0, np.float32), x + 1)


def test_unknown_model_and_version(stub, pb):
    x = np.zeros((1, 4), dtype=np.float32)
    assert code_of(lambda: stub.ModelInfer(raw_request(pb, "nope", x)))[0] == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: stub.ModelInfer(raw_request(pb, "m", x, names=["x"], model_version="v9")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_messages_past_the_limit_and_compressed_messages_are_refused(served, stub, pb):
    big = np.zeros((1, 300_000), dtype=np.float32)  # 1.2 MB against a 1 MiB limit
    code, details = code_of(lambda: stub.ModelInfer(raw_request(pb, "twice", big)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    # gRPC would inflate a compressed message whole before checking its size: a few hundred
    # kilobytes of gzip that inflate to 64 MB are refused before they are read, as is any
    # compressed call, and the server keeps serving.
    bomb = raw_request(pb, "twice", np.zeros((1, 16 << 20), dtype=np.float32))
    assert len(gzip.compress(bomb.SerializeToString())) < 300_000
    for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        code, details = code_of(lambda: stub.ModelInfer(bomb, compression=algorithm))
        assert code == grpc.StatusCode.UNIMPLEMENTED and "disabled" in details, details
    x = np.ones((100, 4), dtype=np.float32)
    code, _ = code_of(lambda: stub.ModelInfer(raw_request(pb, "m", x, names=["x"]), compression=grpc.Compression.Gzip))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    # gRPC logs each refusal; the event log takes at most one such line a second.
    start = time.monotonic()
    for _ in range(50):
        code_of(lambda: stub.ServerLive(pb[0].ServerLiveRequest(), compression=grpc.Compression.Gzip))
    events = served.request("GET", "/v2/lepton/events", headers={"Authorization": f"Bearer {TOKEN}"})[1]
    assert len([e for e in events if e["kind"] == "grpc"]) <= 3 + (time.monotonic() - start)
    resp = stub.ModelInfer(raw_request(pb, "m", x, names=["x"]))
    assert np.array_equal(output(resp, 0, np.float32), x + 1)


def test_garbage_bytes_are_refused_and_the_server_keeps_serving(served, pb):
    channel = grpc.insecure_channel(served.grpc_target)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    rng = np.random.default_rng(7)
    for n in (1, 7, 100, 5000):
        with pytest.raises(grpc.RpcError) as e:
            call(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    unknown = channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")
    with pytest.raises(grpc.RpcError) as e:
        unknown(b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    stub = pb[1].GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb[0].ServerLiveRequest()).live
    channel.close()


def test_parameters_key_priority_and_deadline(stub, pb, served):
    x = np.zeros((1, 4), dtype=np.float32)
    req = raw_request(pb, "m", x, names=["x"])
    req.parameters["key"].string_param = "user-7"
    req.parameters["priority"].uint64_param = 1
    req.parameters["timeout"].int64_param = 5_000_000
    assert stub.ModelInfer(req).model_version == "v1"
    # A call's deadline is the request's deadline: a slow forward is cut off.
    slow = raw_request(pb, "spin", np.full((1, 1), 400.0, dtype=np.float32), names=["x"])
    code, details = code_of(lambda: stub.ModelInfer(slow, timeout=0.05))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
    stats = served.request("GET", "/v2/lepton/models/m/stats?full=1", headers={"Authorization": f"Bearer {TOKEN}"})
    assert stats[0] == 200


def test_repository_calls_need_the_token(stub, pb):
    m = pb[0]
    code, _ = code_of(lambda: stub.RepositoryIndex(m.RepositoryIndexRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: stub.RepositoryIndex(m.RepositoryIndexRequest(),
                                                   metadata=(("authorization", "Bearer wrong"),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    index = stub.RepositoryIndex(m.RepositoryIndexRequest(ready=True), metadata=AUTH)
    assert {(x.name, x.version, x.state) for x in index.models} >= {("m", "v1", "READY"), ("m", "v2", "READY"),
                                                                   ("twice", "t1", "READY")}
    code, details = code_of(lambda: stub.RepositoryIndex(m.RepositoryIndexRequest(repository_name="other"),
                                                         metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one repository" in details


def test_repository_unload_and_load(stub, pb):
    m = pb[0]
    stub.RepositoryModelUnload(m.RepositoryModelUnloadRequest(model_name="twice"), metadata=AUTH)
    assert not stub.ModelReady(m.ModelReadyRequest(name="twice")).ready  # known, not served
    code, _ = code_of(lambda: stub.ModelMetadata(m.ModelMetadataRequest(name="twice")))
    assert code == grpc.StatusCode.NOT_FOUND
    index = stub.RepositoryIndex(m.RepositoryIndexRequest(), metadata=AUTH)
    assert [x.state for x in index.models if x.name == "twice"] == ["UNAVAILABLE"]
    load = m.RepositoryModelLoadRequest(model_name="twice")
    load.parameters["versions"].string_param = "t1"
    stub.RepositoryModelLoad(load, metadata=AUTH)
    assert stub.ModelReady(m.ModelReadyRequest(name="twice")).ready
    # Loading what is served, with nothing to change, is fine; another configuration conflicts.
    stub.RepositoryModelLoad(m.RepositoryModelLoadRequest(model_name="twice"), metadata=AUTH)
    policy = m.RepositoryModelLoadRequest(model_name="m")
    policy.parameters["policy"].string_param = '{"type": "weighted", "weights": {"v1": 1}}'
    assert code_of(lambda: stub.RepositoryModelLoad(policy, metadata=AUTH))[0] == grpc.StatusCode.FAILED_PRECONDITION
    odd = m.RepositoryModelLoadRequest(model_name="twice")
    odd.parameters["config"].string_param = "{}"
    code, details = code_of(lambda: stub.RepositoryModelLoad(odd, metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config" in details
    files = m.RepositoryModelLoadRequest(model_name="twice")
    files.parameters["file:1/model.pt"].bytes_param = b"\0"
    code, details = code_of(lambda: stub.RepositoryModelLoad(files, metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "registry" in details
    code, _ = code_of(lambda: stub.RepositoryModelUnload(m.RepositoryModelUnloadRequest(model_name="twice")))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_token_for_inference_and_metrics(registry, pb):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    with lepton.serve(registry, port=0, grpc_port=0, token=TOKEN, token_for_inference=True) as s:
        channel = grpc.insecure_channel(s.grpc_target)
        stub = pb[1].GRPCInferenceServiceStub(channel)
        x = np.zeros((1, 4), dtype=np.float32)
        code, _ = code_of(lambda: stub.ModelInfer(raw_request(pb, "m", x, names=["x"])))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        for _ in range(3):
            stub.ModelInfer(raw_request(pb, "m", x, names=["x"]), metadata=AUTH)
        channel.close()
        text = requests.get(s.url + "/metrics").text
        assert 'lepton_grpc_requests_total{method="ModelInfer",code="OK"} 3' in text
        assert 'lepton_grpc_requests_total{method="ModelInfer",code="UNAUTHENTICATED"} 1' in text
        assert 'lepton_grpc_request_duration_seconds_count{method="ModelInfer"} 4' in text
        # The deployment counts them like any request.
        assert 'lepton_requests_total{model="m",version="v1",alias="",policy="fixed"} 3' in text


def test_no_grpc_unless_asked(registry):
    registry.register("m", AddN(1), version="v1")
    with lepton.serve(registry, port=0) as s:
        assert s.grpc_port is None and s.grpc_target is None
    with pytest.raises(lepton.InvalidArgument, match="grpc_port"):
        lepton.serve(registry, port=0, grpc_port=70000)


def test_lepton_serve_grpc_port(registry, python_env, pb):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    with lepton_serve(["--registry", registry.location, "--port", "0", "--grpc-port", "0"], python_env) as (proc, _):
        target = proc.log.wait_for(r"gRPC \(inference.GRPCInferenceService\) on (\S+)").group(1)
        channel = grpc.insecure_channel(target)
        stub = pb[1].GRPCInferenceServiceStub(channel)
        x = np.ones((1, 4), dtype=np.float32)
        assert np.array_equal(output(stub.ModelInfer(raw_request(pb, "m", x, names=["x"])), 0, np.float32), x + 1)
        channel.close()


def test_model_statistics_as_over_http(stub, pb, served):
    m = pb[0]
    x = np.zeros((1, 4), dtype=np.float32)
    for _ in range(3):
        stub.ModelInfer(raw_request(pb, "m", x, names=["x"]))
    code, _ = code_of(lambda: stub.ModelStatistics(m.ModelStatisticsRequest(name="m")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    stats = stub.ModelStatistics(m.ModelStatisticsRequest(name="m"), metadata=AUTH).model_stats
    assert [(s.name, s.version) for s in stats] == [("m", "v1"), ("m", "v2")]
    v1 = stats[0]
    assert v1.inference_count == 3 and v1.inference_stats.success.count == 3 and v1.inference_stats.success.ns > 0
    assert v1.last_inference > 0 and stats[1].inference_count == 0
    http = served.request("GET", "/v2/models/m/versions/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})[1]
    assert http["model_stats"][0]["inference_count"] == 3
    one = stub.ModelStatistics(m.ModelStatisticsRequest(name="m", version="v1"), metadata=AUTH).model_stats
    assert [s.version for s in one] == ["v1"]
    every = stub.ModelStatistics(m.ModelStatisticsRequest(), metadata=AUTH).model_stats
    assert {s.name for s in every} == {"m", "pair", "shout", "spin", "twice"}
    code, _ = code_of(lambda: stub.ModelStatistics(m.ModelStatisticsRequest(name="m", version="v9"), metadata=AUTH))
    assert code == grpc.StatusCode.NOT_FOUND


def test_the_standard_health_service_answers_for_probes(served):
    channel = grpc.insecure_channel(served.grpc_target)
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    assert check(b"") == b"\x08\x01"  # HealthCheckResponse{status: SERVING}
    with pytest.raises(grpc.RpcError) as e:
        check(b"\x0a\x05other")  # a service name it does not know
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_bytes_as_bytes_contents_and_as_raw_contents(stub, pb):
    req = pb[0].ModelInferRequest(model_name="shout")
    req.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", "\u00e9".encode()])
    resp = stub.ModelInfer(req)
    assert [o.datatype for o in resp.outputs] == ["INT64", "BYTES"]
    assert output(resp, 0, np.int64).tolist() == [2, 2]
    # Outputs go back as raw contents: each element a 4-byte little-endian length, then its bytes.
    raw = resp.raw_output_contents[1]
    assert raw == struct.pack("<I", 2) + b"AB" + struct.pack("<I", 2) + "\u00e9".encode()
    # Raw contents in, as Triton's client sends them; a length that runs past the end is refused.
    req = pb[0].ModelInferRequest(model_name="shout")
    req.inputs.add(name="text", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(struct.pack("<I", 3) + b"xyz")
    assert stub.ModelInfer(req).raw_output_contents[1] == struct.pack("<I", 3) + b"XYZ"
    req.raw_input_contents[0] = struct.pack("<I", 9) + b"xyz"
    code, details = code_of(lambda: stub.ModelInfer(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "says 9 bytes but 3 are left" in details
    # BYTES elements belong in bytes_contents.
    req = pb[0].ModelInferRequest(model_name="shout")
    req.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.int_contents.append(1)
    code, details = code_of(lambda: stub.ModelInfer(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes_contents" in details
