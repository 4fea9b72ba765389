"""Loading the model a command runs: the embedded Lite0, timm:NAME, hf:FOLDER, a TorchScript or torch.save file, a .keras file, or package.module:factory.

Examples:
    >>> load_model("timm:resnet18", None).class_names[:2]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import importlib
import importlib.util
import os
from pathlib import Path
import sys

import torch

from featvis.errors import FeatvisValueError, bad_value, first_line
from featvis.model import zoo


class ScriptedModel(torch.nn.Module):
    """A TorchScript module in a Python module, so its output (layer '') can be visualized."""

    def __init__(self, scripted: torch.nn.Module):
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        return self.scripted(x)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object
    class_names: tuple[str, ...] | None

    def class_index(self, name: str, option: str = "--filter") -> int:
        """The class id of a class name of this model (ImageNet's for the embedded model)."""
        if self.class_names is None:
            raise bad_value(option, name, "an index: this model has no class names")
        known = None if self.class_names == zoo.imagenet_class_names() else self.class_names
        return zoo.class_index(name, known, argument=option)


MODEL_FILES = (".pt", ".pth", ".ts", ".jit")


ZOOS = {"timm": zoo.from_timm, "hf": zoo.from_huggingface}


def load_model(spec: str | None, preprocess: str | None, weights: str | None = None) -> LoadedModel:
    """The embedded Lite0 (spec None), ``timm:NAME``, ``hf:FOLDER``, a .keras file, a TorchScript or
    torch.save file, or ``module:factory``.

    timm and Hugging Face models come with their own preprocess (``preprocess=None``), class
    names and, with `weights`, a local weights file. ``module:factory`` is imported as
    ``python -m`` would: from the current folder first, then the installed packages. A file
    that is not TorchScript is read with ``torch.load(weights_only=False)``, which runs the
    pickled code in it: only load model files you trust.
    """
    norm = None if preprocess == "none" else zoo.Normalize()
    library, _, name = (spec or "").partition(":")
    if spec is None or library in ZOOS:
        bundle = zoo.efficientnet_lite0() if spec is None else _from_zoo(library, name, weights)
        return LoadedModel(
            bundle.model, bundle.preprocess if preprocess is None else norm, bundle.class_names
        )
    if weights is not None:
        raise bad_value("--weights", weights, "a weights file for a timm: or hf: --model (not for this one)")
    path = Path(spec)
    if path.suffix == ".keras":
        return LoadedModel(_load_keras(path), norm, None)
    if path.suffix in MODEL_FILES or path.exists():
        return LoadedModel(_load_model_file(spec), norm, None)
    module_name, _, factory = spec.partition(":")
    if not factory or not module_name:
        raise bad_value(
            "--model", spec, "a .keras, TorchScript or torch.save file, or 'package.module:factory'"
        )
    with _current_folder_importable():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise FeatvisValueError(
                f"--model {spec!r}: cannot import {module_name!r} from the current folder "
                f"({os.getcwd()}) or the installed packages: {err}"
            ) from err
        if not hasattr(module, factory):
            raise FeatvisValueError(f"--model {spec!r}: {module_name!r} has no attribute {factory!r}")
        try:
            model = getattr(module, factory)()
        except Exception as err:  # the user's factory may raise anything
            raise FeatvisValueError(
                f"--model {spec!r}: {factory}() raised {type(err).__name__}: {err}"
            ) from err
    if not isinstance(model, torch.nn.Module):
        raise FeatvisValueError(
            f"--model {spec!r}: {factory}() returned {type(model).__name__}, not an nn.Module"
        )
    return LoadedModel(model, norm, None)


def _from_zoo(library: str, name: str, weights: str | None) -> zoo.ZooModel:
    if not name:
        raise bad_value("--model", f"{library}:", f"'{library}:NAME' with a name after the colon")
    if library == "timm":
        return zoo.from_timm(name, weights=weights)
    if weights is not None:
        raise bad_value("--weights", weights, "None for hf: (the folder holds the weights)")
    return zoo.from_huggingface(name)


@contextlib.contextmanager
def _current_folder_importable():
    """Put the current folder first on ``sys.path``, as ``python -m`` does, while the model loads."""
    folder = os.getcwd()
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _load_model_file(spec: str) -> torch.nn.Module:
    """A TorchScript file (wrapped so its output can be visualized) or a ``torch.save(model)`` file."""
    path = Path(spec)
    if not path.is_file():
        raise FeatvisValueError(f"--model {spec!r}: no such file")
    try:
        return ScriptedModel(torch.jit.load(str(path), map_location="cpu"))
    except Exception as script_err:  # torch raises several types for a file that is not TorchScript
        script_error = script_err
    with _current_folder_importable():  # the pickled model refers to its class by module name
        try:
            # weights_only=False unpickles the file, which can run any code in it: it trusts the file
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:  # a bad pickle, a class that cannot be imported, ...
            raise FeatvisValueError(
                f"--model {spec!r} is neither a TorchScript file ({first_line(script_error)}) nor a "
                f"torch.save(model) file ({type(err).__name__}: {first_line(err)}); a pickled model "
                "needs its class importable from the current folder or the installed packages"
            ) from err
    if isinstance(loaded, torch.jit.ScriptModule):
        return ScriptedModel(loaded)
    if isinstance(loaded, torch.nn.Module):
        return loaded
    kind = "a state dict (weights only)" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
    raise FeatvisValueError(
        f"--model {spec!r} holds {kind}, not a model: save the model itself with torch.save(model, path), "
        "or load the weights in a 'module:factory' that builds the model"
    )


def _load_keras(path: Path) -> torch.nn.Module:
    """A saved Keras 3 model, loaded on the torch backend."""
    where = f"--model {str(path)!r}"
    if not path.is_file():
        raise FeatvisValueError(f"{where}: no such file")
    not_torch = f"{where}: featvis runs Keras models on the torch backend: set KERAS_BACKEND=torch"
    backend = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules and backend not in (None, "torch"):
        raise FeatvisValueError(f"{not_torch} (it is {backend!r})")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if importlib.util.find_spec("keras") is None:
        raise FeatvisValueError(f"{where}: a .keras file needs the keras package (pip install keras)")
    try:
        import keras
    except ImportError as err:
        raise FeatvisValueError(
            f"{where}: keras is installed but does not import: {first_line(err)}"
        ) from err
    if keras.backend.backend() != "torch":
        raise FeatvisValueError(f"{not_torch} (keras was imported with {keras.backend.backend()!r})")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # keras raises many types for a bad file
        raise FeatvisValueError(f"{where} is not a readable Keras model: {err}") from err
