"""ev3: a reproducible knowledge-distillation benchmark on JAX."""

__version__ = "0.1.0"
