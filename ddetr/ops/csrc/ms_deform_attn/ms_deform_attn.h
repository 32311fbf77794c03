// Multi-scale deformable attention (Eq. 3 of Deformable DETR): declarations shared by the
// op registration, the CPU kernel and the CUDA kernel.
//
// Shapes (every public implementation uses them):
//   value               (bs, num_keys, num_heads, head_dims)
//   spatial_shapes      (num_levels, 2) int64, (H, W) per level
//   level_start_index   (num_levels,) int64, first key of each level
//   sampling_locations  (bs, num_queries, num_heads, num_levels, num_points, 2), normalized (x, y)
//   attention_weights   (bs, num_queries, num_heads, num_levels, num_points)
//   output              (bs, num_queries, num_heads * head_dims)
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ddetr {

struct MsdaSizes {
  int64_t bs, num_keys, num_heads, head_dims, num_queries, num_levels, num_points;
};

// Checks ranks, sizes, dtypes and devices, raising ValueError / TypeError that name the
// argument. With check_values, also reads spatial_shapes / level_start_index (which must
// then be on the CPU) and checks them against num_keys.
MsdaSizes check_ms_deform_attn_args(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                    const at::Tensor& level_start_index,
                                    const at::Tensor& sampling_locations,
                                    const at::Tensor& attention_weights, int64_t im2col_step,
                                    bool check_values);

// The op's tensors made contiguous (the kernels index them densely).
struct MsdaInputs {
  at::Tensor value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
};

MsdaInputs contiguous_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights);

void check_grad_output(const at::Tensor& grad_output, const MsdaSizes& sizes,
                       const at::Tensor& value);

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, int64_t im2col_step);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, int64_t im2col_step);

// Frees the value-gradient blocks of 32 MiB or more that the CPU backward keeps for its
// next calls (at most two); returns their bytes.
int64_t release_grad_cache();

// Which vector instruction set the CPU kernel uses ("avx512", "avx2" or "generic").
std::string cpu_isa();
// Forces one (for tests and benchmarks); raises ValueError when this CPU lacks it.
void set_cpu_isa(const std::string& name);

}  // namespace ddetr
