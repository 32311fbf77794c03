// CPU kernels of multi-scale deformable attention, one copy per instruction set.
//
// This file is included several times by ms_deform_attn_cpu.cpp, each time inside a
// `#pragma GCC target(...)` region and with DDETR_ISA_NS naming a namespace of its own,
// so the compiler vectorizes the channel loops for AVX-512, AVX2 and baseline x86-64 and
// the op picks one at run time. Hence no include guard and no includes of its own.
//
// Work split: threads take contiguous chunks of (batch, query) pairs; in raster order the
// queries of a chunk sample nearby pixels, which keeps the gathers in cache. Per sampling
// point the coordinates are computed once (ms_deform_attn_math.h) and the attention weight
// is folded into the four bilinear weights; the channel loop runs over the head's
// contiguous head_dims values (a compile-time 32 in the common case).

namespace ddetr {
namespace cpu {
namespace DDETR_ISA_NS {

// Queries per task: enough work per chunk to amortize scheduling.
inline int64_t query_grain(const MsdaSizes& s) {
  const int64_t work = std::max<int64_t>(1, s.num_heads * s.num_levels * s.num_points * s.head_dims);
  return std::max<int64_t>(1, 16384 / work);
}

// Eq. 3 without the projections: out[b, q, m] = sum_{l, k} A_mlqk * x^l_m(loc_mlqk).
template <typename scalar_t, int kHeadDims>
void forward(const MsdaCpuArgs<scalar_t>& a, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;          // one key: all heads' channels
  const int64_t points_per_head = s.num_levels * s.num_points;  // L * K

  at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_heap(kHeadDims > 0 ? 0 : head_dims);
    acc_t acc_stack[kHeadDims > 0 ? kHeadDims : 1];
    acc_t* acc = kHeadDims > 0 ? acc_stack : acc_heap.data();
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / s.num_queries;
      const scalar_t* value_b = a.value + b * s.num_keys * key_stride;
      for (int64_t m = 0; m < s.num_heads; ++m) {
        const int64_t head_point = (bq * s.num_heads + m) * points_per_head;
        const scalar_t* loc = a.sampling_locations + head_point * 2;
        const scalar_t* attn = a.attention_weights + head_point;
        for (int64_t c = 0; c < head_dims; ++c) acc[c] = acc_t(0);
        for (int64_t l = 0; l < s.num_levels; ++l, loc += 2 * s.num_points, attn += s.num_points) {
          const int64_t height = a.spatial_shapes[2 * l], width = a.spatial_shapes[2 * l + 1];
          const int64_t start = a.level_start_index[l];
          if (!msda::level_in_bounds(start, height, width, s.num_keys)) continue;
          const scalar_t* value_l = value_b + start * key_stride + m * head_dims;
          for (int64_t p = 0; p < s.num_points; ++p) {
            msda::BilinearPoint<acc_t> pt;
            if (!msda::bilinear_point<acc_t>(loc[2 * p], loc[2 * p + 1], height, width, pt)) continue;
            const acc_t attn_p = attn[p];
            for (int corner = 0; corner < 4; ++corner) {
              if (pt.offset[corner] < 0) continue;
              const scalar_t* v = value_l + pt.offset[corner] * key_stride;
              const acc_t w = attn_p * pt.weight[corner];
#pragma omp simd
              for (int64_t c = 0; c < head_dims; ++c) acc[c] += w * static_cast<acc_t>(v[c]);
            }
          }
        }
        scalar_t* out = output + bq * key_stride + m * head_dims;
        for (int64_t c = 0; c < head_dims; ++c) out[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

// Backward in dot-product form: per corner, dot = <grad_out, v> feeds the location and
// attention gradients (msda::bilinear_point_backward), and attn * weight * grad_out is
// added to that corner's value gradient. Each thread adds into its own grad_value buffer
// (grad_value_bufs[thread]); the caller sums them, so there are no races and no atomics.
template <typename scalar_t, int kHeadDims>
void backward(const MsdaCpuArgs<scalar_t>& a, const scalar_t* grad_output,
              at::opmath_type<scalar_t>* const* grad_value_bufs, int64_t num_bufs,
              scalar_t* grad_sampling_locations, scalar_t* grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;
  const int64_t points_per_head = s.num_levels * s.num_points;

  at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    TORCH_CHECK(thread < num_bufs, "ms_deform_attn_backward: thread ", thread, " has no buffer");
    acc_t* grad_value = grad_value_bufs[thread];
    std::vector<acc_t> go_heap(kHeadDims > 0 ? 0 : head_dims);
    acc_t go_stack[kHeadDims > 0 ? kHeadDims : 1];
    acc_t* go = kHeadDims > 0 ? go_stack : go_heap.data();
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / s.num_queries;
      const int64_t value_b = b * s.num_keys * key_stride;  // element offset of batch b
      for (int64_t m = 0; m < s.num_heads; ++m) {
        const scalar_t* go_src = grad_output + bq * key_stride + m * head_dims;
        for (int64_t c = 0; c < head_dims; ++c) go[c] = static_cast<acc_t>(go_src[c]);
        const int64_t head_point = (bq * s.num_heads + m) * points_per_head;
        const scalar_t* loc = a.sampling_locations + head_point * 2;
        const scalar_t* attn = a.attention_weights + head_point;
        scalar_t* grad_loc = grad_sampling_locations + head_point * 2;
        scalar_t* grad_attn = grad_attention_weights + head_point;
        for (int64_t l = 0; l < s.num_levels; ++l, loc += 2 * s.num_points, attn += s.num_points,
                     grad_loc += 2 * s.num_points, grad_attn += s.num_points) {
          const int64_t height = a.spatial_shapes[2 * l], width = a.spatial_shapes[2 * l + 1];
          const int64_t start = a.level_start_index[l];
          const bool level_ok = msda::level_in_bounds(start, height, width, s.num_keys);
          const int64_t value_l = value_b + start * key_stride + m * head_dims;
          for (int64_t p = 0; p < s.num_points; ++p) {
            msda::BilinearPoint<acc_t> pt;
            if (!level_ok ||
                !msda::bilinear_point<acc_t>(loc[2 * p], loc[2 * p + 1], height, width, pt)) {
              grad_loc[2 * p] = grad_loc[2 * p + 1] = grad_attn[p] = scalar_t(0);
              continue;
            }
            const acc_t attn_p = attn[p];
            acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
            for (int corner = 0; corner < 4; ++corner) {
              if (pt.offset[corner] < 0) continue;
              const int64_t at_corner = value_l + pt.offset[corner] * key_stride;
              const scalar_t* v = a.value + at_corner;
              acc_t* gv = grad_value + at_corner;
              const acc_t w = attn_p * pt.weight[corner];
              acc_t d = acc_t(0);
#pragma omp simd reduction(+ : d)
              for (int64_t c = 0; c < head_dims; ++c) {
                d += go[c] * static_cast<acc_t>(v[c]);
                gv[c] += w * go[c];
              }
              dot[corner] = d;
            }
            acc_t g_attn, g_x, g_y;
            msda::bilinear_point_backward<acc_t>(pt, dot, attn_p, height, width, g_attn, g_x, g_y);
            grad_loc[2 * p] = static_cast<scalar_t>(g_x);
            grad_loc[2 * p + 1] = static_cast<scalar_t>(g_y);
            grad_attn[p] = static_cast<scalar_t>(g_attn);
          }
        }
      }
    }
  });
}

}  // namespace DDETR_ISA_NS
}  // namespace cpu
}  // namespace ddetr
