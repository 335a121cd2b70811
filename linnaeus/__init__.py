"""linnaeus: hierarchical image classification runner with a trustworthy checkpoint system."""

__version__ = "0.1.0"
