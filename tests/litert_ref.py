"""LiteRT as the reference: run Google's .tflite files on our preprocessed tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


class LiteRT:
    """One interpreter; ``__call__`` takes a 3xHxW float tensor in [-1, 1] and returns the output row."""

    def __init__(self, path: Path) -> None:
        litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) not installed")
        self.it = litert.Interpreter(model_path=str(path), num_threads=2)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        x = np.asarray(chw, dtype=np.float32).transpose(1, 2, 0)[None]
        if self.inp["dtype"] != np.float32:
            # The same float tensor, quantized with the file's own input scale/zero point.
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.inp["dtype"])
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"]).reshape(-1).astype(np.float32)
        if self.out["dtype"] != np.float32:
            scale, zero = self.out["quantization"]
            y = (y - zero) * scale
        return y
