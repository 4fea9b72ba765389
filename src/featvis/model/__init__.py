"""The model machinery under every other room: a model prepared once (`PreparedModel`: guarded,
probed, resolved, fused, run), the probe and layer resolution (`targets`), unit and token axes
(`units`, `tokens`), folded batch norms (`fusion`), models of several inputs (`inputs`) and the
model zoos (`zoo`: the embedded EfficientNet-Lite0, timm, Hugging Face).

Examples:
    >>> from featvis.model.prepared import PreparedModel, layer_names
    >>> with PreparedModel(model) as prepared:
    ...     layer_names(prepared)[-1]
"""
