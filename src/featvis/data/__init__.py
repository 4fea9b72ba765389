"""The user's images: sources (folders, arrays, datasets, loaders; `sources`) and the dataset pass
that finds the images and patches that excite each unit most (`examples`).

Examples:
    >>> from featvis.data.examples import dataset_examples
"""
