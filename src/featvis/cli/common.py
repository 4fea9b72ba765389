"""What every command shares: the `featvis` group, the common options (model, preprocess, range, channels, device, seed), parsing, and warnings and errors in the options' words.

Examples:
    >>> parse_range("0,255")
    (0.0, 255.0)
"""

from __future__ import annotations

import ast
import contextlib
import functools
from pathlib import Path
import re
import sys
import warnings

import click
import torch
from tqdm.auto import tqdm

from featvis.cli.models import LoadedModel, load_model
from featvis.errors import FeatvisError, bad_value, close_matches
from featvis.optvis.optimizer import QUALITY, Settings


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


def registry_option(
    flag: str, registry, *, extra: tuple[str, ...] = (), help: str = "", entry: str = "one", **options
):
    """A click option whose value names an entry of `registry` (or one of `extra`), checked by
    `registered_name` once the model is loaded: a name the --model module registers counts
    (`entry`: what the help calls such a name, "one" or "a method")."""
    names = ", ".join([*registry, *extra])
    return click.option(
        flag, help=f"{help} One of {names}, or {entry} the --model module registers.".strip(), **options
    )


def registered_name(
    option: str, name: str | None, registry, extra: tuple[str, ...] = (), entry: str = "one"
) -> str | None:
    """`name` as given to `option` (None: not given), if `registry` (or `extra`) has it now, after the
    model's module ran (`entry` as in `registry_option`)."""
    if name is None or name in registry or name in extra:
        return name
    names = [*registry, *extra]
    raise bad_value(
        option,
        name,
        f"one of {', '.join(names)} (or {entry} the --model module registers){close_matches(name, names)}",
    )


quality_options = [
    registry_option(
        "--quality",
        QUALITY,
        default="fast",
        show_default=True,
        help="Preset, in forward+backward passes per image: preview 32 (a first look in seconds on "
        "a CPU), fast 128 (coarse-to-fine steps with a leaky backward pass, the default: about 7 s "
        "for one 224 px image on 2 CPU cores, 4 s each at four per call), best 512 (128 steps x 4 "
        "views of featvis 0.1's recipe: about 17 s). Time grows with the passes.",
    ),
    click.option("--steps", type=int, default=None, help="Optimization steps (default: the preset's)."),
    click.option("--views", type=int, default=None, help="Random views per step (default: the preset's)."),
    click.option(
        "--setting",
        "setting_texts",
        multiple=True,
        metavar="NAME=VALUE",
        help="A field of featvis.Settings (repeat), e.g. --setting lr=0.03 --setting "
        "lr_schedule=cosine --setting image_ema=none --setting method=fourier; VALUE is a Python "
        "literal, none, or a word.",
    ),
]


# the Settings fields --setting does not take: those of --steps and --views (every command with
# --setting has them) and those the command line sets itself
_NOT_SETTINGS = {
    "max_iter": "--steps",
    "views": "--views",
    "verbose": "--verbose",
    "progress": "--verbose",
    "callbacks": "--gif",
}
# the options that set a Settings field in some commands (activation): not both with --setting
_SETTING_FLAGS = {
    "method": "--method",
    "grad_modifier": "--grad-modifier",
    "backprop_modifier": "--backprop-modifier",
}


def quality_arguments(
    quality: str, steps: int | None, views: int | None, setting_texts: tuple[str, ...] = (), **own: object
) -> dict:
    """The preset (checked against `QUALITY` now, after the model's module ran), the options given
    beside it (those left out come from the preset; `own`: a command's options for Settings fields,
    such as ``method``) and the `--setting NAME=VALUE`s, each a field of `featvis.Settings`."""
    settings = parse_method_options(setting_texts, "--setting")
    fields = [name for name in Settings.names() if name not in _NOT_SETTINGS]
    own = given_settings(**own)
    for name, value in settings.items():
        if name in _NOT_SETTINGS:
            raise bad_value(
                "--setting", f"{name}=...", f"a field the command line sets (use {_NOT_SETTINGS[name]})"
            )
        if name not in fields:
            quoted = [repr(field) for field in fields]  # quoted: the command line's words already
            raise bad_value(
                "--setting", f"{name}=...", f"one of {', '.join(quoted)}{close_matches(repr(name), quoted)}"
            )
        if name in own:
            raise bad_value("--setting", f"{name}=...", f"a field not also given as {_SETTING_FLAGS[name]}")
        if name == "autocast" and isinstance(value, str):
            settings[name] = _dtype(value)
    return {
        "quality": registered_name("--quality", quality, QUALITY),
        **given_settings(max_iter=steps, views=views),
        **own,
        **settings,
    }


def _dtype(text: str) -> object:
    """``bfloat16`` or ``torch.float16`` as the torch dtype (another word is left for the API to refuse)."""
    found = getattr(torch, text.removeprefix("torch."), None)
    return found if isinstance(found, torch.dtype) else text


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
        registry_option(
            "--method", registry, default=registry.names()[0], show_default=True, entry="a method"
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


def parse_method_options(texts: tuple[str, ...], option: str = "--option") -> dict:
    """``NAME=VALUE`` strings (given to `option`) as keyword options: each VALUE a Python literal (32, 0.5, None, True,
    'text') or else the word itself."""
    options = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if not equals or not name.strip().isidentifier():
            raise bad_value(
                option,
                text,
                "NAME=VALUE, e.g. steps=32" if option == "--option" else "NAME=VALUE, e.g. lr=0.03",
            )
        name, value = name.strip(), value.strip()
        if name in options:
            raise bad_value(option, text, f"each NAME once ({name} is given twice)")
        try:
            options[name] = None if value.lower() == "none" else ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def registered_method(registry, name: str, texts: tuple[str, ...]):
    """`--method`'s name, or with `--option`s the object its class builds with them; checked against
    `registry` now, after the model's module ran (a method it registers counts)."""
    registered_name("--method", name, registry, entry="a method")
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


_ARGUMENT = re.compile(
    r"(?P<quoted>(?<!\w)'[^']*'|\"[^\"]*\")|(?<![\w.'\"/\\-])(?P<name>[a-z][a-z0-9_]*)"
    r"(?:(?P<given>=True\b)|(?P<alone>=(?=[\s,;:)]|$))|(?P<value>=)|(?P<typed>(?= has type )))?"
)


def option_names(command: click.Command) -> dict[str, str]:
    """{Python argument name: the option that sets it} for a command's options.

    Examples:
        >>> option_names(cli.commands["activation"])["max_iter"]
        '--steps'
    """
    options = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    options.update({argument: options[name] for argument, name in LIBRARY_NAMES.items() if name in options})
    if "setting_texts" in options:  # the Settings fields that --setting NAME=VALUE sets
        settable = [name for name in Settings.names() if name not in _NOT_SETTINGS and name not in options]
        options.update({name: f"--setting {name}" for name in settable})
    return options


def in_option_words(message: str, options: dict[str, str]) -> str:
    """A library message as the command line says it: each Python argument it names
    (``input_range=(5, 1)``, ``restart=True``, ``filter_indices``) as its option
    (``--input-range=(5, 1)``, ``--restart``, ``--filter``). A name that is also a word
    ("size", "model") counts only with its ``=`` or before "has type"; a snake_case name also alone.

    Examples:
        >>> in_option_words("max_iter=0 is not allowed", {"max_iter": "--steps"})
        '--steps=0 is not allowed'
    """

    def option(match: re.Match) -> str:
        flag = None if match["quoted"] else options.get(match["name"])
        named = match["given"] or match["alone"] or match["value"] or match["typed"] is not None
        if flag is None or not (named or "_" in match["name"]):
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
