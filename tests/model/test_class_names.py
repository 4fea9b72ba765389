"""ImageNet class names: the standard short names, unique; names match by word; ambiguity is refused."""

import json
from pathlib import Path

import pytest
import torch

import featvis
from featvis import zoo

ROOT = Path(__file__).resolve().parents[2]


def test_short_names_are_the_standard_ones():
    names = zoo.imagenet_class_names()
    assert len(names) == 1000
    assert names[285] == "Egyptian cat"
    assert names[282] == "tiger cat"
    assert names[281] == "tabby"
    assert names[130] == "flamingo"
    assert names[967] == "espresso"
    assert names[657] == "missile" and names[744] == "projectile"
    assert names[638] == "maillot (tights)" and names[639] == "maillot (tank suit)"
    assert names[134] == "crane (bird)" and names[517] == "crane (machine)"
    assert names[264] == "Cardigan Welsh corgi" and names[474] == "cardigan"


def test_short_names_are_unique_ignoring_case():
    lowered = [name.lower() for name in zoo.imagenet_class_names()]
    assert len(set(lowered)) == 1000


def test_shipped_names_are_what_the_build_script_makes():
    import runpy

    build = runpy.run_path(str(ROOT / "scripts/build_imagenet_class_names.py"))["build"]
    shipped = json.loads((ROOT / "src/featvis/assets/imagenet_classes.json").read_text(encoding="utf-8"))
    assert build() == shipped


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("flamingo", 130),
        ("Egyptian cat", 285),
        ("egyptian CAT", 285),
        ("espresso", 967),
        ("goldfish", 1),
        ("pelican", 144),
        ("tiger cat", 282),
        ("tabby cat", 281),  # a WordNet synonym of one class
        ("puma", 286),
        ("missile", 657),  # a short name means its class, though 744 "projectile" is also called so
        ("crane (bird)", 134),
        ("crane (machine)", 517),
        (" 130 ", 130),
        (285, 285),
    ],
)
def test_class_index_finds_names_users_type(name, index):
    assert zoo.class_index(name) == index
    bundle = featvis.zoo.ZooModel("imagenet model", torch.nn.Identity(), 224)  # ImageNet names by default
    assert bundle.class_index(name) == index  # what lite0.class_index does


def test_a_name_of_two_classes_is_refused_with_both():
    with pytest.raises(featvis.FeatvisValueError) as info:
        zoo.class_index("crane")
    message = str(info.value)
    assert message.startswith("filter='crane' is not allowed")
    assert "crane (bird) (134)" in message and "crane (machine) (517)" in message
    with pytest.raises(featvis.FeatvisValueError, match=r"lesser panda \(387\), giant panda \(388\)"):
        zoo.class_index("panda")


def test_a_word_lists_the_classes_named_with_it():
    with pytest.raises(featvis.FeatvisValueError) as info:
        zoo.class_index("cat")
    message = str(info.value)
    for listed in ["tiger cat (282)", "Persian cat (283)", "Siamese cat (284)", "Egyptian cat (285)"]:
        assert listed in message
    assert "crate" not in message and "coast" not in message and "vat" not in message


def test_an_unknown_name_suggests_close_names():
    with pytest.raises(featvis.FeatvisValueError, match="close matches: flamingo"):
        zoo.class_index("flamingoo")
    with pytest.raises(featvis.FeatvisValueError, match="filter='  '"):
        zoo.class_index("  ")
    with pytest.raises(featvis.FeatvisTypeError, match="filter"):
        zoo.class_index(1.5)


def test_a_models_own_class_names_match_the_same_way():
    names = ["cat", "dog", "hot dog", "Cat"]
    assert zoo.class_index("dog", names) == 1
    assert zoo.class_index("hot dog", names) == 2
    with pytest.raises(featvis.FeatvisValueError, match=r"cat \(0\), Cat \(3\)"):
        zoo.class_index("CAT", names)
    with pytest.raises(featvis.FeatvisValueError, match=r"class name of this model"):
        zoo.class_index("cow", names)


def test_names_used_in_the_readme_examples_and_help_still_resolve():
    used = {"flamingo": 130, "Egyptian cat": 285, "goldfish": 1, "espresso": 967, "pelican": 144}
    assert {name: zoo.class_index(name) for name in used} == used


def test_embedded_models_carry_the_standard_names():
    model = zoo.ZooModel(name="any", model=torch.nn.Identity(), image_size=224)
    assert model.class_names[285] == "Egyptian cat" and model.class_names[282] == "tiger cat"
    assert model.class_index("Egyptian cat") == 285
