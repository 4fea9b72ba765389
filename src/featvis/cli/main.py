"""The ``featvis`` command line.

Examples:
    $ featvis activation --layer _fc --filter flamingo --steps 256 --size 224 --seed 0 --out flamingo.png
"""

from __future__ import annotations

import ast
import contextlib
from dataclasses import dataclass
import functools
import importlib
import importlib.util
import os
from pathlib import Path
import re
import sys
import warnings

import click
import numpy as np
import torch
from tqdm.auto import tqdm

import featvis.attribution as attribution
from featvis.errors import FeatvisError, FeatvisValueError, bad_value, close_matches, first_line
from featvis.image import resize, save_image, stitch_images, to_array, to_unit_tensor
from featvis.model import zoo
from featvis.model.prepared import preparing
from featvis.optvis import backprop_modifiers, grad_modifiers, params, visualization, watch
from featvis.optvis.optimizer import QUALITY, Settings
from featvis.site import gallery
from featvis.site.activation_atlas import LAYOUTS

EPILOG_ACTIVATION = """\b
Examples:
  featvis activation --layer _fc --filter 130 --out flamingo.png
  featvis activation --layer _fc --filter "flamingo,pelican" --steps 128 --out two.png
  featvis activation --layer _blocks.10 --filter 7 --method pixel --out ch7.png
  featvis activation --model mypkg.models:make_net --preprocess none --input-range 0,1 \\
      --layer head --filter 0 --size 32 --out up.png
  featvis activation --model timm:convnext_tiny --weights convnext_tiny.safetensors \\
      --layer "" --filter goldfish --out goldfish.png
"""


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


def parse_range(text: str) -> tuple[float, float]:
    try:  # a wrong count of numbers fails the unpacking with a ValueError too
        low, high = [int(p) if p.strip().lstrip("-").isdigit() else float(p) for p in text.split(",")]
    except ValueError as err:
        raise bad_value("--input-range", text, "two numbers 'low,high', e.g. 0,255") from err
    return low, high


def parse_filters(text: str | None, loaded: LoadedModel | None, option: str = "--filter") -> list[int] | None:
    """Indices and class names of `loaded` (None: indices only) separated by commas; None for all."""
    if text is None or text.strip().lower() == "all":
        return None
    indices = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise bad_value(option, text, "indices or class names separated by commas")
        if part.lstrip("-").isdigit():
            index = int(part)
            if index < 0:
                raise bad_value(option, text, "indices >= 0")
        elif loaded is None:
            raise bad_value(option, part, "an index (units are given by number)")
        else:
            index = loaded.class_index(part, option)
        indices.append(index)
    return indices


def check_output(option: str, path: str | None, folder: bool = False) -> None:
    """Refuse an output whose folder does not exist: the command line creates no folders.

    For a site folder (`folder=True`) the folder itself may be new; its parent must exist.
    """
    if path is None:
        return
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise bad_value(option, path, "a folder for the site (this is a file)")
    parent = target.parent
    if not parent.is_dir():
        what = "a site folder (new or existing)" if folder else "a file"
        raise bad_value(
            option,
            path,
            f"{what} in an existing folder ({str(parent)!r} does not exist; featvis does not create it)",
        )


def parse_size(text: str) -> tuple[int, int] | int:
    """`--size` of the attention commands: N (the shorter side, aspect ratio kept) or WxH (exactly)."""
    allowed = "N (the shorter side, e.g. 224) or WIDTHxHEIGHT (e.g. 224x224), each >= 1"
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise bad_value("--size", text, allowed)
    values = [int(p) for p in parts]
    return values[0] if len(values) == 1 else (values[1], values[0])


CHANNELS_HELP = (
    "Channels of the model's input images: 1 for a grayscale model, 3 for RGB "
    "(default: the Python API's, 3). Grayscale photos are repeated into RGB for 3."
)

common_options = [
    click.option(
        "--model",
        "model_spec",
        default=None,
        help="timm:NAME (pip install 'featvis[timm]'), hf:FOLDER or a cached hub id (pip install "
        "'featvis[hf]'), a .keras file (torch backend), a TorchScript or torch.save(model) file "
        "(unpickled: trust it), or package.module:factory, imported from the current folder first "
        "(default: embedded EfficientNet-Lite0).",
    ),
    click.option(
        "--weights",
        default=None,
        type=click.Path(dir_okay=False),
        help="A local .safetensors or .pth weights file for a timm:NAME model (nothing is downloaded; "
        "without it the weights are random).",
    ),
    click.option(
        "--preprocess",
        type=click.Choice(["imagenet", "none"]),
        default=None,
        help="Normalization of the model input (default: the model's own for the embedded, timm: and "
        "hf: models, imagenet for the others).",
    ),
    click.option(
        "--input-range",
        default="0,255",
        show_default=True,
        help="Range of the image values fed before preprocessing.",
    ),
    click.option("--channels", type=int, default=None, help=CHANNELS_HELP),
    click.option("--device", default=None, help="torch device, e.g. cpu or cuda (default: the model's)."),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Random seed: the same seed gives the same image.",
    ),
]

OUT_HELP = "Output PNG; its folder must exist."


class Common:
    """The options every command takes (`common_options`), read once."""

    def __init__(self, model_spec, weights, preprocess, input_range, channels, device, seed):
        if channels is not None and channels < 1:
            raise bad_value("--channels", channels, "an int >= 1: 1 for a grayscale model, 3 for RGB")
        self.model_spec, self.weights, self.preprocess, self.input_range = (
            model_spec,
            weights,
            preprocess,
            input_range,
        )
        self.channels, self.device, self.seed = channels, device, seed

    def load(self) -> tuple[LoadedModel, dict]:
        """The model, and the arguments every Python API function takes from these options
        (``channels=`` only when `--channels` is given, else the API's default)."""
        loaded = load_model(self.model_spec, self.preprocess, self.weights)
        api = dict(
            preprocess=loaded.preprocess, input_range=parse_range(self.input_range), device=self.device
        )
        if self.channels is not None:
            api["channels"] = self.channels
        return loaded, api


quality_options = [
    click.option(
        "--quality",
        type=click.Choice(list(QUALITY)),
        default="fast",
        show_default=True,
        help="Preset, in forward+backward passes per image: preview 32 (a first look in seconds on "
        "a CPU), fast 128 (coarse-to-fine steps with a leaky backward pass, the default: about 7 s "
        "for one 224 px image on 2 CPU cores, 4 s each at four per call), best 512 (128 steps x 4 "
        "views of featvis 0.1's recipe: about 17 s). Time grows with the passes.",
    ),
    click.option("--steps", type=int, default=None, help="Optimization steps (default: the preset's)."),
    click.option("--views", type=int, default=None, help="Random views per step (default: the preset's)."),
]


def quality_arguments(quality: str, steps: int | None, views: int | None) -> dict:
    """The preset and the options given beside it (those left out come from the preset)."""
    return {"quality": quality, **given_settings(max_iter=steps, views=views)}


def given_settings(**options) -> dict:
    """The options given on the command line (None: the preset's); "none" stands for None."""
    return {key: None if value == "none" else value for key, value in options.items() if value is not None}


attention_options = [
    click.option("--image", "image_path", required=True, type=click.Path(), help="Image file."),
    click.option("--layer", default="_fc", show_default=True, help="Layer whose units are explained."),
    click.option("--filter", "filters", required=True, help="Unit/class index or class name (comma list)."),
    click.option(
        "--size",
        default="224",
        show_default=True,
        help="Size the map is computed at: N resizes the photo so its shorter side is N, keeping "
        "its aspect ratio; WxH resizes to exactly W x H (for models that need one size). "
        "The output is written at the photo's own size.",
    ),
    click.option("--overlay/--no-overlay", "overlay_it", default=True, help="Blend the map over the image."),
    click.option("--out", type=click.Path(dir_okay=False), required=True, help=OUT_HELP),
]


def method_options(registry) -> list:
    """`--method`, checked against `registry` once the model is loaded (its module may register a
    method of its own), and the method's own `--option NAME=VALUE`s."""
    return [
        click.option(
            "--method",
            default=registry.names()[0],
            show_default=True,
            help=f"One of {', '.join(registry)}, or a method the --model module registers.",
        ),
        click.option(
            "--option",
            "method_option",
            multiple=True,
            metavar="NAME=VALUE",
            help="An option of the method's class (repeat), e.g. --option steps=32; VALUE is a "
            "Python literal or a word.",
        ),
    ]


def parse_method_options(texts: tuple[str, ...]) -> dict:
    """``NAME=VALUE`` strings as keyword options: each VALUE a Python literal (32, 0.5, None, True,
    'text') or else the word itself."""
    options = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if not equals or not name.strip().isidentifier():
            raise bad_value("--option", text, "NAME=VALUE, e.g. steps=32")
        try:
            options[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[name.strip()] = value.strip()
    return options


def registered_method(registry, name: str, texts: tuple[str, ...]):
    """`--method`'s name, or with `--option`s the object its class builds with them; checked against
    `registry` now, after the model's module ran (a method it registers counts)."""
    if name not in registry:
        raise bad_value(
            "--method",
            name,
            f"one of {', '.join(registry)} (or a method the --model module registers)"
            f"{close_matches(name, registry)}",
        )
    options = parse_method_options(texts)
    if not options:
        return name
    if not isinstance(registry[name], type):
        raise bad_value("--option", texts[0], f"none for --method {name!r} (it is registered as an object)")
    return registry.create(name, options)


unit_options = [
    click.option(
        "--unit-axis",
        type=int,
        default=None,
        help="Axis of the layer's output that holds the units (default: 1 for convolutions, the last "
        "for linear layers and (N, tokens, features) outputs).",
    ),
    click.option(
        "--token",
        type=int,
        default=None,
        help="Read each unit at this token only (0: a ViT's class token; default: averaged over tokens).",
    ),
]


def with_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def with_common(function):
    """Add `common_options` to a command, which gets them as one `Common`, its `common` argument."""

    @functools.wraps(function)
    def command(model_spec, weights, preprocess, input_range, channels, device, seed, **options):
        common = Common(model_spec, weights, preprocess, input_range, channels, device, seed)
        return function(**options, common=common)

    return with_options(common_options)(command)


# The library's names for arguments that a command's option sets under another name (the
# option's own Python name); the others are the same in both (input_range, unit_axis, ...).
LIBRARY_NAMES = {
    "filter_indices": "filters",
    "max_iter": "steps",
    "lp_norm_weight": "lp_weight",
    "smooth_samples": "smooth",
    "penultimate_layer": "penultimate",
    "seed_input": "image_path",
    "num_workers": "workers",
    "out_dir": "out",
}

# a Python name as a message writes it: `name=value`, `name=True` (a flag given), `name=` (the
# argument itself) or a bare snake_case name; not in a quoted value ('fc', a repr, a path)
_ARGUMENT = re.compile(
    r"(?P<quoted>(?<!\w)'[^']*'|\"[^\"]*\")|(?<![\w.'\"/\\-])(?P<name>[a-z][a-z0-9_]*)"
    r"(?:(?P<given>=True\b)|(?P<alone>=(?=[\s,;:)]|$))|(?P<value>=))?"
)


def option_names(command: click.Command) -> dict[str, str]:
    """{Python argument name: the option that sets it} for a command's options.

    Examples:
        >>> option_names(cli.commands["activation"])["max_iter"]
        '--steps'
    """
    options = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    options.update({argument: options[name] for argument, name in LIBRARY_NAMES.items() if name in options})
    return options


def in_option_words(message: str, options: dict[str, str]) -> str:
    """A library message as the command line says it: each Python argument it names
    (``input_range=(5, 1)``, ``restart=True``, ``filter_indices``) as its option
    (``--input-range=(5, 1)``, ``--restart``, ``--filter``). A name that is also a word
    ("size", "model") counts only with its ``=``; a snake_case name also alone.

    Examples:
        >>> in_option_words("max_iter=0 is not allowed", {"max_iter": "--steps"})
        '--steps=0 is not allowed'
    """

    def option(match: re.Match) -> str:
        flag = None if match["quoted"] else options.get(match["name"])
        if flag is None or not (match["given"] or match["alone"] or match["value"] or "_" in match["name"]):
            return match[0]
        return f"{flag}=" if match["value"] else flag

    return _ARGUMENT.sub(option, message)


@contextlib.contextmanager
def warnings_as_lines(options: dict[str, str]):
    """Show each warning once, as one line on stderr (``featvis: warning: ...``) in the options'
    words, with no source line; the command line's way, set for its commands only. Deprecation
    warnings (of the libraries featvis calls, nothing a user of the command can act on) are not
    shown unless ``-W`` or ``PYTHONWARNINGS`` asks for them, as Python does outside ``__main__``."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(in_option_words(str(message), options).split())
        if text not in shown:
            shown.add(text)
            tqdm.write(f"featvis: warning: {text}", file=sys.stderr)  # clear of any progress bar

    with warnings.catch_warnings():
        warnings.showwarning = show
        if not sys.warnoptions:
            for category in (DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
        yield


class Command(click.Command):
    """A featvis command: the library's errors and warnings reach the user naming its options."""

    def invoke(self, ctx: click.Context):
        options = option_names(self)
        with warnings_as_lines(options):
            try:
                return super().invoke(ctx)
            except FeatvisError as err:
                raise click.ClickException(in_option_words(str(err), options)) from err


class Group(click.Group):
    command_class = Command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featvis")
def cli() -> None:
    """featvis: see what a unit, a channel or a class of a vision model has learned."""


@cli.command(epilog=EPILOG_ACTIVATION)
@click.option(
    "--layer", required=True, help="Module name (as in model.named_modules()), '#k' for the k-th call."
)
@click.option(
    "--filter", "filters", default=None, help="Unit/channel/class: index, class name, comma list, or 'all'."
)
@with_options(unit_options)
@with_options(quality_options)
@click.option("--size", type=int, default=224, show_default=True)
@click.option(
    "--method",
    type=click.Choice(list(params.METHODS)),
    default=None,
    help=f"Image parameterization (default: the preset's; {Settings.method} at --quality fast).",
)
@click.option("--tv-weight", type=float, default=visualization.DEFAULT_TV_WEIGHT, show_default=True)
@click.option("--lp-weight", type=float, default=0.0, show_default=True)
@click.option("--grad-modifier", type=click.Choice(list(grad_modifiers.GRAD_MODIFIERS)), default=None)
@click.option(
    "--backprop-modifier",
    type=click.Choice([*backprop_modifiers.BACKPROP_MODIFIERS, "none"]),
    default=None,
    help=f"How gradients pass the ReLUs (default: the preset's; {Settings.backprop_modifier} at --quality "
    "fast; none: plain gradients).",
)
@click.option("--verbose", is_flag=True, help="Print every loss term at every step.")
@click.option(
    "--gif", type=click.Path(dir_okay=False), default=None, help="Also write a GIF of the optimization."
)
@click.option("--gif-every", type=int, default=4, show_default=True, help="Steps between GIF frames.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="Also plot every loss term (PNG)."
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help=OUT_HELP)
@with_common
def activation(
    layer,
    filters,
    unit_axis,
    token,
    quality,
    steps,
    views,
    size,
    method,
    tv_weight,
    lp_weight,
    grad_modifier,
    backprop_modifier,
    verbose,
    gif,
    gif_every,
    plot,
    out,
    common,
):
    """Generate the image that maximizes units of a layer (activation maximization)."""
    for option, path in (("--out", out), ("--gif", gif), ("--plot", plot)):
        check_output(option, path)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    recorder = watch.GifRecorder(every=gif_every) if gif else None
    result = visualization.visualize_activation(
        loaded.model,
        layer,
        indices,
        unit_axis=unit_axis,
        token=token,
        **quality_arguments(quality, steps, views),
        **given_settings(method=method, backprop_modifier=backprop_modifier),
        size=size,
        tv_weight=tv_weight,
        lp_norm_weight=lp_weight,
        grad_modifier=grad_modifier,
        verbose=verbose,
        seed=common.seed,
        callbacks=[recorder] if recorder else None,
        progress=None if not verbose else False,
        return_result=True,
        **api,
    )
    save_image(to_array(result.images, (0, 255))[0], out)
    click.echo(f"wrote {out}")
    if recorder:
        click.echo(f"wrote {recorder.save(gif)}")
    if plot:
        click.echo(f"wrote {watch.plot_history(result.history, plot)}")


@cli.command()
@click.option("--layer", required=True, help="Module name of the layer.")
@click.option("--units", default=None, help="Comma list of units (default: all).")
@with_options(unit_options)
@with_options(quality_options)
@click.option("--size", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per batch (default: what fits).")
@click.option("--cols", type=int, default=None, help="Columns of the grid.")
@click.option(
    "--out", type=click.Path(dir_okay=False), required=True, help="Output PNG grid; its folder must exist."
)
@with_common
def layer(
    layer,
    units,
    unit_axis,
    token,
    quality,
    steps,
    views,
    size,
    batch_size,
    cols,
    out,
    common,
):
    """Visualize every unit of a layer, many per batch, as one labeled grid.

    \b
    Examples:
      featvis layer --layer _blocks.10 --units 0,1,2,3 --steps 64 --out grid.png
    """
    check_output("--out", out)
    chosen = parse_filters(units, None, "--units")
    loaded, api = common.load()
    images = visualization.visualize_layer(
        loaded.model,
        layer,
        chosen,
        unit_axis=unit_axis,
        token=token,
        **quality_arguments(quality, steps, views),
        size=size,
        batch_size=batch_size,
        seed=common.seed,
        **api,
    )
    labels = [str(u) for u in (chosen if chosen is not None else range(len(images)))]
    save_image(stitch_images(list(images), cols=cols, labels=labels), out)
    click.echo(f"wrote {out}")


@cli.command(
    name="gallery",
    epilog="""\b
Examples:
  featvis gallery --layer _blocks.10 --out site/
  featvis gallery --layer _blocks.4 --layer _blocks.6 --units 0,1,2,3 --steps 32 --size 128 --out site/
""",
)
@click.option("--layer", "layers", multiple=True, required=True, help="Layer to render (repeat for several).")
@click.option("--units", default=None, help="Comma list of units (default: all).")
@click.option("--steps", type=int, default=64, show_default=True)
@click.option("--size", type=int, default=160, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per batch (default: what fits).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder of the site (index.html); it may be new, the folder holding it must exist.",
)
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images: show each unit's top dataset crops beside it (most negative on a click).",
)
@click.option("--k", type=int, default=9, show_default=True, help="Dataset examples per unit (with --data).")
@with_common
def gallery_command(
    layers,
    units,
    steps,
    size,
    batch_size,
    out,
    data,
    k,
    common,
):
    """Render every unit of layers into a static HTML gallery; rerun to add layers."""
    check_output("--out", out, folder=True)
    chosen = parse_filters(units, None, "--units")
    loaded, api = common.load()
    index = gallery.write_gallery(
        loaded.model,
        list(layers),
        out,
        units=chosen,
        size=size,
        max_iter=steps,
        seed=common.seed,
        batch_size=batch_size,
        data=data,
        k=k,
        **api,
    )
    click.echo(f"wrote {index}")


@cli.command(
    epilog="""\b
Examples:
  featvis examples --layer _blocks.10 --data photos/ --k 9 --out site/
  featvis examples --layer _fc --layer _blocks.12 --units 285,1 --out site/   # scikit-image's photos
  featvis examples --layer _blocks.10 --data photos/ --checkpoint run.pt --out site/  # resumable
"""
)
@click.option("--layer", "layers", multiple=True, required=True, help="Layer (repeat for several; one pass).")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help='Folder of images, searched recursively (default: scikit-image\'s photos, pip install "featvis[photos]").',
)
@click.option("--units", default=None, help="Comma list of units (default: all).")
@click.option("--k", type=int, default=9, show_default=True, help="Top and bottom images per unit.")
@click.option(
    "--reduce",
    type=click.Choice(["max", "mean"]),
    default="max",
    show_default=True,
    help="Rank conv units by their spatial max or mean.",
)
@click.option("--size", type=int, default=224, show_default=True, help="Images are resized to this size.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding workers (default: up to 4).")
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), default=None, help="Save/resume the pass here."
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the pages.")
@with_common
def examples(
    layers,
    data,
    units,
    k,
    reduce,
    size,
    batch_size,
    workers,
    checkpoint,
    out,
    common,
):
    """Dataset examples: the images (crops) of your data that drive each unit most and least."""
    check_output("--out", out, folder=True)
    loaded, api = common.load()
    pages = gallery.write_examples(
        loaded.model,
        list(layers),
        data,
        out,
        units=parse_filters(units, None, "--units"),
        k=k,
        reduce=reduce,
        size=size,
        batch_size=batch_size,
        num_workers=workers,
        checkpoint=checkpoint,
        **api,
    )
    for page in pages:
        click.echo(f"wrote {page}")


def _attention_output(photo, heatmap, out, overlay_it):
    """The map at the photo's own size, over the photo or alone."""
    if overlay_it:
        picture = attribution.overlay(photo, heatmap)  # resizes the map to the photo
    else:
        heat = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
        heat = resize(heat, tuple(photo.shape[:2]))[0, 0].clamp(0, 1).numpy()
        picture = (heat * 255).round().astype("uint8")
    save_image(picture, out)
    click.echo(f"wrote {out}")


@cli.command(
    epilog="""\b
Examples:
  featvis saliency --image cat.jpg --filter 285 --out map.png
  featvis saliency --image cat.jpg --filter "Egyptian cat" --smooth 20 --out smooth.png
  featvis saliency --image cat.jpg --filter 285 --backprop-modifier guided --no-overlay --out guided.png
  featvis saliency --image cat.jpg --filter 285 --method integrated_gradients --option steps=32 --out ig.png
"""
)
@click.option("--smooth", type=int, default=0, show_default=True, help="SmoothGrad samples (0: vanilla).")
@click.option(
    "--backprop-modifier", type=click.Choice(list(backprop_modifiers.BACKPROP_MODIFIERS)), default=None
)
@with_options(method_options(attribution.SALIENCY_METHODS))
@with_options(attention_options)
@with_common
def saliency(
    image_path,
    layer,
    filters,
    smooth,
    backprop_modifier,
    method,
    method_option,
    size,
    overlay_it,
    out,
    common,
):
    """Saliency map: which pixels change the chosen units most."""
    check_output("--out", out)
    photo, image = _photo_and_model_image(image_path, size, common.channels)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    if method_option and backprop_modifier is not None:  # the method object takes it
        method_option = (*method_option, f"backprop_modifier={backprop_modifier!r}")
        backprop_modifier = None
    heatmap = attribution.visualize_saliency(
        loaded.model,
        layer,
        indices,
        image,
        method=registered_method(attribution.SALIENCY_METHODS, method, method_option),
        smooth_samples=smooth,
        backprop_modifier=backprop_modifier,
        seed=common.seed,
        **api,
    )[0]
    _attention_output(photo, heatmap, out, overlay_it)


@cli.command(
    epilog="""\b
Examples:
  featvis cam --image cat.jpg --filter 285 --out cam.png
  featvis cam --image cat.jpg --filter espresso --method gradcam++ --out campp.png
  featvis cam --image cat.jpg --filter 285 --guided --out guided_cam.png
  featvis cam --image cat.jpg --filter 285 --size 224x224 --out cam.png   # a model that needs 224x224
  featvis cam --image cat.jpg --filter 285 --method scorecam --aug-smooth --metrics --out scorecam.png
"""
)
@click.option("--penultimate", default=None, help="Layer whose activations are weighted (default: found).")
@with_options(method_options(attribution.CAM_METHODS))
@click.option("--guided", is_flag=True, help="Guided Grad-CAM: guided backprop times the CAM.")
@click.option("--aug-smooth", is_flag=True, help="Average the map over flips and zooms of the image.")
@click.option(
    "--metrics",
    "show_metrics",
    is_flag=True,
    help="Print the map's deletion and insertion areas (featvis.metrics, 16 steps).",
)
@with_options(attention_options)
@with_common
def cam(
    image_path,
    layer,
    filters,
    penultimate,
    method,
    method_option,
    guided,
    aug_smooth,
    show_metrics,
    size,
    overlay_it,
    out,
    common,
):
    """Grad-CAM map: which regions the chosen units rely on."""
    check_output("--out", out)
    photo, image = _photo_and_model_image(image_path, size, common.channels)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    cam_of = attribution.visualize_guided_cam if guided else attribution.visualize_cam
    options = {}
    if not guided:
        method = registered_method(attribution.CAM_METHODS, method, method_option)
        options = {"method": method, "aug_smooth": aug_smooth, "seed": common.seed}
    with preparing(loaded.model, **api) as prepared:  # one for the map and its metrics
        heatmap = cam_of(prepared, layer, indices, image, penultimate_layer=penultimate, **options)[0]
        _attention_output(photo, heatmap, out, overlay_it)
        if show_metrics:
            from featvis.attribution import metrics

            for name, better in (("deletion", "lower"), ("insertion", "higher")):
                curve = getattr(metrics, name)(prepared, layer, indices, image, heatmap, steps=16)
                click.echo(f"{name} area: {curve.areas[0]:.4f} ({better} is better)")


@cli.command(
    name="atlas",
    epilog="""\b
Examples:
  featvis atlas --out site/                                  # the whole embedded Lite0
  featvis atlas --layer _blocks.4 --layer _fc --steps 64 --out site/
  torchrun --nproc-per-node 4 -m featvis atlas --out site/  # 4 processes (GPUs or CPU)
""",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Layer to include (repeat; default: every block, head, classifier).",
)
@click.option("--all", "all_convolutions", is_flag=True, help="Every conv and linear layer.")
@with_options(quality_options)
@click.option("--size", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Units per batch (default 4 on CPU, 32 on GPU).")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images: each unit's card also shows the images that drive it most.",
)
@click.option("--examples", type=int, default=9, show_default=True, help="Dataset examples per unit.")
@click.option("--restart", is_flag=True, help="Delete an atlas made with other settings in --out first.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the site.")
@with_common
def atlas_command(
    layers,
    all_convolutions,
    quality,
    steps,
    views,
    size,
    batch_size,
    data,
    examples,
    restart,
    out,
    common,
):
    """Visualize every unit of a whole model into a browsable site; resumable, and sharded under torchrun."""
    from featvis.site.atlas import atlas

    if layers and all_convolutions:
        raise bad_value("--all", True, "either --layer or --all, not both")
    check_output("--out", out, folder=True)
    loaded, api = common.load()
    index = atlas(
        loaded.model,
        out,
        list(layers) or None,
        all_convolutions=all_convolutions,
        class_names=loaded.class_names,
        size=size,
        batch_size=batch_size,
        seed=common.seed,
        restart=restart,
        data=data,
        examples=examples,
        **quality_arguments(quality, steps, views),
        **api,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks
        click.echo(f"wrote {index}")


@cli.command(
    name="activation-atlas",
    epilog="""\b
Examples:
  featvis activation-atlas --layer _blocks.15 --out atlas15/                  # scikit-image's photos
  featvis activation-atlas --layer _blocks.15 --data photos/ --grid 20 --icon-size 96 --out atlas15/
  torchrun --nproc-per-node 2 -m featvis activation-atlas --layer _blocks.15 --out atlas15/
""",
)
@click.option("--layer", required=True, help="The layer whose activations are laid out.")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images (default: scikit-image's photographs, the photos extra).",
)
@click.option("--data-size", type=int, default=None, help="Side the data's images are read at (default 224).")
@click.option("--grid", type=int, default=16, show_default=True, help="Cells per side of the map.")
@click.option("--samples", type=int, default=4, show_default=True, help="Positions sampled per image.")
@click.option("--min-count", type=int, default=3, show_default=True, help="Samples a cell needs to be drawn.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True)
@click.option("--icon-size", type=int, default=None, help="Side of each cell's image (default: the data's).")
@click.option("--steps", type=int, default=128, show_default=True, help="Optimization steps per cell.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Cells drawn per call.")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder of the picture and page."
)
@with_common
def activation_atlas_command(
    layer, data, data_size, grid, samples, min_count, layout, icon_size, steps, batch_size, out, common
):
    """Lay out a layer's activations over a dataset on a grid and draw every cell (Carter et al. 2019)."""
    from featvis.site.activation_atlas import activation_atlas

    check_output("--out", out, folder=True)
    loaded, api = common.load()
    result = activation_atlas(
        loaded.model,
        layer,
        data,
        out=out,
        data_size=data_size,
        grid=grid,
        samples=samples,
        min_count=min_count,
        layout=layout,
        icon_size=icon_size,
        max_iter=steps,
        batch_size=batch_size,
        class_names=loaded.class_names,
        seed=common.seed if common.seed is not None else 0,
        **api,
    )
    if result.page is not None:
        click.echo(f"wrote {result.page} ({len(result.cells)} cells, laid out by {result.layout})")


def _photo_and_model_image(image_path, size: str, channels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The photo as read (H, W, C) uint8, and the image fed to the model, resized as `--size` says.

    The photo is read as pixels in [0, 255], whatever `--input-range` is: the
    attention functions get it as a uint8 array in their own `input_range`.
    """
    target = parse_size(size)
    photo = to_unit_tensor(image_path, "--image", (0, 255), channels)
    height, width = photo.shape[-2:]
    if isinstance(target, int):
        scale = target / min(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return to_array(photo, (0, 255))[0], to_array(resize(photo, target), (0, 255))[0]


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits with status 2 and one line on stderr, no traceback."""
    try:
        cli.main(args=argv, prog_name="featvis", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("featvis: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"featvis: error: {err.format_message()}", err=True)
        sys.exit(2)
    except (FeatvisError, OSError) as err:
        click.echo(f"featvis: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
