"""featvis's version, at the bottom of the house (the atlas records it in its manifest)."""

__version__ = "0.1.0"
