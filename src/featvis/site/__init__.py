"""Pages: the gallery of one layer and the atlas of a whole model (plan, sharded run, manifest,
publish).

Examples:
    >>> from featvis.site.atlas import atlas
"""
