"""Activation maximization (Lucid's ``optvis``): objectives (`losses`, `regularizers`), image
parameterizations (`params`), transforms (`input_modifiers`), gradient and backward-pass
modifiers, the optimizer with its callbacks, and the keras-vis style wrappers (`visualization`).

Examples:
    >>> from featvis.optvis import losses
    >>> objective = losses.channel("_blocks.10", 3) - 10 * losses.diversity("_blocks.10")
"""
