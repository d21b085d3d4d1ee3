// CUDA emulation (see cuda_runtime.h): the kernels decode bf16 by bit shifts only.
#pragma once
#include "cuda_fp16.h"
