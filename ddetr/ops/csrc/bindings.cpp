// The ddetr._C extension: op schemas (implemented per device in ms_deform_attn/ and dropout/) and a few
// introspection functions for ddetr.ops.backend_info() and the tests.
#include <torch/extension.h>
#include <torch/library.h>

#include "ms_deform_attn/ms_deform_attn.h"

TORCH_LIBRARY(ddetr, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, int im2col_step=64) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output, "
      "int im2col_step=64) -> (Tensor, Tensor, Tensor)");
  // y = x * keep / (1 - p), keep a pure function of (seed, element index): see
  // dropout/counter_dropout_cpu.cpp. Its own backward (same p and seed on the gradient).
  m.def("counter_dropout(Tensor input, float p, int seed) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ddetr's compiled ops (registered as torch.ops.ddetr.*)";
  m.def("cpu_isa", &ddetr::cpu_isa, "Instruction set the CPU kernel uses");
  m.def("set_cpu_isa", &ddetr::set_cpu_isa, "Force the CPU kernel's instruction set");
  m.def("release_grad_cache", &ddetr::release_grad_cache,
        "Free the value-gradient blocks the CPU backward keeps; returns their bytes");
  m.def("with_cuda", [] {
#ifdef DDETR_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernel was compiled");
}
