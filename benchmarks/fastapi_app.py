"""The baseline: a FastAPI app that serves a TorchScript model the way a user would write it,
with the same Open Inference Protocol request and response shapes as lepton. Run by
http_bench.py under uvicorn: MODEL_PATH=... uvicorn fastapi_app:app."""
import os
from typing import Any, Dict, List

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

torch.set_num_threads(1)
model = torch.jit.load(os.environ["MODEL_PATH"]).eval()
app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    data: List[Any]


class InferRequest(BaseModel):
    inputs: List[Tensor]
    id: str = ""


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest) -> Dict[str, Any]:
    if request.inputs[0].datatype != "FP32":
        raise HTTPException(400, "FP32 only")
    x = torch.tensor(request.inputs[0].data, dtype=torch.float32).reshape(request.inputs[0].shape)
    with torch.inference_mode():
        y = model(x)
    return {"model_name": name, "id": request.id,
            "outputs": [{"name": "output_0", "shape": list(y.shape), "datatype": "FP32",
                         "data": y.flatten().tolist()}]}


@app.get("/v2/health/ready")
def ready() -> Dict[str, bool]:
    return {"ready": True}
