"""fedrec: federated, privacy-preserving, text-based recommendation."""

__version__ = "0.1.0"
