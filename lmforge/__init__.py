"""lmforge: build, train, fine-tune, generate with and serve Transformer language models."""

__version__ = "0.1.0"
