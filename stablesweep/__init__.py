"""stablesweep: find where training is stable."""
__version__ = "0.1.0"
