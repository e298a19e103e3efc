"""MobileNet v1 modules, layers and the registry of names."""

from .mobilenet_v1 import MOBILENET_V1_CONV_DEFS, MobileNetV1, scaled_depth, slim_name_map
from .registry import create_model, get_spec, list_models, mobilenet_v1

__all__ = ["MOBILENET_V1_CONV_DEFS", "MobileNetV1", "create_model", "get_spec", "list_models", "mobilenet_v1", "scaled_depth", "slim_name_map"]
