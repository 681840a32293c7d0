"""MCER for multimodal sentiment analysis in JAX and Flax."""

__version__ = "0.1.0"
