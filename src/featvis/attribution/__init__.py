"""Attribution: which pixels a prediction rests on. Saliency, SmoothGrad, Integrated Gradients,
occlusion, the CAM family (`cam_methods`), guided CAM, overlays, and the metrics that check a
map (deletion, insertion, pointing, randomization).

Examples:
    >>> from featvis.attribution.attention import visualize_cam
"""
