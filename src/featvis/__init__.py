"""featvis: see what a unit, a channel or a class of a PyTorch vision model has learned.

Examples:
    >>> import featvis
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> image = featvis.visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess)
"""

from featvis import concepts, rng
from featvis.attribution import (
    input_gradients,
    integrated_gradients,
    metrics,
    occlusion,
    overlay,
    visualize_cam,
    visualize_cam_with_losses,
    visualize_guided_cam,
    visualize_saliency,
    visualize_saliency_with_losses,
)
from featvis.attribution.circuits import Contribution, Contributions, circuits, contributions
from featvis.compat import paths, utils
from featvis.compat.utils import deprocess_input, get_num_filters, load_img, lookup_imagenet_labels
from featvis.data.examples import DatasetExamples, DatasetPass, SkippedImagesWarning, dataset_examples
from featvis.errors import (
    FeatvisError,
    FeatvisTypeError,
    FeatvisValueError,
    FeatvisWarning,
    LayerNotFoundError,
    ModelError,
    NonFiniteError,
)
from featvis.image import save_image, save_signal, save_volume, stitch_images
from featvis.model import fusion, inputs, prepared, targets, tokens, zoo
from featvis.model.inputs import Optimized
from featvis.model.prepared import PreparedModel, find_layer_idx, layer_names
from featvis.optvis import (
    backprop_modifiers,
    callbacks,
    grad_modifiers,
    input_modifiers,
    losses,
    params,
    regularizers,
)
from featvis.optvis.callbacks import GifGenerator, Print
from featvis.optvis.input_modifiers import InputModifier, Jitter
from featvis.optvis.inversion import ActivationMatch, Caricature, invert
from featvis.optvis.losses import ActivationMaximization, Loss, UnitPerImage
from featvis.optvis.optimizer import Result, Settings
from featvis.optvis.regularizers import LpNorm, TotalVariation
from featvis.optvis.visualization import (
    activations_reached,
    visualize_activation,
    visualize_activation_with_losses,
    visualize_layer,
)
from featvis.site.activation_atlas import activation_atlas
from featvis.site.atlas import atlas
from featvis.site.building_blocks import building_blocks
from featvis.version import __version__ as __version__

paths.install()  # featvis.losses, featvis.attention, ...: the paths before the packages

__all__ = [
    "ActivationMatch",
    "ActivationMaximization",
    "Caricature",
    "Contribution",
    "Contributions",
    "DatasetExamples",
    "DatasetPass",
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
    "activation_atlas",
    "activations_reached",
    "atlas",
    "backprop_modifiers",
    "building_blocks",
    "callbacks",
    "circuits",
    "concepts",
    "contributions",
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
    "invert",
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
