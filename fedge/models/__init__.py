"""Model backends behind one interface: pure-numpy softmax regression and a small MLP."""

from fedge.models.base import Model
from fedge.models.numpy_models import MLP, LogisticRegression
from fedge.models.registry import build_model, model_from_spec, parse_model_name

__all__ = [
    "MLP",
    "LogisticRegression",
    "Model",
    "build_model",
    "model_from_spec",
    "parse_model_name",
]
