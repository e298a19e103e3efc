"""mobilenets: Google's MobileNet v1 family in PyTorch, exact to TF-Slim.

    import mobilenets
    model = mobilenets.create_model("mobilenet_v1_0.75_192")
    model = mobilenets.mobilenet_v1(alpha=0.6, resolution=200)
"""

from .data.transforms import EvalTransform, PillowEvalTransform
from .errors import MobilenetsError
from .models import MobileNetV1, create_model, list_models, mobilenet_v1
from .profile import profile_model

__version__ = "0.1.0"

__all__ = ["EvalTransform", "MobileNetV1", "MobilenetsError", "PillowEvalTransform", "create_model", "list_models", "mobilenet_v1", "profile_model"]
