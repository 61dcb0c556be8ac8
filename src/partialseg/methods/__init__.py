"""Training methods as compositions: extra training-only heads + loss terms (+ pseudo-label policy).

``get_method(name)`` returns the method class; the registry of names and descriptions is pure
data in ``partialseg.registry.METHODS`` so listing them imports nothing heavy.
"""

from partialseg.methods.base import (
    Batch,
    Method,
    StepContext,
    get_method,
    method_names,
    register,
)

__all__ = ["Batch", "Method", "StepContext", "get_method", "method_names", "register"]
