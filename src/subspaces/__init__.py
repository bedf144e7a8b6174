"""subspaces: the low-dimensional structure of learning.

Find the subspaces where learning happens (curvature spectra, gradient and representation
subspaces), compare them, and use them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
