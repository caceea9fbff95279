"""entk_utils: feature identification via the empirical neural tangent kernel."""
__version__ = "0.1.0"
