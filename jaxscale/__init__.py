"""jaxscale: compute, data and energy scaling studies in JAX."""
__version__ = "0.1.0"
