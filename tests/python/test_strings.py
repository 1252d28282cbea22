"""String tensors (the protocol's BYTES): TorchScript models that take and return List[str], from
Python and over HTTP as JSON strings and as length-prefixed binary data."""
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

import numpy as np
import pytest
import requests
import torch

import lepton
from conftest import wait_for


class Shout(torch.nn.Module):
    """Each string's length, and the string in capitals."""

    def forward(self, text: List[str]) -> Tuple[torch.Tensor, List[str]]:
        lengths = torch.tensor([[len(t)] for t in text], dtype=torch.int64)
        return lengths, [t.upper() + "!" for t in text]


class Scale(torch.nn.Module):
    """A tensor and a string input: the tensor times the number of strings."""

    def forward(self, x: torch.Tensor, tags: List[str]) -> torch.Tensor:
        return x * float(len(tags))


class Echo(torch.nn.Module):
    def forward(self, text: List[str]) -> List[str]:
        return text


class Whisper(torch.nn.Module):
    def forward(self, text: List[str]) -> Tuple[torch.Tensor, List[str]]:
        lengths = torch.tensor([[len(t)] for t in text], dtype=torch.int64)
        return lengths, [t.lower() + "!" for t in text]


def bytes_data(*values: bytes) -> bytes:
    """BYTES elements as binary data: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def split_bytes(data: bytes) -> List[bytes]:
    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        out.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return out


def test_python_takes_and_returns_strings(registry):
    mv = registry.register("shout", Shout(), version="v1", example_inputs=["hi"])
    assert [(s.name, s.dtype, s.shape) for s in mv.signature.inputs] == [("text", "string", [-1])]
    assert [(s.dtype, s.shape) for s in mv.signature.outputs] == [("int64", [-1, 1]), ("string", [-1])]
    with lepton.Deployment(registry, "shout", versions=["v1"]) as d:
        lengths, shouted = d.predict(["ab", "cde"]).output
        assert lengths.tolist() == [[2], [3]] and shouted == ["AB!", "CDE!"]
        # numpy in, numpy out: strings as an array of objects.
        lengths, shouted = d.predict(np.array(["x", "yz"])).output
        assert isinstance(lengths, np.ndarray) and shouted.dtype == object and shouted.tolist() == ["X!", "YZ!"]
        assert d.predict([b"bytes"]).output[1] == ["BYTES!"]
        with pytest.raises(lepton.InvalidArgument, match=r"takes strings \(List\[str\]\), got a tensor of dtype float32"):
            d.predict(torch.zeros(2, 1))
        with pytest.raises(lepton.InvalidArgument, match="str or bytes"):
            d.predict(np.array(["a", 3], dtype=object))


def test_a_model_without_signature_is_checked_by_its_forward(registry):
    registry.register("scale", Scale(), version="v1")  # no signature: the forward's types decide
    with lepton.Deployment(registry, "scale", versions=["v1"]) as d:
        out = d.predict([torch.ones(2, 2), ["a", "b", "c"]]).output
        assert torch.equal(out, torch.full((2, 2), 3.0))
        with pytest.raises(lepton.InvalidArgument, match=r"takes strings \(List\[str\]\)"):
            d.predict([torch.ones(2, 2), torch.ones(3)])
        with pytest.raises(lepton.InvalidArgument, match="is a string tensor, expected a tensor"):
            d.predict([["a"], ["b"]])


def test_string_requests_are_never_batched_together(registry):
    registry.register("shout", Shout(), version="v1", example_inputs=["hi"])
    with lepton.Deployment(registry, "shout", versions=["v1"], threads=1, max_batch_size=8,
                           max_queue_delay_ms=20) as d:
        def ask(i):
            words = [f"w{i}"] * (1 + i % 3)
            return words, d.predict(words).output

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(ask, range(16)))
        for words, (lengths, shouted) in results:
            assert shouted == [w.upper() + "!" for w in words] and lengths.shape == (len(words), 1)
        served = d.status()["versions"][0]
        assert served["batches"] == served["requests"] == 16
        assert served["batched_rows"] == sum(len(words) for words, _ in results)


def test_a_shadow_compares_strings_and_an_ensemble_refuses_them(registry):
    registry.register("shout", Shout(), version="v1", example_inputs=["hi"])
    registry.register("shout", Whisper(), version="v2", example_inputs=["hi"])
    with lepton.Deployment(registry, "shout", versions=["v1", "v2"],
                           policy=lepton.Shadow("v1", mirrors=["v2"])) as d:
        for _ in range(4):
            assert d.predict(["Ab", "ab"]).output[1] == ["AB!", "AB!"]
        wait_for(lambda: [s for s in d.shadow_report() if s["compared"] + s["failed"] == 4], timeout=30)
        # Element by element: both lengths agree and both strings differ ("AB!" and "ab!"), each
        # counting 1: a mean difference of 2 / 4.
        stats = d.shadow_report()[0]
        assert stats["compared"] == 4 and stats["failed"] == 0
        assert stats["max_abs_diff"] == 1.0 and stats["mean_abs_diff"] == pytest.approx(0.5)
    with lepton.Deployment(registry, "shout", versions=["v1", "v2"], policy=lepton.Ensemble()) as d:
        with pytest.raises(lepton.ModelError, match="returned strings; an ensemble combines tensors only"):
            d.predict(["a"])


@pytest.fixture
def server(registry):
    registry.register("shout", Shout(), version="v1", example_inputs=["hi"])
    registry.register("echo", Echo(), version="v1")
    registry.register("scale", Scale(), version="v1")
    s = lepton.serve(registry, port=0, max_body_bytes=1 << 20)
    yield s
    s.stop()


def test_metadata_and_configuration_say_bytes(server):
    meta = requests.get(server.url + "/v2/models/shout").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["datatype"] for o in meta["outputs"]] == ["INT64", "BYTES"]
    config = requests.get(server.url + "/v2/models/shout/config").json()
    assert config["input"][0]["data_type"] == "TYPE_STRING"


def test_json_strings_in_and_out(server):
    r = requests.post(server.url + "/v2/models/shout/infer",
                      json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", "x"]}]})
    assert r.status_code == 200, r.text
    lengths, shouted = r.json()["outputs"]
    assert lengths["datatype"] == "INT64" and lengths["data"] == [6, 1]  # UTF-8 bytes
    assert shouted == {"name": "output_1", "datatype": "BYTES", "shape": [2], "data": ["HéLLO!", "X!"]}
    # Nested data for a two-dimensional string tensor, with a tensor beside it.
    r = requests.post(server.url + "/v2/models/scale/infer", json={"inputs": [
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
        {"name": "tags", "shape": [2, 2], "datatype": "BYTES", "data": [["a", "b"], ["c", "d"]]}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [4.0, 8.0]


def test_binary_strings_in_and_out(server):
    values = [b"alpha", b"", b"\xce\xb2eta"]
    data = bytes_data(*values)
    head = json.dumps({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(data)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = requests.post(server.url + "/v2/models/shout/infer", data=head + data,
                      headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    meta, rest = json.loads(r.content[:n]), r.content[n:]
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert np.frombuffer(rest[:sizes[0]], dtype=np.int64).tolist() == [5, 0, 5]
    assert split_bytes(rest[sizes[0]:]) == [b"ALPHA!", b"!", "\u03b2ETA!".encode()]


@pytest.mark.parametrize("data,match", [
    (struct.pack("<I", 10) + b"short", "says 10 bytes but 5 are left"),
    (bytes_data(b"a") + b"\x01", "ends before element 1"),
    (bytes_data(b"a", b"b", b"c"), "follow the 2 elements"),
    (b"\x01\x00", "ends before element 0"),
])
def test_binary_strings_that_lie_are_refused(server, data, match):
    head = json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(data)}}]}).encode()
    r = requests.post(server.url + "/v2/models/shout/infer", data=head + data,
                      headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and match in r.json()["error"], r.text


def test_bytes_that_are_not_text_go_back_as_binary_only(server):
    raw = b"\xff\xfe\x00bin"
    data = bytes_data(raw)
    head = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}}]}
    for binary in (False, True):
        head["parameters"] = {"binary_data_output": binary}
        h = json.dumps(head).encode()
        r = requests.post(server.url + "/v2/models/echo/infer", data=h + data,
                          headers={"Inference-Header-Content-Length": str(len(h))})
        if not binary:
            assert r.status_code == 400 and "not UTF-8" in r.json()["error"] and "binary_data" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            n = int(r.headers["Inference-Header-Content-Length"])
            assert split_bytes(r.content[n:]) == [raw]


def test_wrong_kinds_of_data_are_refused(server):
    def infer(model, inputs):
        return requests.post(server.url + f"/v2/models/{model}/infer", json={"inputs": inputs})

    r = infer("shout", [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}])
    assert r.status_code == 400 and "expected a string, got 1" in r.json()["error"]
    r = infer("shout", [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1]}])
    assert r.status_code == 400 and "takes strings" in r.json()["error"]
    r = infer("scale", [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["1"]},
                        {"name": "tags", "shape": [1], "datatype": "BYTES", "data": ["a"]}])
    assert r.status_code == 400 and "string tensor, expected a tensor" in r.json()["error"]
    r = infer("shout", [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}])
    assert r.status_code == 400 and "holds 3 elements but data has 2" in r.json()["error"]
