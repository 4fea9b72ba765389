"""Attribution: which pixels a prediction rests on.

- `saliency`: vanilla gradients, SmoothGrad, Integrated Gradients and occlusion as method objects
  (`SALIENCY_METHODS`), and `visualize_saliency`;
- `cam`: the CAM machinery (a `CamMethod` says what it needs; the penultimate layer, its
  activations and gradients, the automatic layer choice);
- `cam_methods`: the CAM family (`CAM_METHODS`, `register_cam`);
- `cam_maps`: `visualize_cam` and guided Grad-CAM;
- `scoring`: what they share (scores of rows of images, gradients, baselines, smoothing, scaling);
- `overlays`: heat maps over images; `metrics`: deletion, insertion, pointing, randomization.

This package is also the old path ``featvis.attention``: every name it had imports from here.

Examples:
    >>> from featvis.attribution import IntegratedGradients, visualize_saliency
    >>> maps = visualize_saliency(model, "fc", 3, image, method=IntegratedGradients(steps=32))
"""

from featvis.attribution.cam import CamContext, CamMethod, token_grid_of
from featvis.attribution.cam_maps import visualize_cam, visualize_cam_with_losses, visualize_guided_cam
from featvis.attribution.cam_methods import CAM_METHODS, ContextMethod, FunctionCam, register_cam
from featvis.attribution.overlays import overlay
from featvis.attribution.saliency import (
    SALIENCY_METHODS,
    Gradients,
    IntegratedGradients,
    Occlusion,
    SaliencyMethod,
    SmoothGrad,
    input_gradients,
    integrated_gradients,
    occlusion,
    visualize_saliency,
    visualize_saliency_with_losses,
)

__all__ = [
    "CAM_METHODS",
    "SALIENCY_METHODS",
    "CamContext",
    "CamMethod",
    "ContextMethod",
    "FunctionCam",
    "Gradients",
    "IntegratedGradients",
    "Occlusion",
    "SaliencyMethod",
    "SmoothGrad",
    "input_gradients",
    "integrated_gradients",
    "occlusion",
    "overlay",
    "register_cam",
    "token_grid_of",
    "visualize_cam",
    "visualize_cam_with_losses",
    "visualize_guided_cam",
    "visualize_saliency",
    "visualize_saliency_with_losses",
]
