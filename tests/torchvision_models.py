"""torchvision's ViT, Swin and ConvNeXt for tests, importable with the CPU build of torch.

The torchvision 0.28.0 wheel on PyPI is built against the CUDA build of torch 2.13.0: with
the CPU build its C++ operators (nms, roi_align, ...) do not load, and ``import torchvision``
fails while registering fake and autograd kernels for them. The models featvis tests are
plain Python and need none of those operators, so when (and only when) the operators did not
load, the two registration modules are replaced by empty ones before torchvision is imported.

Example:
    >>> vit = torchvision_models().vit_b_16(image_size=32)
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
import sys
import types


def _operators_load() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    library = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):
        return False
    return True


def allow_torchvision_import() -> None:
    """Make ``import torchvision`` work as described in the module docstring; timm and
    transformers import it too, so the test session calls this before any test runs."""
    if "torchvision" not in sys.modules and not _operators_load():
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules.setdefault(name, types.ModuleType(name))


def import_model_library(name: str) -> types.ModuleType:
    """Import `name` (timm, transformers: they import torchvision, transformers lazily, model by
    model), with `allow_torchvision_import` applied only when importing torchvision fails on its
    operators, as described in the module docstring.

    Example:
        >>> timm = import_model_library("timm")
    """
    try:
        importlib.import_module("torchvision")
    except ModuleNotFoundError:
        pass
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        allow_torchvision_import()  # the failed import left no torchvision in sys.modules
    return importlib.import_module(name)


def torchvision_models() -> types.ModuleType:
    """`torchvision.models`, imported as described in the module docstring."""
    allow_torchvision_import()
    import torchvision.models

    return torchvision.models
