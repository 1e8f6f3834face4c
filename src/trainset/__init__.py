"""trainset: incremental, reproducible curation of raw collections into versioned training sets."""

__version__ = "0.1.0"
