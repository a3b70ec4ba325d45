/* The few functions of libtorch's stable C ABI (torch/csrc/stable/c/shim.h) the C core uses.
 * Declared here rather than including libtorch's headers, which are C++ and version-bound;
 * they are looked up at run time in the already-loaded libtorch and may be absent (torch < 2.10). */
#ifndef NNUNET_EXPORT_TORCH_STABLE_ABI_H
#define NNUNET_EXPORT_TORCH_STABLE_ABI_H

#include <stdint.h>

typedef int32_t nx_aoti_error; /* AOTITorchError: 0 on success */
typedef nx_aoti_error (*nx_torch_get_num_threads_fn)(uint32_t *out_num_threads);

#define NX_TORCH_GET_NUM_THREADS_SYMBOL "torch_get_num_threads"

#endif
