"""gpufleet: run deep-learning training jobs on a fleet of GPU servers and never lose track of them."""

__version__ = "0.1.0"
