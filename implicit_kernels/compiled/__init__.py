"""The ``"cpu"`` and ``"cuda"`` backends: fused operators of the compiled extension
``implicit_kernels._C`` (csrc/), one module per decoder, each registering its operator's
fake (meta) implementation and autograd on import. The dispatcher routes a call to the
CPU or CUDA kernels by the tensors' device."""
