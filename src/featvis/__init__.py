"""featvis: see what a unit, a channel or a class of a PyTorch vision model has learned.

Example:
    >>> import featvis
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> image = featvis.visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess)
"""

from . import (
    backprop_modifiers,
    fusion,
    grad_modifiers,
    input_modifiers,
    losses,
    metrics,
    params,
    prepared,
    regularizers,
    rng,
    targets,
    zoo,
)
from .atlas import atlas
from .attention import (
    input_gradients,
    integrated_gradients,
    occlusion,
    overlay,
    visualize_cam,
    visualize_cam_with_losses,
    visualize_guided_cam,
    visualize_saliency,
    visualize_saliency_with_losses,
)
from .dataset_examples import DatasetExamples, SkippedImagesWarning, dataset_examples
from .errors import (
    FeatvisError,
    FeatvisTypeError,
    FeatvisValueError,
    LayerNotFoundError,
    ModelError,
    NonFiniteError,
)
from .image import save_image, stitch_images
from .input_modifiers import InputModifier, Jitter
from .losses import ActivationMaximization, Loss, UnitPerImage
from .optimizer import Result, Settings
from .prepared import PreparedModel
from .regularizers import LpNorm, TotalVariation
from .targets import FeatvisWarning, find_layer_idx, layer_names
from .visualization import (
    activations_reached,
    visualize_activation,
    visualize_activation_with_losses,
    visualize_layer,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationMaximization",
    "DatasetExamples",
    "FeatvisError",
    "FeatvisTypeError",
    "FeatvisValueError",
    "FeatvisWarning",
    "InputModifier",
    "Jitter",
    "LayerNotFoundError",
    "Loss",
    "LpNorm",
    "ModelError",
    "NonFiniteError",
    "PreparedModel",
    "Result",
    "Settings",
    "SkippedImagesWarning",
    "TotalVariation",
    "UnitPerImage",
    "activations_reached",
    "atlas",
    "backprop_modifiers",
    "dataset_examples",
    "find_layer_idx",
    "fusion",
    "grad_modifiers",
    "input_gradients",
    "input_modifiers",
    "integrated_gradients",
    "layer_names",
    "losses",
    "metrics",
    "occlusion",
    "params",
    "prepared",
    "regularizers",
    "rng",
    "save_image",
    "stitch_images",
    "targets",
    "visualize_activation",
    "visualize_activation_with_losses",
    "visualize_layer",
    "visualize_cam",
    "visualize_cam_with_losses",
    "visualize_guided_cam",
    "visualize_saliency",
    "visualize_saliency_with_losses",
    "overlay",
    "zoo",
]
