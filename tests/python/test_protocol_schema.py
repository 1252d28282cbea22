"""lepton's answers against the Open Inference Protocol's REST schemas (the field names, types and
required fields of its published definition, written out here as JSON Schema), and KServe's rule
that a parameter's value is a string, a number or a boolean."""
import math
from typing import List

import jsonschema
import numpy as np
import pytest
import requests
import torch

import lepton
from conftest import AddN

PARAMETERS = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
TENSOR_DATA = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/tensor_data"}, {"type": "number"},
                                                    {"type": "string"}, {"type": "boolean"}]}}
METADATA_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                  "shape": {"type": "array", "items": {"type": "integer"}}}}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
SCHEMAS = {
    "server_metadata": {"type": "object", "required": ["name", "version", "extensions"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "extensions": {"type": "array", "items": {"type": "string"}}}},
    "model_metadata": {"type": "object", "required": ["name", "platform"],
                       "properties": {"name": {"type": "string"}, "platform": {"type": "string"},
                                      "versions": {"type": "array", "items": {"type": "string"}},
                                      "inputs": {"type": "array", "items": METADATA_TENSOR},
                                      "outputs": {"type": "array", "items": METADATA_TENSOR},
                                      "parameters": PARAMETERS}},
    "inference_response": {
        "type": "object", "required": ["model_name", "outputs"],
        "$defs": {"tensor_data": TENSOR_DATA},
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                       "id": {"type": "string"}, "parameters": PARAMETERS,
                       "outputs": {"type": "array", "items": {
                           "type": "object", "required": ["name", "shape", "datatype", "data"],
                           "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                          "shape": {"type": "array", "items": {"type": "integer"}},
                                          "parameters": PARAMETERS, "data": {"$ref": "#/$defs/tensor_data"}}}}}},
    "error": ERROR,
}


def valid(name, body):
    jsonschema.validate(body, SCHEMAS[name])
    return body


class Mixed(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 2, x.to(torch.int64), x > 0, x.to(torch.float16), torch.log(x)


class Words(torch.nn.Module):
    def forward(self, text: List[str]) -> List[str]:
        return [t + "?" for t in text]


@pytest.fixture
def server(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4))
    registry.register("mixed", Mixed(), version="x1", example_inputs=torch.ones(1, 4))
    registry.register("words", Words(), version="w1", example_inputs=["a"])
    s = lepton.serve(registry, port=0, token="t", models={"m": {"versions": ["v1", "v2"]}})
    yield s
    s.stop()


def test_metadata_validates(server):
    body = valid("server_metadata", requests.get(server.url + "/v2").json())
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(body["extensions"])
    for path in ("/v2/models/m", "/v2/models/m/versions/v2", "/v2/models/mixed"):
        valid("model_metadata", requests.get(server.url + path).json())
    valid("error", requests.get(server.url + "/v2/models/nope").json())


def test_inference_responses_validate_for_every_datatype_and_non_finite_values(server):
    x = [[0.0, -1.0, 2.0, 3.5]]
    r = requests.post(server.url + "/v2/models/mixed/infer",
                      json={"id": "a", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]})
    body = valid("inference_response", r.json())
    outs = {o["name"]: o for o in body["outputs"]}
    assert [o["datatype"] for o in body["outputs"]] == ["FP32", "INT64", "BOOL", "FP16", "FP32"]
    logs = body["outputs"][4]["data"]
    assert logs[:2] == ["-Infinity", "NaN"] and math.isclose(logs[2], math.log(2), rel_tol=1e-6)
    # numpy reads the strings back as the values
    back = np.array(logs, dtype=np.float32)
    assert back[0] == -np.inf and np.isnan(back[1])
    assert outs  # every output has data
    # The same strings are read in requests.
    r = requests.post(server.url + "/v2/models/m/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                        "data": ["NaN", "Infinity", "-inf", 1]}]})
    data = valid("inference_response", r.json())["outputs"][0]["data"]
    assert data[0] == "NaN" and data[1] == "Infinity" and data[2] == "-Infinity" and data[3] == 2.0
    bad = requests.post(server.url + "/v2/models/m/infer",
                        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["one", 1, 1, 1]}]})
    assert bad.status_code == 400 and valid("error", bad.json())
    # BYTES: strings.
    valid("model_metadata", requests.get(server.url + "/v2/models/words").json())
    r = requests.post(server.url + "/v2/models/words/infer",
                      json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]})
    assert valid("inference_response", r.json())["outputs"][0]["data"] == ["a?", "b?"]


def test_error_answers_validate(server):
    for method, path, body in [("POST", "/v2/models/m/infer", "{"), ("POST", "/v2/models/m/infer", "{}"),
                               ("GET", "/v2/models/m/versions/v9", None), ("POST", "/v2/repository/index", "{}")]:
        r = requests.request(method, server.url + path, data=body)
        assert r.status_code >= 400
        valid("error", r.json())
