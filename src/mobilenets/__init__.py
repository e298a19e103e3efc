"""mobilenets: Google's MobileNets in PyTorch, exact to Google's files.

    import mobilenets
    model = mobilenets.create_model("mobilenet_v1_0.75_192", weights="imagenet")
    model = mobilenets.mobilenet_v1(alpha=0.6, resolution=200)
    predictor = mobilenets.load_predictor(weights="model.tflite")   # any backend, named outputs
"""

from .auto import load_predictor
from .builder import create_model
from .data.transforms import EvalTransform, PillowEvalTransform
from .errors import MobilenetsError
from .models import MobileNetV1, OutputSpec, PretrainedCfg, list_models, mobilenet_v1
from .profile import profile_model
from .version import __version__

__all__ = ["EvalTransform", "MobileNetV1", "MobilenetsError", "OutputSpec", "PillowEvalTransform", "PretrainedCfg",
           "__version__", "create_model", "list_models", "load_predictor", "mobilenet_v1", "profile_model"]
