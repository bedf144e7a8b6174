"""Bundled data, loaded offline (no downloads): the digits set of scikit-learn."""

from .digits import load_digits_split

__all__ = ["load_digits_split"]
