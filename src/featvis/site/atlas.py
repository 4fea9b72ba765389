"""An atlas of a whole model: every unit's optimized image in one browsable site, resumable,
sharded over processes, GPUs and machines with torchrun.

The work is a fixed *plan*: the layers' units cut into batches of `batch_size`
(`featvis.visualization.layer_batches`), which depends only on the model and the
settings, never on the world size. Each batch is optimized with the batched engine
(each unit's random draws keyed by (seed, layer, unit)), so a unit's files are the same
whatever the number of processes. Under torchrun every rank takes whole batches, a
share balanced by estimated cost (multiply-accumulates up to the layer, deeper layers
cost more), writes each unit's PNG and record atomically as soon as its batch is done,
and rank 0 writes the site after a barrier. A rerun skips the units already written;
a rerun with other settings into the same folder is refused unless told to start over.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> featvis.atlas(lite0.model, "site/", layers=["_blocks.10"], preprocess=lite0.preprocess,
    ...               class_names=lite0.class_names)
    $ torchrun --nproc-per-node 4 -m featvis atlas --out site/        # the whole of Lite0, 4 GPUs
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from datetime import timedelta
import hashlib
import html
import json
import os
from pathlib import Path
import re
import shutil
import sys
import time
import warnings

import numpy as np
from PIL import Image
import torch
from torch import nn
import torch.distributed as dist
from tqdm.auto import tqdm

from featvis.attribution.circuits import Contribution, contributions
from featvis.data.examples import SkippedImagesWarning, dataset_examples, dataset_fingerprint, merge_examples
from featvis.data.sources import DataSummary, ImageSource, image_source
from featvis.errors import FeatvisValueError, bad_type, bad_value, check_int, known_keywords
from featvis.image import atomic_write, save_image, stitch_images, to_array, to_pil
from featvis.model.prepared import PreparedModel, image_size, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.optvis.input_modifiers import InputModifier
from featvis.optvis.losses import check_token, check_unit_axis
from featvis.optvis.optimizer import FROM_QUALITY, FromQuality, Settings, show_progress
from featvis.optvis.visualization import activations_reached, auto_batch_size, layer_batches, visualize_layer
from featvis.site.group import EarlierFailure, Group, GroupTimeout, PeerFailed, PeerLost, join
from featvis.version import __version__

MANIFEST = "atlas.json"
CHECKPOINTS = "checkpoints"  # each rank's dataset-examples pass so far; removed when the atlas is done
EXAMPLES_CHECKPOINT_EVERY = 10  # batches (of 32 images) of the data pass between two checkpoints
THUMBNAIL = 96
FED_BY_THUMBNAIL = 24
UNIT_RECORD = re.compile(r"unit_\d+\.json")  # a unit's record (not its examples' record)


def _module(model: nn.Module | PreparedModel) -> nn.Module:
    """The user's module: `model` itself, or the one a `PreparedModel` holds."""
    return model.model if isinstance(model, PreparedModel) else model


def default_layers(model: nn.Module | PreparedModel) -> list[str]:
    """Every block's output, plus the convolutions and linear layers between blocks (stem, head,
    classifier): the children of the model's top-level `Sequential`/`ModuleList` containers, and
    its other top-level conv and linear modules, in definition order.

    Examples:
        >>> default_layers(featvis.zoo.efficientnet_lite0().model)[:3]
        ['_conv_stem', '_blocks.0', '_blocks.1']
    """
    layers = []
    for name, child in _module(model).named_children():
        if isinstance(child, nn.Sequential | nn.ModuleList):
            layers += [f"{name}.{inner}" for inner, _ in child.named_children()]
        elif isinstance(child, nn.modules.conv._ConvNd | nn.Linear):
            layers.append(name)
    return layers


def all_layers(model: nn.Module | PreparedModel) -> list[str]:
    """Every convolution and linear layer of the model (``featvis atlas --all``).

    Examples:
        >>> all_layers(featvis.zoo.efficientnet_lite0().model)[:2]
        ['_conv_stem', '_blocks.0._depthwise_conv']
    """
    modules = _module(model).named_modules()
    return [name for name, m in modules if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]


@dataclass(frozen=True)
class Batch:
    """One batch of the plan: units of one layer, and its estimated cost."""

    layer: str
    units: tuple[int, ...]
    cost: float


def plan(layer_units: dict[str, int], layer_costs: dict[str, float], batch_size: int) -> list[Batch]:
    """The fixed plan: each layer's units in near-equal batches of at most `batch_size`.

    Examples:
        >>> [b.units for b in plan({"fc": 5}, {"fc": 1.0}, 2)]
        [(0, 1), (2, 3), (4,)]
    """
    return [
        Batch(layer, tuple(units), layer_costs[layer] * len(units))
        for layer, count in layer_units.items()
        for units in layer_batches(range(count), batch_size)
    ]


def shard(batches: Sequence[Batch], world_size: int) -> list[list[int]]:
    """Batch indices per rank: the costliest batch first to the least loaded rank (deterministic).

    Examples:
        >>> shard([Batch("a", (0,), 3.0), Batch("a", (1,), 1.0), Batch("a", (2,), 1.0)], 2)
        [[0], [1, 2]]
    """
    loads, shares = [0.0] * world_size, [[] for _ in range(world_size)]
    for index in sorted(range(len(batches)), key=lambda i: (-batches[i].cost, i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += batches[index].cost
        shares[rank].append(index)
    return [sorted(share) for share in shares]


def layer_costs(prepared: PreparedModel, layers: Sequence[str], size: tuple[int, int]) -> dict[str, float]:
    """Estimated cost of one step of one unit of each layer: multiply-accumulates of the forward up to
    the layer, plus the image's own work (parameterization, transforms, regularizers) as pixels x 1000.

    Examples:
        >>> with PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        ...     layer_costs(prepared, ["conv1", "fc"], (64, 64))
    """
    macs: list[tuple[str, float]] = []  # cumulative, in the order the modules finish
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(output, torch.Tensor):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            total += output[0].numel() * module.in_features
        macs.append((names[module], total))

    names = prepared.seen_modules()
    prepared.observe(size, count, names)
    reached = {}
    for name, value in macs:  # the first call of each module that finishes
        reached.setdefault(name, value)
    own = size[0] * size[1] * 1000.0
    return {layer: reached.get(prepared.resolve(layer).name, total) + own for layer in layers}


def fingerprint(model: nn.Module | PreparedModel) -> str:
    """A short hash of the model's parameter and buffer names, shapes and values.

    Examples:
        >>> fingerprint(model) == fingerprint(featvis.PreparedModel(model))
        True
    """
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in _module(model).state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        values = tensor.detach().float().flatten().cpu()
        digest.update(values[:: max(1, values.numel() // 4096)].numpy().tobytes())
    return digest.hexdigest()


def _slug(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "output"


def _unit_stem(out: Path, layer: str, unit: int) -> Path:
    return out / "units" / _slug(layer) / f"unit_{unit:05d}"


_GROUP: Group | None = None  # the group this process started (`_distributed`), for its waits


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group), from torchrun's environment.

    A group it starts lives in store keys of its own (`featvis.site.group.join`: a group restarted by
    torchrun never reads a dead group's keys), with ``FEATVIS_ATLAS_TIMEOUT`` on its collectives."""
    global _GROUP
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        rank = int(os.environ["RANK"])
        group = join(rank, world_size)
        dist.init_process_group(
            backend,
            store=group.store,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=group.timeout),
        )
        _GROUP = group
        return rank, world_size, True
    return 0, 1, False


def _barrier(world_size: int, what: str = "a barrier") -> None:
    """Wait for every rank: through the group's store when `_distributed` started the group (a rank's
    error or the timeout ends the wait), else `torch.distributed.barrier`."""
    if world_size > 1:
        if _GROUP is not None:
            _GROUP.barrier(what)
        else:
            dist.barrier()


def _end_group(started: bool, err: BaseException | None) -> None:
    """Tell the others this rank's own work raised `err` (not a peer's failure, a timeout, a lost
    peer or an interrupt), and end the group this call started."""
    global _GROUP
    ours = not isinstance(err, PeerFailed | GroupTimeout | PeerLost | EarlierFailure | KeyboardInterrupt)
    if started and _GROUP is not None and isinstance(err, Exception) and ours:
        _GROUP.fail(err)
    if started:
        _GROUP = None
        dist.destroy_process_group()


@known_keywords
def atlas(
    model: nn.Module | PreparedModel,
    out: str | os.PathLike,
    layers: Sequence[LayerSpec] | None = None,
    *,
    all_convolutions: bool = False,
    class_names: Sequence[str] | None = None,
    size: int | tuple[int, int] = 128,
    batch_size: int | None = None,
    seed: int = 0,
    restart: bool = False,
    title: str = "featvis atlas",
    progress: bool | None = None,
    data: object = None,
    examples: int = 9,
    unit_axis: int | None = None,
    token: int | None = None,
    fed_by: int = 4,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
    quality: str = "fast",
    max_iter: int | FromQuality = FROM_QUALITY,
    views: int | FromQuality = FROM_QUALITY,
    lr: float | None = None,
    method: str | Callable | FromQuality = FROM_QUALITY,
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = FROM_QUALITY,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> Path:
    """Visualize every unit of `layers` (default `default_layers`; ``all_convolutions=True``: every conv
    and linear layer) into a static site in `out`; returns the index page's path.

    Resumable (units already written are skipped), and sharded when run under torchrun
    (``torch.distributed`` set up from its environment: gloo on CPUs, NCCL on GPUs with one
    GPU per rank). `batch_size` (default 4 on the CPU, 32 on a GPU) fixes the plan of
    batches: the same command gives the same files for any number of processes (at the same
    number of threads per process). `class_names` label the units of the layer with as many
    units (the classifier) and make them searchable. The model's conventions (``preprocess``,
    ``input_range``, ``channels``, ``device``, ...) and the optimization's settings (``quality``,
    ``max_iter``, ``views``, ...) are `featvis.visualize_layer`'s. A rerun with other settings is an
    error naming what differs, unless ``restart=True`` (which deletes the folder's atlas first).

    With `data` (anything `featvis.dataset_examples` reads but a DataLoader: a folder, a
    list of paths, an array, a Dataset), every unit also gets its `examples` dataset
    examples (the images that drive it most, cropped to its receptive field), shown on
    its card: one pass over the data, split over the ranks (every world_size-th item to a rank),
    the per-rank top-k merged with a collective (`merge_examples`).

    Units lie on each layer's unit axis (a conv's channels, the features of a transformer's
    (N, tokens, features) outputs), averaged over the tokens when optimized and ranked by
    their maximum over the tokens for the examples (whole images); `unit_axis` and
    ``token`` (e.g. ``token=0``, the class token) choose as in `featvis.visualize_activation`.

    Every card but those of the first layer shows what the unit is "fed by": the `fed_by` units of
    the atlas layer that runs just before its layer that contribute most to it, each with its
    signed contribution and a thumbnail linking to its card (`featvis.contributions`: from the
    weights on a direct path, else gradient x activation over the unit's own image), stored in the
    unit's record (`fed_by` reads them). ``fed_by=0`` leaves them out; with `unit_axis` or `token`
    (whose units the contributions do not read) it must be 0 for an atlas of several layers.

    `model` may be a `PreparedModel` (its conventions are used; one given here that differs is an error); the
    whole atlas, its dataset examples included, runs through one prepared model. The work is three
    stages, each a function of its own: `plan_atlas` (layers, units, batches, manifest; every
    argument checked), `run_atlas` (the manifest, the dataset pass, this rank's share) and
    `publish_atlas` (rank 0: the report and the site).

    Examples:
        >>> featvis.atlas(model, "site/", ["conv1", "fc"], preprocess=featvis.zoo.Normalize())
        >>> featvis.atlas(vit, "vit-site/", ["encoder.layers.encoder_layer_5.mlp.0"], data="photos/")
        >>> with featvis.PreparedModel(model, preprocess=featvis.zoo.Normalize()) as prepared:
        ...     featvis.atlas(prepared, "site/", ["conv1"], data="photos/")
    """
    if not isinstance(model, nn.Module | PreparedModel):
        raise bad_type("model", model, "a torch.nn.Module or a featvis.PreparedModel")
    check_int("seed", seed, 0)
    check_int("fed_by", fed_by, 0)
    axis = {"unit_axis": check_unit_axis(unit_axis), "token": check_token(token)}
    rank, world_size, started = _distributed()
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    if (
        world_size > 1
        and torch.cuda.is_available()
        and conventions.get("device") is None
        and not isinstance(model, PreparedModel)
    ):  # each rank its own GPU, unless the model came prepared (on the device its maker chose)
        conventions["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    settings = Settings.take(
        dict(
            quality=quality,
            max_iter=max_iter,
            views=views,
            lr=lr,
            method=method,
            input_modifiers=input_modifiers,
            grad_modifier=grad_modifier,
            backprop_modifier=backprop_modifier,
            autocast=autocast,
            image_ema=image_ema,
            lr_schedule=lr_schedule,
            betas=betas,
            skip_gradient=skip_gradient,
        )
    )
    failure: BaseException | None = None
    try:
        with preparing(model, **conventions) as prepared:
            work = plan_atlas(
                prepared, out, layers, all_convolutions=all_convolutions, size=size, batch_size=batch_size,
                seed=seed, restart=restart, data=data, examples=examples, axis=axis, fed_by=fed_by,
                settings=settings,
            )  # fmt: skip
            started_at = time.perf_counter()
            done_before = run_atlas(prepared, work, rank, world_size, progress)
            if rank == 0:
                publish_atlas(
                    work, done_before, time.perf_counter() - started_at, world_size, title, class_names
                )
            _barrier(world_size, "the site")
    except BaseException as err:
        failure = err
        raise
    finally:
        _end_group(started, failure)
    return Path(out) / "index.html"


@dataclass
class AtlasPlan:
    """What an atlas will do, decided before any unit is drawn (`plan_atlas`): its folder, layers
    (name: unit count), batches, manifest, settings, image shape, seed, unit axes, data source,
    examples per unit and "fed by" layers; `run_atlas` carries it out and `publish_atlas` writes
    the site."""

    out: Path
    counts: dict[str, int]
    batches: list[Batch]
    manifest: dict
    settings: Settings
    shape: tuple[int, int]
    seed: int
    axis: dict
    batch_size: int
    chosen_batch: bool
    restart: bool
    source: ImageSource | None
    data: object
    examples: int
    earlier: dict[str, str]
    fed_by: int


def plan_atlas(
    prepared: PreparedModel,
    out: str | os.PathLike,
    layers: Sequence[LayerSpec] | None,
    *,
    all_convolutions: bool,
    size: int | tuple[int, int],
    batch_size: int | None,
    seed: int,
    restart: bool,
    data: object,
    examples: int,
    axis: dict,
    fed_by: int,
    settings: Settings,
) -> AtlasPlan:
    """Resolve the layers, count their units, choose the batch size and lay out the batches; checks
    every argument before any work (`atlas`'s arguments, its options already taken).

    Examples:
        >>> work = plan_atlas(prepared, "site/", ["conv1"], all_convolutions=False, size=64, ...)
        >>> len(work.batches), work.counts
    """
    out = Path(out)
    prepared.require_images("an atlas")
    shape = image_size(size)
    prepared.require_input_range("an atlas")
    if data is not None and prepared.inputs is not None:
        prepared.inputs.refuse_optimized(
            "with data=, the dataset examples feed every image of data with the same values of the "
            "other inputs"
        )
    prepared.probe_size(shape, "size")  # at the atlas's size: some models take no other
    chosen = all_layers(prepared) if all_convolutions else default_layers(prepared)
    chosen = list(layers) if layers is not None else chosen
    if not chosen or isinstance(layers, str):
        raise bad_type("layers", layers, "a non-empty list of layer names")
    names = [_layer_name(prepared, layer) for layer in chosen]
    if fed_by and len(names) > 1 and (axis["unit_axis"] is not None or axis["token"] is not None):
        raise bad_value(
            "fed_by",
            fed_by,
            "0 with unit_axis= or token= (the contributions read each layer's units on its own "
            "axis, averaged over its tokens)",
        )
    earlier = _earlier_layers(prepared, names) if fed_by else {}
    chosen_batch = batch_size is None
    if chosen_batch:  # what the memory allows, at most 32 on a GPU, 4 on the CPU; an atlas's own
        batch_size = _existing_batch_size(out, restart) or min(
            32 if prepared.device.type == "cuda" else 4,
            auto_batch_size(prepared, shape, settings.views),
        )
    check_int("batch_size", batch_size, 1)
    counts = {
        name: prepared.unit_count(layer, shape, axis["unit_axis"]) for name, layer in zip(names, chosen)
    }
    manifest = _manifest(prepared, settings, counts, shape, batch_size, seed)
    manifest["settings"].update({k: v for k, v in axis.items() if v is not None})
    manifest["settings"]["fed_by"] = fed_by
    source = None
    if data is not None:
        check_int("examples", examples, 1)
        source = image_source(data, channels=prepared.channels)
        if not isinstance(source, ImageSource):
            raise bad_type(
                "data", data, "a folder, a list of paths, an array or a Dataset (not a DataLoader)"
            )
        manifest["settings"]["examples"] = {"k": examples, **dataset_fingerprint(source)}
    batches = plan(counts, layer_costs(prepared, names, shape), batch_size)
    return AtlasPlan(
        out, counts, batches, manifest, settings, shape, seed, axis, batch_size, chosen_batch, restart,
        source, data, examples, earlier, fed_by,
    )  # fmt: skip


def run_atlas(
    prepared: PreparedModel, work: AtlasPlan, rank: int, world_size: int, progress: bool | None
) -> int:
    """Carry out `work` on this rank: check (rank 0: write) the manifest, run the dataset pass
    when the atlas has data, draw this rank's share of the batches, and wait for every rank;
    returns how many units were done before (a resumed atlas).

    Examples:
        >>> done_before = run_atlas(prepared, plan_atlas(prepared, "site/", ...), rank=0, world_size=1,
        ...                         progress=None)
    """
    out, manifest = work.out, work.manifest
    if rank == 0:
        _check_manifest(out, manifest, work.restart, write=True)
        _remove_partial_files(out)
    _barrier(world_size, "the manifest")
    batches = work.batches
    if rank != 0:
        if work.chosen_batch:  # rank 0's choice: one plan for every rank
            batch_size = json.loads((out / MANIFEST).read_text())["settings"]["batch_size"]
            if batch_size != work.batch_size:
                manifest["settings"]["batch_size"] = batch_size
                batches = plan(work.counts, layer_costs(prepared, list(work.counts), work.shape), batch_size)
        _check_manifest(out, manifest, False, write=False)
    if work.source is not None:
        _write_examples(
            prepared, out, work.counts, work.data, work.source, work.examples, rank, world_size, progress,
            work.axis,
        )  # fmt: skip
    mine = shard(batches, world_size)[rank]
    done_before = _run_share(
        prepared,
        work.settings,
        out,
        [batches[i] for i in mine],
        work.shape,
        work.seed,
        rank,
        world_size,
        progress,
        work.axis,
        (work.earlier, work.fed_by),
    )
    _barrier(world_size, "every unit drawn")
    return done_before


def publish_atlas(
    work: AtlasPlan,
    done_before: int,
    elapsed: float,
    world_size: int,
    title: str = "featvis atlas",
    class_names: Sequence[str] | None = None,
) -> Path:
    """On rank 0, once every unit is drawn: the timing report, the site (`write_site`), and the
    data pass's checkpoints removed; the index page's path.

    Examples:
        >>> publish_atlas(work, done_before=0, elapsed=12.5, world_size=1)
    """
    _report(work.out, work.batches, done_before, elapsed, world_size)
    index = write_site(work.out, title=title, class_names=class_names)
    shutil.rmtree(work.out / CHECKPOINTS, ignore_errors=True)
    return index


def _earlier_layers(prepared: PreparedModel, names: Sequence[str]) -> dict[str, str]:
    """Each atlas layer's earlier layer for its "fed by" row: the atlas layer that ends just before it
    in the forward pass (none for the first)."""
    order = {(name, call): i for i, (name, call, _, _) in enumerate(prepared.seen.events)}
    targets = {name: prepared.resolve(name) for name in names}
    ends = {name: order.get((t.name, t.call)) for name, t in targets.items()}
    ran = sorted((n for n in names if ends[n] is not None), key=lambda n: ends[n])
    return dict(zip(ran[1:], ran[:-1], strict=True))


def _fed_by_record(prepared, layer: str, unit: int, earlier: str, image: np.ndarray, k: int) -> dict:
    """The unit's "fed by" entry of its record: the `k` units of `earlier` of largest contribution
    (those that contribute nothing left out), over the unit's own image (as saved, in input_range)."""
    found = contributions(prepared, layer, unit, earlier, data=image[None])
    kept = [c for c in found.top(k) if c.sign != 0]
    return {"layer": earlier, "method": found.method, "units": [[c.unit, c.contribution] for c in kept]}


def fed_by(out: str | os.PathLike, layer: str, unit: int) -> list[Contribution]:
    """What unit `unit` of `layer` is fed by in the atlas in `out`: the units of the atlas layer just
    before it, largest contribution first, as its card shows them (empty for the first layer, or an
    atlas made with ``fed_by=0``). The numbers are `featvis.circuits`'s for that unit and layer.

    Examples:
        >>> featvis.atlas(model, "site/", ["conv1", "conv2"], input_range=(0.0, 1.0))
        >>> fed_by("site/", "conv2", 0)
        [Contribution(unit=3, contribution=2.0, sign=1, method='weights'),
         Contribution(unit=5, contribution=-1.5, sign=-1, method='weights')]
    """
    record_path = _unit_stem(Path(out), layer, unit).with_suffix(".json")
    if not record_path.exists():
        raise bad_value("unit", unit, f"a unit of layer {layer!r} drawn in the atlas in {str(out)!r}")
    entry = json.loads(record_path.read_text()).get("fed_by")
    if entry is None:
        return []
    return [Contribution(u, value, int(np.sign(value)), entry["method"]) for u, value in entry["units"]]


def _existing_batch_size(out: Path, restart: bool) -> int | None:
    """The batch size of the atlas already in `out` (a rerun keeps its plan), if any."""
    path = out / MANIFEST
    if restart or not path.exists():
        return None
    return json.loads(path.read_text()).get("settings", {}).get("batch_size")


def _remove_partial_files(out: Path) -> None:
    """The temporary files of writes cut short (a killed rank): before any rank writes again."""
    for partial in [*out.glob(".*.part"), *out.glob("units/*/.*.part")]:
        partial.unlink(missing_ok=True)


def _write_examples(prepared, out, counts, data, source, k, rank, world_size, progress, axis) -> None:
    """Each unit's dataset examples (`unit_XXXXX.examples.png` and `.json`), for units that lack them,
    through the atlas's prepared model; `axis`: `dataset_examples`'s unit_axis and token.

    Every rank reads its share of the data (every world_size-th item of `source`, the data's
    items), the shares' top-k are gathered and merged on every rank, and each rank writes every
    world_size-th unit. Rank 0 alone reports the items skipped, counted over all the shares.
    Each rank checkpoints its pass (`CHECKPOINTS`, per world size, rank and layers): a rank
    restarted after a kill goes on from its last checkpoint, and reads again only the items after it.
    """
    missing = {
        layer: [
            u for u in range(count) if not _unit_stem(out, layer, u).with_suffix(".examples.json").exists()
        ]
        for layer, count in counts.items()
    }
    layers = [layer for layer, units in missing.items() if units]
    if not layers:
        return
    # each item in one share (a DistributedSampler would pad the shares with repeated items, which
    # the totals would count twice); a rank past the last item reads one again, left out of them
    items = len(source)
    share = list(range(rank, items, world_size)) or ([rank % items] if items else [])
    key = hashlib.blake2b(json.dumps(layers).encode(), digest_size=6).hexdigest()
    checkpoint = out / CHECKPOINTS / f"examples-{world_size}x{rank}-{key}.pt"
    with warnings.catch_warnings():  # this share's count of skipped items: the totals come below
        warnings.filterwarnings("ignore", r"dataset_examples: used \d+ of", SkippedImagesWarning)
        mine = dataset_examples(
            prepared,
            layers,
            data,
            k=k,
            progress=show_progress(progress) and rank == 0,
            sampler=share,
            checkpoint=checkpoint,
            checkpoint_every=EXAMPLES_CHECKPOINT_EVERY,
            **axis,
        )
    shares = {layer: dataclasses.replace(result, _source=None) for layer, result in mine.items()}
    gathered = [shares]
    if world_size > 1:
        _barrier(world_size, "every share of the data read")  # a rank whose pass raised: no collective
        gathered = [None] * world_size
        try:
            dist.all_gather_object(gathered, shares)
        except RuntimeError as err:  # a peer died in it (gloo: connection closed)
            raise PeerLost(f"rank {rank}: gathering the dataset examples failed: {err}") from err
    merged = {
        layer: dataclasses.replace(
            merge_examples([part[layer] for part in gathered], k), _source=mine[layer]._source
        )
        for layer in layers
    }
    summary = DataSummary.combined(part[layers[0]].summary for part in gathered[:items])
    if rank == 0 and summary.skipped:
        warnings.warn(f"dataset_examples: {summary}", SkippedImagesWarning, stacklevel=3)
    jobs = [(layer, unit) for layer in layers for unit in missing[layer]]
    for layer, unit in jobs[rank::world_size]:
        _save_examples(out, layer, unit, merged[layer])


def _save_examples(out: Path, layer: str, unit: int, examples) -> None:
    side = 64
    crops = [
        np.asarray(to_pil(crop).resize((side, side), Image.Resampling.LANCZOS))
        for crop in examples.images(unit)
    ]
    stem = _unit_stem(out, layer, unit)
    cols = max(1, int(np.ceil(np.sqrt(len(crops)))))
    save_image(stitch_images(crops, cols=cols), stem.with_name(stem.name + ".examples.png"))
    row = examples.row(unit)
    record = {
        "sources": examples.sources(unit),
        "values": [float(f"{v:.6g}") for v in examples.values[row]],
    }
    atomic_write(stem.with_suffix(".examples.json"), lambda tmp: Path(tmp).write_text(json.dumps(record)))


def _manifest(prepared, settings, counts, shape, batch_size, seed) -> dict:
    def describe(value):
        return value if isinstance(value, int | float | str | bool | type(None)) else repr(value)

    return {
        "featvis": __version__,
        "model": fingerprint(prepared.model),
        "settings": {
            **{k: describe(v) for k, v in settings.__dict__.items() if k not in ("callbacks", "progress")},
            "size": list(shape),
            "batch_size": batch_size,
            "seed": seed,
            "input_range": list(prepared.input_range),
            "preprocess": repr(prepared.preprocess),
            "channels": prepared.channels,
        },
        "layers": counts,
    }


def _layer_name(prepared: PreparedModel, layer: LayerSpec) -> str:
    """The layer's name as the atlas files it: 'name', or 'name#k' for a module run several times."""
    target = prepared.resolve(layer)
    return target.name if prepared.seen.calls[target.name] == 1 else target.key


def _check_manifest(out: Path, manifest: dict, restart: bool, *, write: bool) -> None:
    """Write the manifest of a new atlas; for an existing one, refuse other settings (or start over)."""
    path = out / MANIFEST
    if path.exists() and restart:
        for folder in ("units", "timings"):
            shutil.rmtree(out / folder, ignore_errors=True)
        path.unlink()
    if path.exists():
        old = json.loads(path.read_text())
        differ = [
            f"{key}: {old.get(group, {}).get(key)!r} -> {value!r}"
            for group in ("settings",)
            for key, value in manifest[group].items()
            if old.get(group, {}).get(key) != value
        ]
        differ += [
            f"{key}: {old.get(key)!r} -> {manifest[key]!r}"
            for key in ("featvis", "model")
            if old.get(key) != manifest[key]
        ]
        if differ:
            raise FeatvisValueError(
                f"{out} holds an atlas made with other settings ({'; '.join(differ)}); "
                "use another folder, or restart=True to start over"
            )
        old["layers"] = {**old.get("layers", {}), **manifest["layers"]}
        manifest = old
    if write:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))


def _run_share(
    prepared, settings, out, batches, shape, seed, rank, world_size, progress, axis, feeding
) -> int:
    """Optimize this rank's batches, skipping those already written; returns how many units were skipped.
    `feeding`: ({layer: its earlier layer}, k) for each unit's "fed by" entry."""
    earlier, fed_by_k = feeding
    quiet = dataclasses.replace(settings, progress=False)
    total = sum(int(c) for c in json.loads((out / MANIFEST).read_text())["layers"].values())
    show = show_progress(progress) and rank == 0
    bar = tqdm(total=total, desc="atlas", unit="unit", disable=not show)
    skipped = 0
    (out / "timings").mkdir(parents=True, exist_ok=True)  # how long each batch took: not part of the atlas
    log = (out / "timings" / f"rank{rank}-{os.getpid()}.jsonl").open("a")
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's restarts so far
    for batch in batches:
        # the units of the batch not written yet: a batch cut short by a kill is drawn again whole (a
        # unit's image is bitwise the same in the same batch only) and only its missing units written
        todo = [
            unit
            for unit in batch.units
            if not _unit_stem(out, batch.layer, unit).with_suffix(".json").exists()
        ]
        skipped += len(batch.units) - len(todo)
        if not todo:
            continue
        start = time.perf_counter()
        result = visualize_layer(
            prepared,
            batch.layer,
            list(batch.units),
            batch_size=len(batch.units),
            size=shape,
            seed=seed,
            return_result=True,
            **axis,
            **{k: v for k, v in quiet.__dict__.items()},
        )
        images = to_array(result.images, prepared.input_range)
        reached = activations_reached(prepared, batch.layer, list(batch.units), images, **axis)
        records = {  # every unit's record first (the fed-by rows run the model), then the batch's files
            unit: {"layer": batch.layer, "unit": unit, "activation": float(value)}
            | (
                {"fed_by": _fed_by_record(prepared, batch.layer, unit, earlier[batch.layer], image, fed_by_k)}
                if batch.layer in earlier
                else {}
            )
            for unit, image, value in zip(batch.units, images, reached)
            if unit in todo
        }
        for unit, image in zip(batch.units, images):
            if unit not in records:
                continue
            stem = _unit_stem(out, batch.layer, unit)
            save_image(image, stem.with_suffix(".png"))
            save_image(_thumbnail(image), stem.with_name(stem.name + ".thumb.png"))
            record = records[unit]
            atomic_write(stem.with_suffix(".json"), lambda tmp, r=record: Path(tmp).write_text(json.dumps(r)))
        seconds = time.perf_counter() - start
        log.write(
            json.dumps(
                {
                    "layer": batch.layer,
                    "units": len(todo),
                    "seconds": seconds,
                    "rank": rank,
                    "attempt": attempt,
                    "unit_ids": todo,
                }
            )
        )
        log.write("\n")
        log.flush()
        if show:
            bar.n = _count_done(out)
            bar.refresh()
    bar.close()
    log.close()
    return skipped


def _thumbnail(image: np.ndarray) -> np.ndarray:
    pil = to_pil(image)
    pil.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def _count_done(out: Path) -> int:
    units = out / "units"
    return (
        sum(1 for folder in units.iterdir() for f in folder.iterdir() if UNIT_RECORD.fullmatch(f.name))
        if units.exists()
        else 0
    )


def _records(out: Path) -> dict[str, list[dict]]:
    """Every written unit's record, per layer, in unit order."""
    manifest = json.loads((out / MANIFEST).read_text())
    found: dict[str, list[dict]] = {}
    for layer in manifest["layers"]:
        folder = out / "units" / _slug(layer)
        files = (
            sorted(f for f in folder.glob("unit_*.json") if UNIT_RECORD.fullmatch(f.name))
            if folder.exists()
            else []
        )
        found[layer] = [json.loads(f.read_text()) for f in files]
    return found


def _report(out, work, skipped, elapsed, world_size) -> None:
    """Print units per minute of this run (wall clock) and per layer (of the processes' time, every run)."""
    made = sum(len(b.units) for b in work) - skipped
    lines = [
        f"atlas: {made} units made, {skipped} already there, {elapsed:.1f} s on {world_size} process(es)"
    ]
    if made and elapsed > 0:
        lines.append(f"  this run: {60 * made / elapsed:.1f} units per minute")
    per_layer: dict[str, list[float]] = {}
    for log in sorted((out / "timings").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a process killed while writing it
                continue
            totals = per_layer.setdefault(entry["layer"], [0, 0.0])
            totals[0] += entry["units"]
            totals[1] += entry["seconds"]
    for layer, (units, seconds) in per_layer.items():
        lines.append(f"  {layer}: {units} units, {60 * units / seconds:.1f} units per process-minute")
    print("\n".join(lines), file=sys.stderr)


def write_site(out: str | os.PathLike, *, title: str = "featvis atlas", class_names=None) -> Path:
    """(Re)write the static site over every unit written in `out`: an index with a row per layer and a
    search by unit number or class name, and a page per layer with a card per unit (lazy thumbnails).

    Examples:
        >>> write_site("site/", class_names=lite0.class_names)
    """
    out = Path(out)
    records = _records(out)
    entries, rows = [], []
    for layer, units in records.items():
        page = f"layer_{_slug(layer)}.html"
        labels = class_names if class_names is not None and len(class_names) == len(units) else None
        cards = []
        for e in units:
            stem = f"units/{_slug(layer)}/unit_{e['unit']:05d}"
            label = str(labels[e["unit"]]) if labels is not None else ""
            entries.append(
                {
                    "layer": layer,
                    "unit": e["unit"],
                    "label": label,
                    "thumb": f"{stem}.thumb.png",
                    "page": page,
                }
            )
            examples = ""
            if (out / f"{stem}.examples.png").exists():
                examples = (
                    f'<img src="{stem}.examples.png" loading="lazy" width="{THUMBNAIL}" height="{THUMBNAIL}" '
                    f'alt="dataset examples of unit {e["unit"]}" title="dataset examples">'
                )
            cards.append(
                f'<div class="card" data-unit="{e["unit"]}" data-label="{html.escape(label.lower())}">'
                f'<a href="{stem}.png"><img src="{stem}.thumb.png" loading="lazy" width="{THUMBNAIL}" '
                f'height="{THUMBNAIL}" alt="unit {e["unit"]}"></a>'
                f"{examples}<span>{e['unit']}{' ' + html.escape(label) if label else ''} · {e['activation']:.3g}</span>"
                f"{_fed_by_row(e.get('fed_by'))}</div>"
            )
        _write_page(out / page, f"{title}: {layer}", _layer_body(layer, len(units), cards))
        strip = "".join(
            f'<img src="units/{_slug(layer)}/unit_{e["unit"]:05d}.thumb.png" loading="lazy" '
            f'width="48" height="48" alt="unit {e["unit"]}">'
            for e in units[:16]
        )
        rows.append(
            f'<tr><td><a href="{page}">{html.escape(layer)}</a></td><td>{len(units)}</td>'
            f'<td class="strip">{strip}</td></tr>'
        )
    body = f"""<h1>{html.escape(title)}</h1>
<input id="search" placeholder="unit number or class name" autofocus>
<div id="results"></div>
<table><tr><th>layer</th><th>units</th><th>first units</th></tr>
{"".join(rows)}
</table>
<script>
const units = {json.dumps(entries)};
document.getElementById("search").addEventListener("input", event => {{
  const q = event.target.value.trim().toLowerCase();
  const found = q === "" ? [] : units.filter(u => String(u.unit) === q || (u.label && u.label.toLowerCase().includes(q)));
  document.getElementById("results").innerHTML = found.slice(0, 200).map(u =>
    `<a class="card" href="${{u.page}}#unit-${{u.unit}}"><img src="${{u.thumb}}" loading="lazy" width="{THUMBNAIL}" height="{THUMBNAIL}">` +
    `<span>${{u.layer}} ${{u.unit}} ${{u.label}}</span></a>`).join("");
}});
</script>"""
    return _write_page(out / "index.html", title, body)


def _fed_by_row(entry: dict | None) -> str:
    """A card's "fed by" row: each earlier unit's thumbnail, linking to its card, over its signed contribution."""
    if not entry or not entry["units"]:
        return ""
    earlier = entry["layer"]
    links = "".join(
        f'<a href="layer_{_slug(earlier)}.html#unit-{u}" data-unit="{u}" data-contribution="{value!r}" '
        f'title="{html.escape(earlier)} unit {u}: {value:+.4g}">'
        f'<img src="units/{_slug(earlier)}/unit_{u:05d}.thumb.png" loading="lazy" width="{FED_BY_THUMBNAIL}" '
        f'height="{FED_BY_THUMBNAIL}" alt="{html.escape(earlier)} unit {u}">'
        f'<span class="{"excites" if value > 0 else "inhibits"}">{u} {value:+.2g}</span></a>'
        for u, value in entry["units"]
    )
    title = f"fed by {earlier} ({entry['method']})"
    return (
        f'<div class="fedby" data-layer="{html.escape(earlier)}" title="{html.escape(title)}">'
        f"<small>fed by {html.escape(earlier)}</small>{links}</div>"
    )


def _layer_body(layer: str, count: int, cards: list[str]) -> str:
    return f"""<p><a href="index.html">index</a></p><h1>{html.escape(layer)} <small>{count} units</small></h1>
<input id="filter" placeholder="unit number or class name">
<div class="grid">{"".join(cards)}</div>
<script>
document.querySelectorAll(".card").forEach(c => c.id = "unit-" + c.dataset.unit);
document.getElementById("filter").addEventListener("input", event => {{
  const q = event.target.value.trim().toLowerCase();
  document.querySelectorAll(".card").forEach(c => {{
    c.style.display = q === "" || c.dataset.unit === q || c.dataset.label.includes(q) ? "" : "none";
  }});
}});
</script>"""


def _write_page(path: Path, title: str, body: str) -> Path:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
small {{ font-weight: normal; color: #666; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
.strip {{ white-space: nowrap; }} .strip img {{ margin-right: 2px; }}
.grid, #results {{ display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0; }}
.card {{ display: flex; flex-direction: column; align-items: center; width: {THUMBNAIL + 8}px;
  text-decoration: none; color: #333; font-size: 11px; }}
.card img {{ border: 1px solid #ccc; }} .card a {{ text-decoration: none; color: #333; }}
.fedby {{ display: flex; flex-wrap: wrap; justify-content: center; gap: 2px; margin-top: 2px; }}
.fedby small {{ width: 100%; text-align: center; font-size: 10px; }}
.fedby a {{ display: flex; flex-direction: column; align-items: center; font-size: 9px; }}
.excites {{ color: #1a7f37; }} .inhibits {{ color: #c62828; }}
input {{ font-size: 1em; padding: 4px; width: 20em; }}
</style></head>
<body>
{body}
</body></html>
"""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
