"""The version, in a leaf every room may read (the package root sits above them all)."""
__version__ = "0.1.0"
