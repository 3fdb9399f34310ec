"""glow-repro: a reproducibility study harness for Glow (Kingma & Dhariwal 2018, arXiv:1807.03039)."""

__version__ = "0.1.0"
