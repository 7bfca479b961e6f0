"""mgpipe: micro-gesture recognition pipeline."""
__version__ = "0.1.0"
