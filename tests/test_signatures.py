"""Public signatures show their options: keyword-only arguments with their defaults that `help()` and
an editor list, no hidden ``**options``; a misspelled one is refused with featvis's error, naming
the close matches; a wrapper forwards every option of the function it wraps."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import featvis
from featvis.attribution import cam_maps, circuits, metrics, saliency
from featvis.compat import utils
from featvis.concepts import directions
from featvis.model import prepared
from featvis.model.prepared import CONVENTIONS
from featvis.optvis import inversion, visualization

from conftest import make_tiny

tcav = importlib.import_module("featvis.concepts.tcav")  # the package's `tcav` is the function

LISTED = [
    cam_maps.visualize_cam,
    cam_maps.visualize_cam_with_losses,
    cam_maps.visualize_guided_cam,
    saliency.input_gradients,
    saliency.integrated_gradients,
    saliency.occlusion,
    saliency.visualize_saliency,
    saliency.visualize_saliency_with_losses,
    metrics.deletion,
    metrics.insertion,
    metrics.randomization_check,
    circuits.circuits,
    circuits.contributions,
    directions.activation_directions,
    tcav.cav,
    tcav.tcav,
    inversion.invert,
    utils.get_num_filters,
    prepared.prepare,
    prepared.preparing,
]


@pytest.mark.parametrize("function", LISTED, ids=lambda f: f.__name__)
def test_every_option_and_convention_is_a_keyword_only_argument(function):
    parameters = inspect.signature(function).parameters
    assert not [p.name for p in parameters.values() if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for name in CONVENTIONS:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].annotation is not inspect.Parameter.empty, name
    assert "Examples:" in function.__doc__


@pytest.mark.parametrize(
    "wrapper, wrapped, own",
    [
        (cam_maps.visualize_cam, cam_maps.visualize_cam_with_losses, {}),
        (saliency.visualize_saliency, saliency.visualize_saliency_with_losses, {}),
        (circuits.circuits, circuits.contributions, {}),
        (
            inversion.invert,  # its own defaults; `size` resizes the photo, the batch is the photos
            visualization.visualize_activation_with_losses,
            {"input_modifiers": (), "backprop_modifier": None, "size": ..., "batch_size": ...},
        ),
    ],
    ids=lambda f: getattr(f, "__name__", ""),
)
def test_a_wrapper_takes_every_option_of_the_function_it_calls_with_its_default(wrapper, wrapped, own):
    outer = inspect.signature(wrapper).parameters
    options = [
        p
        for p in inspect.signature(wrapped).parameters.values()
        if p.kind is p.KEYWORD_ONLY and own.get(p.name) is not ...
    ]
    assert options
    for parameter in options:
        assert outer[parameter.name].default == own.get(parameter.name, parameter.default), parameter.name
        assert outer[parameter.name].annotation == parameter.annotation, parameter.name


IMAGE = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
MISSPELLED = {
    "visualize_cam": (
        lambda m: featvis.visualize_cam(m, "fc", 1, IMAGE, penultimate_layr="conv2"),
        "'penultimate_layr'; close matches: penultimate_layer",
    ),
    "integrated_gradients": (
        lambda m: featvis.integrated_gradients(
            m, featvis.losses.ActivationMaximization("fc", 1), IMAGE, step=8
        ),
        "'step'; close matches: steps",
    ),
    "tcav": (
        lambda m: featvis.concepts.tcav(m, "conv2", [IMAGE] * 2, [IMAGE] * 2, 1, random_set=[[IMAGE] * 2]),
        "'random_set'; close matches: random_sets",
    ),
    "prepare": (lambda m: prepared.prepare(m, input_rang=(0, 1)), "'input_rang'; close matches: input_range"),
}


@pytest.mark.parametrize("case", MISSPELLED, ids=str)
def test_a_misspelled_keyword_is_refused_naming_the_close_matches(case):
    call, message = MISSPELLED[case]
    with pytest.raises(featvis.FeatvisTypeError, match=f"unexpected keyword argument {message}"):
        call(make_tiny())
