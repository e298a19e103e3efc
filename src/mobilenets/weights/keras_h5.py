"""Read Keras Applications ``MobileNet`` weights from HDF5 (``.h5``), with h5py.

Keras names the layers ``conv1``, ``conv1_bn``, ``conv_dw_<i>``, ``conv_dw_<i>_bn``,
``conv_pw_<i>``, ``conv_pw_<i>_bn`` (i = 1..13) and ``conv_preds`` (a 1x1 conv with bias,
1000 classes, no background class). Three file layouts are read:

- Keras 2 ``save_weights`` / ``save`` (the official ``mobilenet_<a>_<res>_tf.h5``): one
  group per layer at the root or under ``model_weights/``, variables ``<layer>/kernel:0``
  (the datasets in the layer's group);
- Keras 3 ``model.save('x.h5')``: the same, without the ``:0`` suffixes;
- Keras 3 ``save_weights('x.weights.h5')``: ``layers/<class>_<n>/vars/<k>``, layers named by
  class and creation order (``conv2d``, ``conv2d_1``, ...) and variables by position, read in
  the order Keras creates them (kernel, bias; gamma, beta, moving mean, moving variance).

Keras BatchNorm has gamma (kept) and the same epsilon (1e-3) as TF-Slim. Keras scales
depths as ``int(d * alpha)`` with no minimum, which equals our rule for every alpha >= 0.25.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..models.mobilenet_v1 import MobileNetV1
from . import LoadedWeights, infer_alpha

_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
_OURS_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _keras_name(scope: str) -> str:
    """Keras layer name of one of our ``features`` scopes: Conv2d_0 -> conv1, Conv2d_3_pointwise -> conv_pw_3."""
    if scope == "Conv2d_0":
        return "conv1"
    _, i, kind = scope.split("_")
    return f"conv_{'dw' if kind == 'depthwise' else 'pw'}_{i}"


def _array(ds, limit: int) -> np.ndarray:
    """A numeric dataset's values, refused when its shape claims more than ``limit`` bytes.

    A damaged header can give a tiny file a dataset of gigabytes (HDF5 fills the missing
    chunks with zeros); real weights take at most the file's size, a few times that if a
    tool compressed them.
    """
    if not hasattr(ds, "dtype") or ds.dtype.kind not in "fiub":
        raise ValueError(f"{ds.name} is not a numeric array")
    claimed = int(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize
    if claimed > limit:
        raise ValueError(f"dataset {ds.name} claims {claimed} bytes, far more than the file can hold")
    return np.asarray(ds)


def _named_layers(root, limit: int) -> dict[str, dict[str, np.ndarray]]:
    """Keras 2 / Keras 3 legacy layout: ``{layer: {variable: value}}``, one group per layer.

    Names come from the groups' links, not from the ``layer_names`` / ``weight_names``
    attributes: those are variable-length strings, and HDF5 allocates whatever length a
    damaged one claims (gigabytes) before it finds the damage. Only hard links are followed
    (`visititems` follows no others).
    """
    import h5py

    out = {}
    for layer in root:
        # hard links only: a soft or external link in a downloaded file could point anywhere
        if not isinstance(root.get(layer, getlink=True), h5py.HardLink):
            continue
        group = root[layer]
        if not isinstance(group, h5py.Group):
            continue
        found: dict[str, np.ndarray] = {}

        def keep(name: str, obj, found: dict = found) -> None:
            if hasattr(obj, "dtype"):
                # 'conv1_bn/gamma:0' (Keras 2) or 'conv1_bn/gamma' (Keras 3); depthwise: 'depthwise_kernel' or 'kernel'
                found[name.rsplit("/", 1)[-1].split(":")[0].replace("depthwise_", "")] = _array(obj, limit)

        group.visititems(keep)
        out[layer] = found
    return out


def _native_layers(layers, limit: int) -> dict[str, dict[str, np.ndarray]]:
    """Keras 3 ``.weights.h5``: recover the Keras names from class and creation order."""

    def by_class(cls: str) -> list[list[np.ndarray]]:
        found = [(int(m.group(1) or 0), name) for name in layers if (m := re.fullmatch(rf"{cls}(?:_(\d+))?", name))]
        return [[_array(v, limit) for _, v in sorted(layers[n]["vars"].items(), key=lambda kv: int(kv[0]))]
                for _, n in sorted(found)]  # fmt: skip

    convs, dws, bns = by_class("conv2d"), by_class("depthwise_conv2d"), by_class("batch_normalization")
    if len(dws) != 13 or len(bns) != 27 or len(convs) not in (14, 15):
        raise ValueError(f"{len(convs)} conv, {len(dws)} depthwise and {len(bns)} batch-norm layers, not MobileNet's")
    out: dict[str, dict[str, np.ndarray]] = {"conv1": {"kernel": convs[0][0]}}
    bn_names = ["conv1_bn"] + [f"conv_{k}_{i}_bn" for i in range(1, 14) for k in ("dw", "pw")]
    for i in range(1, 14):
        out[f"conv_dw_{i}"] = {"kernel": dws[i - 1][0]}
        out[f"conv_pw_{i}"] = {"kernel": convs[i][0]}
    for name, values in zip(bn_names, bns):
        if len(values) != 4:
            raise ValueError(f"batch norm {name} has {len(values)} variables, expected gamma, beta, mean, variance")
        out[name] = dict(zip(_BN_VARS, values))
    if len(convs) == 15:
        out["conv_preds"] = dict(zip(("kernel", "bias"), convs[14]))
    return out


def _resolution(attrs) -> int | None:
    """The square input side recorded in a full-model save's ``model_config``, if any."""
    try:
        config = json.loads(attrs["model_config"])["config"]
        first = config["layers"][0]["config"]
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        return int(shape[1]) if shape[1] and shape[1] == shape[2] else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def read_keras_h5(path: str | Path) -> LoadedWeights:
    """Weights of a Keras Applications MobileNet ``.h5`` file as our state dict (see module docstring)."""
    path = Path(path)
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path}: reading Keras .h5 weights needs h5py: pip install 'mobilenets[keras]'") from None
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        limit = 4 * path.stat().st_size + (1 << 20)  # bytes one dataset may claim
        with h5py.File(path, "r") as f:
            if "layers" in f and "vars" in f:
                layers, resolution = _native_layers(f["layers"], limit), None
            else:
                root = f.get("model_weights", f)
                if "layer_names" not in root.attrs:  # its presence only: the value is not read
                    raise WeightsError(f"{path}: HDF5 file holds no Keras weights (no layer_names attribute)")
                layers, resolution = _named_layers(root, limit), _resolution(f.attrs)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
        # h5py reports damaged files with any of these, depending on which structure broke
        raise WeightsError(f"{path}: unreadable Keras .h5 file ({type(e).__name__}: {e})") from None
    if "conv_pw_13" not in layers:
        raise WeightsError(f"{path}: not a Keras MobileNet (v1) file (no conv_pw_13 layer)")

    with torch.device("meta"):  # only the layer scopes are needed
        scopes = [name for name, _ in MobileNetV1(num_classes=0).features.named_children()]
    state: dict[str, torch.Tensor] = {}
    for scope in scopes:
        conv, bn = _keras_name(scope), _keras_name(scope) + "_bn"
        try:
            kernel, stats = layers[conv]["kernel"], layers[bn]
            bn_values = {v: stats[v] for v in _BN_VARS}
        except KeyError as e:
            raise WeightsError(f"{path}: Keras MobileNet layer {conv}/{bn} lacks {e}") from None
        if kernel.ndim != 4 or kernel.dtype.kind != "f":
            raise WeightsError(f"{path}: Keras layer {conv} kernel has shape {kernel.shape} ({kernel.dtype}), "
                               "expected a 4-D float kernel")  # fmt: skip
        if scope.endswith("_depthwise"):  # (kh, kw, C, M) -> (C*M, 1, kh, kw)
            weight = kernel.transpose(2, 3, 0, 1).reshape(-1, 1, *kernel.shape[:2])
        else:  # HWIO -> OIHW
            weight = kernel.transpose(3, 2, 0, 1)
        state[f"features.{scope}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
        for var, value in bn_values.items():
            if value.shape != (weight.shape[0],) or value.dtype.kind != "f":
                raise WeightsError(f"{path}: Keras layer {bn} {var} has shape {value.shape} ({value.dtype}), "
                                   f"expected ({weight.shape[0]},) float")  # fmt: skip
            state[f"features.{scope}.bn.{_OURS_BN[var]}"] = torch.from_numpy(np.asarray(value, np.float32))
    num_classes = 0
    if "conv_preds" in layers:
        head = layers["conv_preds"]
        if set(head) != {"kernel", "bias"}:
            raise WeightsError(f"{path}: conv_preds should have a kernel and a bias, has {sorted(head)}")
        k, b = head["kernel"], head["bias"]
        if k.ndim != 4 or b.ndim != 1 or k.shape[3] != b.shape[0] or k.dtype.kind != "f" or b.dtype.kind != "f":
            raise WeightsError(f"{path}: conv_preds kernel {k.shape} and bias {b.shape} do not fit together")
        state["classifier.weight"] = torch.from_numpy(
            np.ascontiguousarray(head["kernel"].transpose(3, 2, 0, 1), np.float32)
        )
        state["classifier.bias"] = torch.from_numpy(np.asarray(head["bias"], np.float32))
        num_classes = int(head["bias"].shape[0])
    alpha = infer_alpha(state, path)
    return LoadedWeights(state, alpha, num_classes, resolution, str(path), "keras-h5", None, {})
