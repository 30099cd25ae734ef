"""mpvgbench: reproducible benchmark of position-embedding methods in vision transformers."""

__version__ = "0.1.0"
