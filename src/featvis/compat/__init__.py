"""Other toolkits' names: keras-vis's ``vis.utils.utils`` (`utils`) and the module paths of
featvis before its packages (`paths`: ``featvis.losses`` is ``featvis.optvis.losses``).

Examples:
    >>> from featvis.compat.utils import get_num_filters
"""
