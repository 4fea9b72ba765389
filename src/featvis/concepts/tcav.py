"""Concept activation vectors and TCAV (Kim et al. 2018, "Interpretability beyond feature attribution").

A concept is given by example images (striped things, say) and random images;
`cav` fits a linear classifier that separates their activations at a layer,
and its unit normal (pointing to the concept) is the concept's direction there.
`tcav` asks whether a class is sensitive to the concept: the share of the
class's images whose class logit grows when the layer's activation moves along
the CAV, against the same share for CAVs of random images, with a t-test.

Examples:
    >>> stripes = featvis.concepts.cav(model, "layer3", "striped/", "random/0/")
    >>> stripes.accuracy, stripes.vector.shape
    (0.97, torch.Size([256]))
    >>> result = featvis.concepts.tcav(model, "layer3", "striped/", "zebra/", 340,
    ...                                random_sets=[f"random/{i}/" for i in range(10)])
    >>> result.score, result.p_value, result.significant
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import math
import numbers
import os
import warnings

import numpy as np
import torch
from torch import nn

from featvis.attribution.cam import layer_gradients
from featvis.concepts.directions import check_reduce, image_batches, layer_samples, units_first
from featvis.errors import bad_type, bad_value, check_int, check_number, known_keywords
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.optvis.losses import ActivationMaximization, Direction

CLASSIFIERS = ("logistic", "sgd")


@dataclass
class CAV:
    """A concept activation vector: ``vector`` (channels,), unit norm, pointing from the random images to
    the concept's; ``accuracy``: the classifier's accuracy on the held-out share of both sets;
    ``classifier``: the fitted scikit-learn pipeline (a StandardScaler, then the linear classifier)
    that takes the layer's activation vectors (N, channels).

    Pass it wherever a direction goes: ``featvis.losses.Direction(layer, cav)``, or ``cav.objective()``.

    Examples:
        >>> stripes = featvis.concepts.cav(model, "conv2", striped, smooth)
        >>> stripes.accuracy > 0.9, float(stripes.vector.norm())
        (True, 1.0)
        >>> image = featvis.visualize_activation_with_losses(model, stripes.objective())
    """

    layer: LayerSpec
    vector: torch.Tensor
    accuracy: float
    classifier: object
    concept_count: int
    random_count: int
    reduce: str = "mean"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.vector.numpy().astype(dtype or np.float32)

    def objective(self, **options) -> Direction:
        """A `featvis.losses.Direction` that grows the concept (`options`: ``cossim_pow``, ``x``, ...).

        Examples:
            >>> image = featvis.visualize_activation_with_losses(model, stripes.objective(cossim_pow=2))
        """
        return Direction(self.layer, self.vector, **options)


def _classifier(classifier: object, seed: int):
    """A fresh, seeded scikit-learn linear classifier: a name or an estimator of the user (cloned)."""
    if isinstance(classifier, str):
        if classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            # Newton steps on the Cholesky of the Hessian: a few ms for a few thousand channels or less
            return LogisticRegression(solver="newton-cholesky", max_iter=200, random_state=seed)
        if classifier == "sgd":  # the TCAV paper's: a linear SVM by SGD, alpha=0.01
            from sklearn.linear_model import SGDClassifier

            return SGDClassifier(alpha=0.01, max_iter=2000, tol=1e-4, random_state=seed)
        raise bad_value("classifier", classifier, "'logistic', 'sgd' or a scikit-learn linear classifier")
    if not (hasattr(classifier, "fit") and hasattr(classifier, "get_params")):
        raise bad_type("classifier", classifier, "'logistic', 'sgd' or a scikit-learn linear classifier")
    from sklearn.base import clone

    estimator = clone(classifier)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    return estimator


def _split(count: int, hold_out: float, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of one set: at least one of each."""
    order = generator.permutation(count)
    tested = min(count - 1, max(1, round(hold_out * count)))
    return order[tested:], order[:tested]


def fit_cav(
    layer: LayerSpec,
    concept: torch.Tensor,
    other: torch.Tensor,
    *,
    classifier: object = "logistic",
    hold_out: float = 0.3,
    seed: int = 0,
    reduce: str = "mean",
) -> CAV:
    """The CAV separating two sets of activation vectors (N, channels), fitted on the rest of a seeded
    held-out split of each set (`hold_out` of it, at least one image) and scored on that split.

    Examples:
        >>> fit_cav("conv2", torch.randn(20, 16) + 1, torch.randn(20, 16)).accuracy
    """
    generator = np.random.default_rng(seed)
    a, b = concept.double().numpy(), other.double().numpy()
    train_a, test_a = _split(len(a), hold_out, generator)
    train_b, test_b = _split(len(b), hold_out, generator)
    x_train = np.concatenate([a[train_a], b[train_b]])
    y_train = np.concatenate([np.ones(len(train_a)), np.zeros(len(train_b))])
    x_test = np.concatenate([a[test_a], b[test_b]])
    y_test = np.concatenate([np.ones(len(test_a)), np.zeros(len(test_b))])
    # fitted on standardized activations (channels of very different scales, one L2 penalty over them);
    # w . (x - mean) / scale = (w / scale) . x + c: the boundary's normal in the layer's own space is w / scale
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = _classifier(classifier, seed)
    pipeline = make_pipeline(StandardScaler(), estimator)
    pipeline.fit(x_train, y_train)  # classes_ sorted: coef_ points to label 1, the concept
    coef = getattr(estimator, "coef_", None)
    if coef is None:
        raise bad_type("classifier", classifier, "a linear classifier (one with coef_ after fit)")
    vector = torch.as_tensor(np.asarray(coef, dtype=np.float64).reshape(-1) / pipeline[0].scale_)
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise bad_value(
            "concept_images",
            "images whose activations the classifier cannot separate at all",
            "concept images that differ from the random ones at this layer",
        )
    accuracy = float(pipeline.score(x_test, y_test))
    return CAV(layer, (vector / norm).float(), accuracy, pipeline, len(a), len(b), reduce)


def _check_common(hold_out: object, seed: object, batch_size: object, size: object) -> float:
    hold_out = check_number("hold_out", hold_out, positive=True)
    if hold_out >= 1:
        raise bad_value("hold_out", hold_out, "a share of each set in (0, 1)")
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    if size is not None:
        check_int("size", size, 1)
    return hold_out


def _set_samples(prepared, layer, data, argument, reduce, size, batch_size) -> torch.Tensor:
    samples, _ = layer_samples(
        prepared, layer, data, argument, reduce=reduce, size=size, batch_size=batch_size
    )
    if len(samples) < 2:
        raise bad_value(argument, f"{len(samples)} image", "at least 2 images (some are held out)")
    return samples


@known_keywords
def cav(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    concept_images: object,
    random_images: object,
    *,
    reduce: str = "mean",
    classifier: object = "logistic",
    hold_out: float = 0.3,
    seed: int = 0,
    size: int | None = None,
    batch_size: int = 32,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> CAV:
    """A concept activation vector at `layer`: the normal of a linear classifier that tells
    `concept_images` from `random_images` by their activations there.

    Each image gives one activation vector, its channels' spatial mean (``reduce="max"``: their
    maximum), so the CAV lives in the layer's channel space, as `featvis.losses.Direction` and
    `featvis.concepts.activation_directions` do. The images are anything featvis reads as data
    (a folder, a list of paths, an array or tensor of images in `input_range`, a Dataset, ...), at
    least 2 each. `classifier`: ``"logistic"`` (scikit-learn's LogisticRegression), ``"sgd"`` (the
    paper's SGDClassifier, alpha=0.01) or an estimator of your own (cloned); seeded with `seed`,
    which also draws the held-out split (`hold_out` of each set) that ``accuracy`` is measured on.
    `size`: the side images read from files are resized and cropped to (as in
    `featvis.dataset_examples`); `batch_size` images per forward. The model's conventions,
    `input_range` to `output`, are `featvis.prepared.PreparedModel`'s (a model prepared already
    keeps its own); the model is left as it was.

    Examples:
        >>> stripes = featvis.concepts.cav(net, "conv2", striped, smooth)
        >>> stripes.accuracy
        1.0
        >>> loss = featvis.losses.Direction("conv2", stripes)
    """
    reduce = check_reduce(reduce, ("mean", "max"))
    hold_out = _check_common(hold_out, seed, batch_size, size)
    _classifier(classifier, seed)  # a bad classifier fails before the model runs
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
    with preparing(model, **conventions) as prepared:
        concept = _set_samples(prepared, layer, concept_images, "concept_images", reduce, size, batch_size)
        other = _set_samples(prepared, layer, random_images, "random_images", reduce, size, batch_size)
    return fit_cav(layer, concept, other, classifier=classifier, hold_out=hold_out, seed=seed, reduce=reduce)


@dataclass
class TCAVResult:
    """TCAV's answer for one class, concept and layer.

    ``score``: the mean over runs of ``scores``, each the share of class images whose class logit
    grows along that run's CAV; ``random_scores``: the same share for CAVs of one random set
    against another; ``p_value``: a two-sided t-test of the two;
    ``significant``: ``p_value < alpha``. ``accuracies``: each concept CAV's held-out accuracy;
    ``cavs``: the concept CAVs; ``derivatives``: each class image's directional derivative along
    each run's CAV (runs, images).

    Examples:
        >>> print(result)
        TCAV score 0.93 (random 0.51), p=0.0004: significant
    """

    layer: LayerSpec
    class_index: int
    score: float
    scores: np.ndarray
    random_scores: np.ndarray
    p_value: float
    significant: bool
    alpha: float
    accuracies: np.ndarray
    cavs: list[CAV] = field(repr=False)
    derivatives: np.ndarray = field(repr=False)

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return (
            f"TCAV score {self.score:.2f} (random {float(np.mean(self.random_scores)):.2f}), "
            f"p={self.p_value:.2g}: {verdict}"
        )


def _check_random_sets(random_sets: object) -> list:
    if isinstance(random_sets, str | os.PathLike) or not isinstance(random_sets, Sequence):
        raise bad_type(
            "random_sets",
            random_sets,
            "a list of at least 2 image sets (folders, lists of paths, arrays, ...)",
        )
    sets = list(random_sets)
    if len(sets) < 2:
        raise bad_value("random_sets", f"{len(sets)} set(s)", "a list of at least 2 random image sets")
    if all(isinstance(s, str | os.PathLike) and os.path.isfile(s) for s in sets):
        raise bad_value(
            "random_sets",
            "a list of image files",
            "a list of image sets, each a folder, a list of paths or an array (not one list of files)",
        )
    return sets


def _class_derivatives(prepared, layer, logit_layer, class_index, data, size, batch_size) -> torch.Tensor:
    """For each class image, the gradient of its class logit w.r.t. `layer`'s output, summed over positions:
    (N, channels), so ``gradient @ v`` is the logit's derivative when every position moves along ``v``."""
    loss = ActivationMaximization(logit_layer, class_index)
    rows = []
    for images in image_batches(prepared, data, "class_images", size=size, batch_size=batch_size):
        if not rows:
            logits = units_first(prepared.layer_output(logit_layer, images[:1]), prepared, logit_layer)
            if class_index >= logits.shape[1]:
                raise bad_value("class_index", class_index, f"an index in [0, {logits.shape[1] - 1}]")
        _, grad = layer_gradients(prepared, loss, images, layer)
        if grad is None:
            raise bad_value(
                "layer", layer, f"a layer that {logit_layer or 'the model output'!r} depends on (it does not)"
            )
        rows.append(units_first(grad, prepared, layer).sum(2).double().cpu())
    return torch.cat(rows)


@known_keywords
def tcav(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    concept_images: object,
    class_images: object,
    class_index: int,
    *,
    random_sets: Sequence[object],
    runs: int | None = None,
    logit_layer: LayerSpec = "",
    alpha: float = 0.05,
    reduce: str = "mean",
    classifier: object = "logistic",
    hold_out: float = 0.3,
    seed: int = 0,
    size: int | None = None,
    batch_size: int = 32,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> TCAVResult:
    """TCAV: how much class `class_index` leans on a concept at `layer`, and whether that beats chance.

    Run r fits the concept's CAV against random set ``r % len(random_sets)`` (seed ``seed + r``)
    and scores the share of `class_images` whose class logit (of `logit_layer`, the model output by
    default; a softmax is read before it) has a positive directional derivative along it: the
    gradient w.r.t. the layer's output, summed over positions, dotted with the CAV. As in Kim et
    al. 2018, each run also fits a CAV of that random set against the next one and scores it the
    same way; a two-sided t-test of the concept's scores against these random ones gives the
    p-value (Student's, as the paper's code), ``significant`` when below `alpha`. `runs` (None: one per random set, at least 2)
    may exceed the number of sets (the held-out splits then differ). Every set is read once;
    each image set is anything featvis reads as data. `reduce`, `classifier`, `hold_out`, `size`,
    `batch_size` and the model's conventions, `input_range` to `output`, as in `cav`; the model is
    left as it was.

    Examples:
        >>> result = featvis.concepts.tcav(net, "conv2", striped, class_images, 1,
        ...                                random_sets=[noise_a, noise_b, noise_c])
        >>> result.score, result.significant
        (1.0, True)
    """
    if isinstance(class_index, bool) or not isinstance(class_index, numbers.Integral) or class_index < 0:
        raise bad_value("class_index", class_index, "an int index >= 0 of the class logit")
    sets = _check_random_sets(random_sets)
    runs = len(sets) if runs is None else check_int("runs", runs, 2)
    alpha = check_number("alpha", alpha, positive=True)
    if alpha >= 1:
        raise bad_value("alpha", alpha, "a significance level in (0, 1)")
    reduce = check_reduce(reduce, ("mean", "max"))
    hold_out = _check_common(hold_out, seed, batch_size, size)
    _classifier(classifier, seed)
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
    with preparing(model, **conventions) as prepared:
        concept = _set_samples(prepared, layer, concept_images, "concept_images", reduce, size, batch_size)
        randoms = [
            _set_samples(prepared, layer, s, f"random_sets[{i}]", reduce, size, batch_size)
            for i, s in enumerate(sets)
        ]
        gradients = _class_derivatives(
            prepared, layer, logit_layer, int(class_index), class_images, size, batch_size
        )
    if gradients.shape[1] != concept.shape[1]:
        raise bad_value("layer", layer, "a layer whose activations and gradients have the same channels")
    scores, random_scores, accuracies, cavs, derivatives = [], [], [], [], []
    for run in range(runs):
        here, there = randoms[run % len(sets)], randoms[(run + 1) % len(sets)]
        options = dict(classifier=classifier, hold_out=hold_out, seed=seed + run, reduce=reduce)
        concept_cav = fit_cav(layer, concept, here, **options)
        random_cav = fit_cav(layer, here, there, **options)
        along = (gradients @ concept_cav.vector.double()).numpy()
        scores.append(float(np.mean(along > 0)))
        random_scores.append(float(np.mean((gradients @ random_cav.vector.double()).numpy() > 0)))
        accuracies.append(concept_cav.accuracy)
        cavs.append(concept_cav)
        derivatives.append(along)
    scores_array, random_array = np.array(scores), np.array(random_scores)
    p_value = _t_test(scores_array, random_array)
    return TCAVResult(
        layer=layer,
        class_index=int(class_index),
        score=float(scores_array.mean()),
        scores=scores_array,
        random_scores=random_array,
        p_value=p_value,
        significant=bool(p_value < alpha),
        alpha=alpha,
        accuracies=np.array(accuracies),
        cavs=cavs,
        derivatives=np.stack(derivatives),
    )


def _t_test(scores: np.ndarray, random_scores: np.ndarray) -> float:
    """Two-sided t-test p-value (Student's, as the TCAV code); two constant samples: 0 when they differ,
    1 when equal."""
    from scipy import stats

    if np.ptp(scores) == 0 and np.ptp(random_scores) == 0:
        return 1.0 if scores[0] == random_scores[0] else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly constant scores: the test still answers
        p_value = float(stats.ttest_ind(scores, random_scores).pvalue)
    return 1.0 if math.isnan(p_value) else p_value


__all__ = ["CAV", "TCAVResult", "cav", "fit_cav", "tcav"]
