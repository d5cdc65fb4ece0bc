"""Tether: search the radii that keep a fine-tuned network close to its pretrained weights."""

from tether.version import __version__


__all__ = ["__version__"]
