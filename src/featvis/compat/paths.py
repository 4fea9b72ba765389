"""The module paths featvis had before its packages, kept as aliases of the modules that now hold
them: ``import featvis.losses`` gives ``featvis.optvis.losses`` itself (the same module object, so
``featvis.losses.channel is featvis.optvis.losses.channel``).

Examples:
    >>> import featvis.losses, featvis.optvis.losses
    >>> featvis.losses is featvis.optvis.losses
    True
"""

from __future__ import annotations

import importlib
import sys

OLD_PATHS = {
    "prepared": "featvis.model.prepared",
    "targets": "featvis.model.targets",
    "fusion": "featvis.model.fusion",
    "inputs": "featvis.model.inputs",
    "tokens": "featvis.model.tokens",
    "zoo": "featvis.model.zoo",
    "losses": "featvis.optvis.losses",
    "regularizers": "featvis.optvis.regularizers",
    "params": "featvis.optvis.params",
    "input_modifiers": "featvis.optvis.input_modifiers",
    "grad_modifiers": "featvis.optvis.grad_modifiers",
    "backprop_modifiers": "featvis.optvis.backprop_modifiers",
    "optimizer": "featvis.optvis.optimizer",
    "callbacks": "featvis.optvis.callbacks",
    "watch": "featvis.optvis.watch",
    "visualization": "featvis.optvis.visualization",
    "attention": "featvis.attribution",
    "cam_methods": "featvis.attribution.cam_methods",
    "metrics": "featvis.attribution.metrics",
    "datasource": "featvis.data.sources",
    "dataset_examples": "featvis.data.examples",
    "gallery": "featvis.site.gallery",
    "atlas": "featvis.site.atlas",
    "utils": "featvis.compat.utils",
}


def install() -> None:
    """Register every old path (``featvis.<old>``) as the module that now holds it, and as an
    attribute of `featvis` where no function of that name stands (``featvis.atlas`` is the function)."""
    package = sys.modules["featvis"]
    for old, new in OLD_PATHS.items():
        module = importlib.import_module(new)
        sys.modules.setdefault(f"featvis.{old}", module)
        if not hasattr(package, old):
            setattr(package, old, module)
