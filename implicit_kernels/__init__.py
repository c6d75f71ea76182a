"""implicit-kernels: fused decoders for implicit-image-function super-resolution.

``implicit_kernels.functional`` (also ``implicit_kernels.F``) holds the decode ops;
``implicit_kernels.backends`` lists and picks their implementations.
"""
from . import functional
from . import functional as F

__version__ = "0.1.0"
__all__ = ["F", "functional", "__version__"]
