// CUDA implementation of ddetr::ms_deform_attn. One thread per (batch, query, head,
// channel): a warp reads one head's channels of a key in one coalesced transaction. The
// per-point math (coordinates, bilinear weights and their gradients) is
// ms_deform_attn_math.h, shared with the CPU kernel. All index arithmetic is 64-bit and
// all accumulation is in float32 (float64 for double inputs).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ms_deform_attn.h"
#include "ms_deform_attn_math.h"

namespace ddetr {
namespace {

constexpr int kThreads = 256;

struct CudaSizes {
  int64_t num_keys, num_heads, head_dims, num_queries, num_levels, num_points;
};

CudaSizes cuda_sizes(const MsdaSizes& s) {
  return {s.num_keys, s.num_heads, s.head_dims, s.num_queries, s.num_levels, s.num_points};
}

int64_t num_blocks(int64_t n) {
  // Grid-stride loops: enough blocks to fill the device, never more than the work needs.
  const int64_t fill = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, fill));
}

template <typename scalar_t>
__global__ void forward_kernel(int64_t n, const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ spatial_shapes,
                               const int64_t* __restrict__ level_start_index,
                               const scalar_t* __restrict__ sampling_locations,
                               const scalar_t* __restrict__ attention_weights, CudaSizes s,
                               scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t key_stride = s.num_heads * s.head_dims;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // idx = ((b * num_queries + q) * num_heads + m) * head_dims + c, the output layout
    const int64_t c = idx % s.head_dims;
    const int64_t head = idx / s.head_dims;  // (b * num_queries + q) * num_heads + m
    const int64_t m = head % s.num_heads;
    const int64_t b = head / s.num_heads / s.num_queries;
    const scalar_t* loc = sampling_locations + head * s.num_levels * s.num_points * 2;
    const scalar_t* attn = attention_weights + head * s.num_levels * s.num_points;
    acc_t acc = acc_t(0);
    for (int64_t l = 0; l < s.num_levels; ++l, loc += 2 * s.num_points, attn += s.num_points) {
      const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1];
      const int64_t start = level_start_index[l];
      if (!msda::level_in_bounds(start, height, width, s.num_keys)) continue;
      const scalar_t* value_l = value + (b * s.num_keys + start) * key_stride + m * s.head_dims + c;
      for (int64_t p = 0; p < s.num_points; ++p) {
        msda::BilinearPoint<acc_t> pt;
        if (!msda::bilinear_point<acc_t>(static_cast<acc_t>(loc[2 * p]),
                                         static_cast<acc_t>(loc[2 * p + 1]), height, width, pt)) {
          continue;
        }
        const acc_t attn_p = static_cast<acc_t>(attn[p]);
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (pt.offset[corner] >= 0) {
            acc += attn_p * pt.weight[corner] *
                   static_cast<acc_t>(value_l[pt.offset[corner] * key_stride]);
          }
        }
      }
    }
    output[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// The value gradient is scattered with atomicAdd (several queries sample the same pixel).
// The location and attention gradients are sums over the head's channels: with
// head_dims % 32 == 0 every warp lies inside one head, so a warp reduction and one atomic
// per warp do; otherwise every thread adds its share atomically.
template <typename scalar_t, bool kWarpReduce>
__global__ void backward_kernel(int64_t n, const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ spatial_shapes,
                                const int64_t* __restrict__ level_start_index,
                                const scalar_t* __restrict__ sampling_locations,
                                const scalar_t* __restrict__ attention_weights,
                                const scalar_t* __restrict__ grad_output, CudaSizes s,
                                at::opmath_type<scalar_t>* __restrict__ grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_sampling_locations,
                                at::opmath_type<scalar_t>* __restrict__ grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t key_stride = s.num_heads * s.head_dims;
  const bool lane0 = (threadIdx.x % 32) == 0;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % s.head_dims;
    const int64_t head = idx / s.head_dims;
    const int64_t m = head % s.num_heads;
    const int64_t b = head / s.num_heads / s.num_queries;
    const acc_t go = static_cast<acc_t>(grad_output[idx]);
    const int64_t first_point = head * s.num_levels * s.num_points;
    for (int64_t l = 0; l < s.num_levels; ++l) {
      const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1];
      const int64_t start = level_start_index[l];
      const bool level_ok = msda::level_in_bounds(start, height, width, s.num_keys);
      const int64_t value_l = (b * s.num_keys + start) * key_stride + m * s.head_dims + c;
      for (int64_t p = 0; p < s.num_points; ++p) {
        const int64_t point = first_point + l * s.num_points + p;
        msda::BilinearPoint<acc_t> pt;
        // Uniform across the warp: all its threads handle the same sampling point.
        const bool inside =
            level_ok && msda::bilinear_point<acc_t>(static_cast<acc_t>(sampling_locations[2 * point]),
                                                    static_cast<acc_t>(sampling_locations[2 * point + 1]),
                                                    height, width, pt);
        acc_t g_attn = acc_t(0), g_x = acc_t(0), g_y = acc_t(0);
        if (inside) {
          const acc_t attn_p = static_cast<acc_t>(attention_weights[point]);
          acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
#pragma unroll
          for (int corner = 0; corner < 4; ++corner) {
            if (pt.offset[corner] >= 0) {
              const int64_t at_corner = value_l + pt.offset[corner] * key_stride;
              dot[corner] = go * static_cast<acc_t>(value[at_corner]);
              atomicAdd(grad_value + at_corner, attn_p * pt.weight[corner] * go);
            }
          }
          msda::bilinear_point_backward<acc_t>(pt, dot, attn_p, height, width, g_attn, g_x, g_y);
        }
        if (kWarpReduce) {
          g_attn = warp_sum(g_attn);
          g_x = warp_sum(g_x);
          g_y = warp_sum(g_y);
          if (!(inside && lane0)) continue;
        } else if (!inside) {
          continue;
        }
        atomicAdd(grad_attention_weights + point, g_attn);
        atomicAdd(grad_sampling_locations + 2 * point, g_x);
        atomicAdd(grad_sampling_locations + 2 * point + 1, g_y);
      }
    }
  }
}

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value_in,
                                       const at::Tensor& spatial_shapes_in,
                                       const at::Tensor& level_start_index_in,
                                       const at::Tensor& sampling_locations_in,
                                       const at::Tensor& attention_weights_in,
                                       int64_t im2col_step) {
  // Values of spatial_shapes are not read here (that would sync); the kernel skips any level
  // that would read outside `value`, and ddetr.ops checks them before calling.
  const MsdaSizes s = check_ms_deform_attn_args(value_in, spatial_shapes_in, level_start_index_in,
                                                sampling_locations_in, attention_weights_in,
                                                im2col_step, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  const auto [value, spatial_shapes, level_start_index, sampling_locations, attention_weights] =
      contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in);
  auto output = at::empty({s.bs, s.num_queries, s.num_heads * s.head_dims}, value.options());
  const int64_t n = output.numel();
  if (n == 0) return output;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        forward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
            n, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
            level_start_index.const_data_ptr<int64_t>(),
            sampling_locations.const_data_ptr<scalar_t>(),
            attention_weights.const_data_ptr<scalar_t>(), cuda_sizes(s),
            output.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in, const at::Tensor& grad_output_in,
    int64_t im2col_step) {
  const MsdaSizes s = check_ms_deform_attn_args(value_in, spatial_shapes_in, level_start_index_in,
                                                sampling_locations_in, attention_weights_in,
                                                im2col_step, /*check_values=*/false);
  check_grad_output(grad_output_in, s, value_in);
  // The kernel scatters into grad_value (and the location/weight gradients) with atomicAdd,
  // whose order varies from run to run: under torch.use_deterministic_algorithms(True) this
  // raises torch's standard error (warns with warn_only=True), as torch's scatter kernels do.
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  const auto [value, spatial_shapes, level_start_index, sampling_locations, attention_weights] =
      contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in);
  const auto grad_output = grad_output_in.contiguous();

  // Gradients accumulate atomically in float32 (float64 for double), then take the input dtype.
  const auto acc_dtype = at::toOpMathType(value.scalar_type());
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  auto grad_locations = at::zeros(sampling_locations.sizes(), value.options().dtype(acc_dtype));
  auto grad_weights = at::zeros(attention_weights.sizes(), value.options().dtype(acc_dtype));
  const int64_t n = grad_output.numel();
  if (n > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    const bool warp_reduce = s.head_dims % 32 == 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          auto kernel = warp_reduce ? backward_kernel<scalar_t, true> : backward_kernel<scalar_t, false>;
          kernel<<<num_blocks(n), kThreads, 0, stream>>>(
              n, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
              level_start_index.const_data_ptr<int64_t>(),
              sampling_locations.const_data_ptr<scalar_t>(),
              attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
              cuda_sizes(s), grad_value.mutable_data_ptr<acc_t>(),
              grad_locations.mutable_data_ptr<acc_t>(), grad_weights.mutable_data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_value.to(value.scalar_type()), grad_locations.to(value.scalar_type()),
          grad_weights.to(value.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddetr, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace ddetr
