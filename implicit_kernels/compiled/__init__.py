"""The ``"cpu"`` and ``"cuda"`` backends: fused operators of the compiled extension
``implicit_kernels._C`` (csrc/), one module per decoder, each registering its operators'
fake (meta) implementations and autograd (:mod:`implicit_kernels.ops`) on import. The
dispatcher routes a call to the CPU or CUDA kernels by the tensors' device."""
