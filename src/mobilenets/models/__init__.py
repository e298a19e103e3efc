"""Architectures (MobileNet v1 as a data table), layers, the weights contract and the registry of names."""

from .cfg import OutputSpec, PretrainedCfg
from .mobilenet_v1 import MOBILENET_V1_CONV_DEFS, MobileNetV1, MobileNetV1Features, scaled_depth, slim_name_map
from .registry import get_spec, list_models, mobilenet_v1

__all__ = ["MOBILENET_V1_CONV_DEFS", "MobileNetV1", "MobileNetV1Features", "OutputSpec", "PretrainedCfg", "get_spec",
           "list_models", "mobilenet_v1", "scaled_depth", "slim_name_map"]
