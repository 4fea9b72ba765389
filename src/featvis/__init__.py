"""featvis: see what a unit, a channel or a class of a PyTorch vision model has learned.

Examples:
    >>> import featvis
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> image = featvis.visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess)
"""

from . import (
    backprop_modifiers,
    callbacks,
    fusion,
    grad_modifiers,
    input_modifiers,
    inputs,
    losses,
    metrics,
    params,
    prepared,
    regularizers,
    rng,
    targets,
    tokens,
    utils,
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
from .callbacks import GifGenerator, Print
from .dataset_examples import DatasetExamples, SkippedImagesWarning, dataset_examples
from .errors import (
    FeatvisError,
    FeatvisTypeError,
    FeatvisValueError,
    LayerNotFoundError,
    ModelError,
    NonFiniteError,
)
from .image import save_image, save_signal, save_volume, stitch_images
from .input_modifiers import InputModifier, Jitter
from .inputs import Optimized
from .losses import ActivationMaximization, Loss, UnitPerImage
from .optimizer import Result, Settings
from .prepared import PreparedModel
from .regularizers import LpNorm, TotalVariation
from .targets import FeatvisWarning, find_layer_idx, layer_names
from .utils import deprocess_input, get_num_filters, load_img, lookup_imagenet_labels
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
    "GifGenerator",
    "InputModifier",
    "Jitter",
    "LayerNotFoundError",
    "Loss",
    "LpNorm",
    "ModelError",
    "NonFiniteError",
    "Optimized",
    "PreparedModel",
    "Print",
    "Result",
    "Settings",
    "SkippedImagesWarning",
    "TotalVariation",
    "UnitPerImage",
    "activations_reached",
    "atlas",
    "backprop_modifiers",
    "callbacks",
    "deprocess_input",
    "dataset_examples",
    "find_layer_idx",
    "fusion",
    "get_num_filters",
    "grad_modifiers",
    "input_gradients",
    "input_modifiers",
    "inputs",
    "integrated_gradients",
    "layer_names",
    "load_img",
    "lookup_imagenet_labels",
    "losses",
    "metrics",
    "occlusion",
    "params",
    "prepared",
    "regularizers",
    "rng",
    "save_image",
    "save_signal",
    "save_volume",
    "stitch_images",
    "targets",
    "tokens",
    "utils",
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
