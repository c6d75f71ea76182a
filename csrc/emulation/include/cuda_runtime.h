// Emulated builds only (csrc/emulation/include on the include path): the CUDA runtime API
// the kernels use, from the emulation layer.
#pragma once

#include "ik_cuda_emulation.h"
