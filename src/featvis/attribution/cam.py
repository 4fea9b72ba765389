"""The CAM machinery: a CAM method (`CamMethod`) says what it needs, and `cam_map` gives it that
for a prepared model, a loss and images: the penultimate layer (found when not given: the last
map-like or token layer before the loss's layer), its activations as (N, C, *spatial) maps
(token outputs put on their patch grid, channels-last outputs moved first), the score's gradient
w.r.t. them, and scorers that run the model on masked images or ablated activations. Every hook
featvis puts on the model here goes through the model's guard (`PreparedModel.hooks`).

Examples:
    >>> class Mean(CamMethod):
    ...     needs = frozenset()  # no gradient
    ...     def map(self, ctx):
    ...         return ctx.activations.mean(1)
    >>> with featvis.PreparedModel(model, input_range=(0, 1)) as prepared:
    ...     maps = Mean().attribute(prepared, ActivationMaximization("fc", 3), images, penultimate_layer="act2")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F

from featvis.attribution.scoring import loss_terms, resize_map, row_scores, scorer
from featvis.errors import FeatvisError, NonFiniteError, bad_value
from featvis.model import tokens
from featvis.model.prepared import PreparedModel
from featvis.model.targets import LayerSpec
from featvis.optvis import grad_modifiers
from featvis.optvis.losses import Loss, LossContext


@dataclass
class CamContext:
    """What a `CamMethod` sees.

    `activations` and `gradients` (None when the method needs none) are the layer's
    (N, C, h, w) output and the score's gradient w.r.t. it, in float32; `images` the
    batch (N, C, H, W) as featvis holds it. ``score(index)`` scores rows that are copies of
    images ``index`` (a (R,) tensor of image indices, any number of rows per image): one
    score per row (the quantity the map explains, with each image's own units when the loss
    gives each image its own, as `UnitPerImage` does), without gradients;
    ``score(index, masks=masks)`` the same with the model input multiplied by `masks`
    (R, 1, H, W). ``score_ablated(index, scale, fill=None)`` runs image `index` with the layer's
    output multiplied channel-wise by each row of `scale` (K, C), the removed part replaced by
    `fill` (C,) when given, and returns K scores. Both run at most `batch_size` rows per forward.
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    images: torch.Tensor
    score: Callable[..., torch.Tensor]
    score_ablated: Callable[..., torch.Tensor]
    batch_size: int


class CamMethod:
    """A CAM method: `map` turns a `CamContext` into (N, h, w) maps at the layer's size.

    `needs` says what the driver must provide besides the activations: ``"gradients"`` (the
    score's gradient w.r.t. the layer; without it ``ctx.gradients`` is None and no backward pass
    runs) and ``"channels"`` (the layer's own (N, C, *spatial) output: a token layer or a
    channels-last output is refused). `rows_per_forward` is the default of ``ctx.batch_size``;
    `name`, the registered name, is how messages call the method. `attribute` gives the maps of a
    prepared model, a loss and images, at the images' size and not normalized; calling the
    method on a context is `map`.

    Examples:
        >>> @featvis.attention.CAM_METHODS.register("gradient_energy")
        ... class GradientEnergy(CamMethod):
        ...     def map(self, ctx):
        ...         return (ctx.activations * ctx.gradients.square()).sum(1).relu()
        >>> featvis.visualize_cam(model, "fc", 3, image, method="gradient_energy")
    """

    needs: frozenset[str] = frozenset({"gradients"})
    name: str | None = None

    def map(self, ctx: CamContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define map()")

    def __call__(self, ctx: CamContext) -> torch.Tensor:
        return self.map(ctx)

    def rows_per_forward(self, images: torch.Tensor) -> int:
        """Rows per forward of the context's scorers for these images (64)."""
        return 64

    def attribute(
        self,
        prepared: PreparedModel,
        loss: Loss,
        images: torch.Tensor,
        *,
        penultimate_layer: LayerSpec | None = None,
        grad_modifier: str | Callable | None = None,
        batch_size: int | None = None,
        token_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The (B, *spatial) maps at the images' size, not normalized (see `cam_map`)."""
        return cam_map(self, prepared, loss, images, penultimate_layer, grad_modifier, batch_size, token_grid)


def _on_first_call(make: Callable[[], Callable]) -> Callable:
    """A function that calls ``make()`` on its first call and then what it made: a scorer's model
    runner (a fused copy, checked) is built only for a method that scores (not for Eigen-CAM)."""
    made = []

    def call(*args, **kwargs):
        if not made:
            made.append(make())
        return made[0](*args, **kwargs)

    return call


def _prefix_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Input sizes to try for the layers before an ablated layer, smallest first: 1, 2, 4, ... px,
    up to a quarter of the image."""
    sizes, side = [], 1
    while side < max(h, w) // 4:
        sizes.append((min(h, side), min(w, side)))
        side *= 2
    sizes.append((min(h, max(32, h // 4)), min(w, max(32, w // 4))))
    return list(dict.fromkeys(sizes))


def _ablated_scorer(
    prepared: PreparedModel,
    loss: Loss,
    layer: LayerSpec,
    images: torch.Tensor,
    acts: torch.Tensor,
    batch_size,
):
    """(index, scale (K, C), fill=None) -> K scores of image `index` with `layer`'s output replaced
    by its activations `acts[index]` scaled channel-wise by each row of `scale`, plus
    ``(1 - scale) * fill`` when `fill` (C,) is given.

    What comes after the layer runs on the K replacements at full size. The layers before it
    only have to run, so they run as cheaply as reproduces the model's own scores (checked once,
    on the first image, unablated and with half the channels ablated, against the layers
    before run on K copies of the image): on one row, the image fed alone (the replacement
    broadcast over K rows), else fed as K rows of which every module before the layer sees the
    first only (for a model that reads the batch size from its input, as EfficientNet does),
    else K copies; each on the image shrunk to 1, 2, 4, ... px, the smallest that works, else
    at full size. Through the fused runner."""
    terms, targets = loss_terms(prepared, loss)
    target = prepared.resolve(layer, "penultimate_layer")
    # the fused runner (batch norms folded; the ablated layer and the loss's layers kept as they are)
    runner, capture, channels_last = prepared.runner([*targets.values(), target], images.shape[1:])
    module = runner.get_submodule(target.name) if target.name else runner
    leaves = [m for m in runner.modules() if next(m.children(), None) is None]
    state = {"replacement": None, "calls": 0, "first_row": False}

    def hook(mod, inputs, output):
        calls, state["calls"] = state["calls"], state["calls"] + 1
        if calls != target.call or state["replacement"] is None:
            return None
        state["first_row"] = False  # the layers after see every row
        return state["replacement"].to(output.dtype)

    def first_row(mod, inputs):
        if not state["first_row"] or not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        if inputs[0].ndim == 0 or inputs[0].shape[0] <= 1:
            return None
        return (inputs[0][:1], *inputs[1:])

    def run(
        index: int, scale: torch.Tensor, how: tuple[str, tuple[int, int] | None], fill=None
    ) -> torch.Tensor:
        rows_mode, size = how
        image = images[index : index + 1]
        replacement = acts[index : index + 1] * scale[:, :, None, None]
        if fill is not None:  # the ablated part takes the value `fill` instead of 0
            replacement = replacement + (1 - scale[:, :, None, None]) * fill.view(1, -1, 1, 1)
        if capture.channels_last:
            replacement = replacement.movedim(1, -1)
        k = len(scale)
        state["replacement"], state["calls"], state["first_row"] = replacement, 0, rows_mode == "first_row"
        if size is not None:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        x = prepared.model_input(image)  # one row, preprocessed once
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if rows_mode != "broadcast":  # K rows for the model to count; copies of the one row
            x = x.expand(k, *x.shape[1:])
            if rows_mode == "copies" and channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        try:
            activations = capture.run(runner, x)
        finally:
            state["first_row"] = False
        rows = torch.full((k,), index, device=images.device)
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets, row_images=rows)
        return row_scores(ctx, terms).float()

    chosen = {}
    full = ("copies", None)

    def choose(index: int, channels: int, device) -> tuple[str, tuple[int, int] | None]:
        check = torch.ones(2, channels, device=device)
        check[1, : channels // 2] = 0
        expected = run(index, check, full)
        for rows_mode in ("broadcast", "first_row", "copies"):
            for size in [*_prefix_sizes(*images.shape[-2:]), None]:
                if (rows_mode, size) == full:
                    continue
                try:
                    got = run(index, check, (rows_mode, size))
                except FeatvisError:
                    continue
                if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
                    return rows_mode, size
        return full

    def score_ablated(index: int, scale: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
        hooks = prepared.hooks(forward=[(module, hook)], pre=[(leaf, first_row) for leaf in leaves])
        try:
            with hooks, torch.no_grad():
                if "how" not in chosen:
                    chosen["how"] = choose(index, scale.shape[1], scale.device)
                chunks = scale.split(batch_size)
                return torch.cat([run(index, chunk, chosen["how"], fill) for chunk in chunks])
        finally:
            state["replacement"] = None

    return score_ablated


def layer_gradients(
    prepared: PreparedModel, loss: Loss, images: torch.Tensor, layer: LayerSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output of `layer` (channels first, float32) and the score's gradient w.r.t. it (None when the
    score does not depend on it). The layers before run without a graph: the backward pass starts at
    `layer`, not at the images, which is what makes a CAM cheaper than a saliency map (and TCAV's
    directional derivatives cheap).

    Examples:
        >>> acts, grads = layer_gradients(prepared, UnitPerImage("_fc", [285]), images, "_blocks.10")
    """
    terms = [(t, w) for t, w in loss.terms if w != 0]
    prepared.probe(images)
    targets = prepared.resolve_all(layer for term, _ in terms for layer in term.layers())
    extra = prepared.resolve(layer, "penultimate_layer")
    capture = prepared.capture([*targets.values(), extra])
    call = int(extra.key.rsplit("#", 1)[1])
    state = {"calls": 0, "leaf": None}

    def hook(module, inputs, output):
        calls, state["calls"] = state["calls"], state["calls"] + 1
        if calls == call and not isinstance(output, torch.Tensor):
            state["structured"] = type(output).__name__
        if calls == call and isinstance(output, torch.Tensor) and output.is_floating_point():
            state["leaf"] = output.detach().requires_grad_(True)
            return state["leaf"].clone()  # an in-place op after the layer (torchvision's DenseNet,
            # Inception and ConvNeXt: ReLU(inplace=True), x += ...) changes this copy, not the leaf
        return None

    with prepared.hooks(forward=[(extra.module, hook)]), torch.enable_grad():
        activations = capture.run(prepared.model, prepared.model_input(images.detach()))
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
        score = -sum(w * ctx.per_image(t(ctx)) for t, w in terms).sum()
        leaf = state["leaf"]
        if leaf is None and "structured" in state:
            raise bad_value(
                "penultimate_layer",
                layer if isinstance(layer, str | int) else extra.name,
                f"a layer whose output is one tensor ({extra.name!r} gives a {state['structured']}, "
                "whose gradient featvis cannot take); choose a layer inside it",
            )
        if leaf is None or not score.requires_grad:
            return activations[extra.key].detach().float(), None
        (grad,) = torch.autograd.grad(score, leaf, allow_unused=True)
    acts = activations[extra.key].detach().float()
    if grad is None:
        return acts, None
    if not torch.isfinite(grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    grad = grad.float()
    return acts, (grad.movedim(-1, 1) if grad.shape != acts.shape else grad)


def _as_map(prepared, penultimate, acts, grads, images, token_grid):
    """A penultimate layer's output and gradient as (N, C, *spatial) maps like the images': conv outputs
    as they are, channels-last blocks (Swin) moved channels-first, token outputs (N, tokens, features)
    on their patch grid (leading class/register tokens dropped); and whether they were converted."""
    target = prepared.resolve(penultimate, "penultimate_layer")
    axis = target.unit_axis
    spatial = images.ndim - 2
    if acts.ndim == images.ndim:
        if axis == 1:
            return acts, grads, False
        moved = (acts.movedim(axis, 1), None if grads is None else grads.movedim(axis, 1))
        return *moved, True
    if acts.ndim == 3 and spatial == 2:
        (rows, cols), extra = token_grid_of(acts.shape[1 if axis != 1 else 2], images, token_grid, target)
        grid = (rows, cols)
        return (
            tokens.to_grid(acts, axis, grid, extra),
            None if grads is None else tokens.to_grid(grads, axis, grid, extra),
            True,
        )
    expected = "(N, C, H, W) or (N, tokens, features)" if spatial == 2 else f"(N, C, {spatial} spatial axes)"
    raise bad_value(
        "penultimate_layer", penultimate, f"a layer with {expected} output (it gives {tuple(acts.shape)})"
    )


def token_grid_of(count: int, images: torch.Tensor, token_grid, target) -> tuple[tuple[int, int], int]:
    """The patch grid and leading-token count of a token layer for these images."""
    return tokens.token_grid(
        count, tuple(images.shape[-2:]), tokens.check_token_grid(token_grid), str(target)
    )


def cam_map(
    method: CamMethod,
    prepared: PreparedModel,
    loss: Loss,
    images: torch.Tensor,
    penultimate_layer: LayerSpec | None = None,
    grad_modifier: str | Callable | None = None,
    batch_size: int | None = None,
    token_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The (B, *spatial) class activation map of `method` at the images' size, not normalized: the
    penultimate layer's activations (and the score's gradient w.r.t. them, where the method
    `needs` it, modified by `grad_modifier`) put in a `CamContext` for ``method.map``."""
    batch_size = batch_size if batch_size is not None else method.rows_per_forward(images)
    modifier = grad_modifiers.get(grad_modifier)
    needs_gradients = "gradients" in method.needs
    candidates = [penultimate_layer]
    if penultimate_layer is None:
        candidates = _auto_penultimates(prepared, loss, images, token_grid)
    for tried, penultimate in enumerate(candidates):
        if needs_gradients or penultimate_layer is None:
            acts, grads = layer_gradients(prepared, loss, images, penultimate)
        else:
            prepared.probe(images)
            prepared.resolve(penultimate, "penultimate_layer")
            acts, grads = prepared.layer_output(penultimate, images).float(), None
        acts, grads, converted = _as_map(prepared, penultimate, acts, grads, images, token_grid)
        # a token layer whose patch tokens do not reach the score (a ViT's final norm feeds only the
        # class token to the head): try the layer before, as pytorch-grad-cam's ViT recipe does
        automatic_token = penultimate_layer is None and converted and tried + 1 < len(candidates)
        if automatic_token and (grads is None or not bool(grads.abs().amax() > 0)):
            continue
        break
    if not needs_gradients:
        grads = None
    if needs_gradients and grads is None:
        raise bad_value(
            "penultimate_layer", penultimate, "a layer the loss depends on (it runs before the loss's layer)"
        )
    if modifier is not None and grads is not None:
        grads = modifier(grads)
    if converted and "channels" in method.needs:
        raise bad_value(
            "method",
            method.name or method,
            f"another CAM method for layer {penultimate!r}, whose output is not (N, C, H, W) (this method "
            "reads the layer's own channels: Ablation-CAM replaces its output channel by channel)",
        )
    ctx = CamContext(
        activations=acts,
        gradients=grads,
        images=images,
        score=_on_first_call(lambda: scorer(prepared, loss, images, batch_size)),
        score_ablated=_on_first_call(
            lambda: _ablated_scorer(prepared, loss, penultimate, images, acts, batch_size)
        ),
        batch_size=batch_size,
    )
    return resize_map(method.map(ctx)[:, None], images.shape[2:])[:, 0]


def _last_attention_input(prepared: PreparedModel, target) -> str | None:
    """The last leaf call with a token output before the last attention that runs before `target`:
    the input of a transformer block's attention (its first norm). An attention is a module that
    computes one (`Probe.attention_modules`: an `nn.MultiheadAttention`, timm's and Hugging Face's
    attention modules, any module that calls a softmax over token pairs or a fused attention
    kernel); its input is the token output finished before the first of its layers ran."""
    events = prepared.seen.events
    end = next((i for i, e in enumerate(events) if e[0] == target.name and e[1] == target.call), len(events))
    attentions = prepared.seen.attention_modules
    for index in range(end - 1, -1, -1):
        name, call = events[index][:2]
        if name in attentions and name:
            start = prepared.seen.starts.get(f"{name}#{call}", index)  # before its first layer ran
            for label, called, shape, leaf in reversed(events[:start]):
                if leaf and shape is not None:  # a token output, not a map (Swin's norm: maps win)
                    return f"{label}#{called}" if len(shape) == 3 else None
            return None
    return None


def _inside_attentions(seen) -> set[str]:
    """The module calls ('name#call') that run inside an attention's call, and its own: its layers and
    the modules it calls (CoaT's convolutional position encoding, a module of the model shared by
    its blocks)."""
    inside = set()
    for index, (name, call, _, _) in enumerate(seen.events):
        if name and name in seen.attention_modules:
            start = seen.starts.get(f"{name}#{call}", index)
            inside.update(f"{n}#{c}" for n, c, _, _ in seen.events[start : index + 1])
    return inside


def _is_map(shape: tuple[int, ...], axis: int, images: torch.Tensor) -> bool:
    """Whether a layer output of `shape` (units on `axis`) is a map of the images, of more than one
    position: its spatial axes a scaled-down copy of the images' (each at most the image's, in
    the same proportions within rounding), not an attention's (heads, tokens, features)."""
    if len(shape) != images.ndim:
        return False
    spatial = shape[2:] if axis == 1 else shape[1:-1]
    if math.prod(spatial) <= 1 or any(s > i for s, i in zip(spatial, images.shape[2:])):
        return False
    scales = [i / s for s, i in zip(spatial, images.shape[2:])]
    return max(scales) <= 1.5 * min(scales)


def _auto_penultimates(prepared: PreparedModel, loss: Loss, images: torch.Tensor, token_grid) -> list[str]:
    """Layers to try as the penultimate layer, best first: the last module call (a leaf or a block)
    before the loss's layer whose output is a map like the images' (N, C, *spatial; or
    channels-last), or a token output
    whose tokens make a grid of more than one patch for these images; for a token output, the
    token layers before it too (the input of the last attention first). The layers inside an
    attention module are passed over."""
    specs = [layer for term, w in loss.terms if w != 0 for layer in term.layers()]
    if not specs:
        raise bad_value("penultimate_layer", None, "a layer name: the losses read no layer to search before")
    prepared.probe(images)
    target = prepared.resolve(specs[0])
    found: list[str] = []
    attention_input = _last_attention_input(prepared, target)
    inside = _inside_attentions(prepared.seen)
    for label, shape in prepared.seen.outputs_before(target):
        if len(shape) not in (3, images.ndim) or shape[0] != 1 or label in inside:
            continue  # an attention's own layers (its queries, keys, weights), patches or windows
            # folded into the batch axis (one image probed gave several rows): no map of the image
        axis = prepared.resolve(label, "penultimate_layer").unit_axis
        if _is_map(shape, axis, images):
            found.append(label)
            break  # a map: the classic choice, and nothing earlier is needed
        if len(shape) == 3 and images.ndim == 4 and (len(found) < 8 or label == attention_input):
            try:
                (rows, cols), _ = token_grid_of(shape[2 if axis == 1 else 1], images, token_grid, label)
            except FeatvisError:
                continue
            if rows * cols > 1:  # one patch (a class-token-only layer, a 1 x 1 grid) is no map
                found.append(label)
        if label == attention_input and label in found:  # pytorch-grad-cam's ViT recipe: the last
            found.insert(0, found.pop())  # block's first norm, unless a map runs after it
    if not found:
        raise bad_value(
            "penultimate_layer", None, f"a layer name: no layer with spatial output runs before {specs[0]!r}"
        )
    return found
