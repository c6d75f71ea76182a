// The operator namespace: torch.ops.implicit_kernels, or the one -DIK_NAMESPACE names (the
// emulated build, tests/emulated_build.py, registers its operators beside the real
// extension's).  Every TORCH_LIBRARY block goes through these macros.
#pragma once

#include <torch/library.h>

#if !defined(IK_NAMESPACE)
#define IK_NAMESPACE implicit_kernels
#endif

// TORCH_LIBRARY stringizes and pastes its namespace argument, so a level of macros
// expands IK_NAMESPACE first.
#define IK_EXPANDED_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define IK_EXPANDED_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define IK_LIBRARY(m) IK_EXPANDED_LIBRARY(IK_NAMESPACE, m)
#define IK_LIBRARY_IMPL(key, m) IK_EXPANDED_LIBRARY_IMPL(IK_NAMESPACE, key, m)
