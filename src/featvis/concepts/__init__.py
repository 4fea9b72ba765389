"""Beyond single units: directions of a layer's channel space found in data, concept activation
vectors (CAV) and TCAV.

Examples:
    >>> found = featvis.concepts.activation_directions(model, "conv2", images, k=3)
    >>> stripes = featvis.concepts.cav(model, "conv2", striped, smooth)
    >>> result = featvis.concepts.tcav(model, "conv2", striped, zebras, 340, random_sets=[a, b, c])
"""

from featvis.concepts.directions import Directions, activation_directions
from featvis.concepts.tcav import CAV, TCAVResult, cav, fit_cav, tcav

__all__ = ["CAV", "Directions", "TCAVResult", "activation_directions", "cav", "fit_cav", "tcav"]
