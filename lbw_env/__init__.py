"""lbw-env: a Gymnasium environment for governing language-model training under stress."""

__version__ = "0.1.0"
