// CPU kernels of multi-scale deformable attention, one copy per instruction set.
//
// This file is included several times by ms_deform_attn_cpu.cpp, each time inside a
// `#pragma GCC target(...)` region and with DDETR_ISA_NS naming a namespace of its own,
// so the compiler vectorizes the channel loops for AVX-512, AVX2 and baseline x86-64 and
// the op picks one at run time. Hence no include guard and no includes of its own.
//
// Work split (see split_by_head): with enough (batch, head) pairs for the threads, each
// thread takes whole heads, so the value (and its gradient) rows it touches are its own:
// a head's slice of the maps stays in cache, and the backward scatters into grad_value
// without races. Otherwise threads take contiguous chunks of queries (in raster order they
// sample nearby pixels) and the backward gives each thread a private grad_value buffer.
// Per sampling point the coordinates are computed once (ms_deform_attn_math.h) and the
// attention weight is folded into the four bilinear weights; the channel loop runs over the
// head's contiguous head_dims values (a compile-time 32 in the common case).

namespace ddetr {
namespace cpu {
namespace DDETR_ISA_NS {

// Queries per task: enough work per chunk to amortize scheduling.
inline int64_t query_grain(const MsdaSizes& s) {
  const int64_t work = std::max<int64_t>(1, s.num_heads * s.num_levels * s.num_points * s.head_dims);
  return std::max<int64_t>(1, 16384 / work);
}


// <a, b> over n channels. With n fixed at compile time the products are summed in lanes
// and then pairwise (a tree the compiler turns into a few vector adds), rather than
// one lane after another, which is what the generic reduction compiles to.
template <int kHeadDims, typename acc_t, typename scalar_t>
inline acc_t dot_product(const acc_t* a, const scalar_t* b, int64_t n) {
  if constexpr (kHeadDims > 0 && kHeadDims % 16 == 0) {
    constexpr int kLanes = 16;
    acc_t part[kLanes];
    for (int c = 0; c < kLanes; ++c) part[c] = a[c] * static_cast<acc_t>(b[c]);
    for (int base = kLanes; base < kHeadDims; base += kLanes) {
      for (int c = 0; c < kLanes; ++c) part[c] += a[base + c] * static_cast<acc_t>(b[base + c]);
    }
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int c = 0; c < width; ++c) part[c] += part[c + width];
    }
    return part[0];
  } else {
    acc_t sum = acc_t(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; ++c) sum += a[c] * static_cast<acc_t>(b[c]);
    return sum;
  }
}

// Eq. 3 without the projections, for query bq = b * num_queries + q and head m:
// out[bq, m] = sum_{l, k} A_mlqk * x^l_m(loc_mlqk). `acc` holds head_dims accumulators.
template <typename scalar_t, int kHeadDims>
inline void forward_query_head(const MsdaCpuArgs<scalar_t>& a, int64_t bq, int64_t m,
                               at::opmath_type<scalar_t>* acc, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;  // one key: all heads' channels
  const int64_t head_point = (bq * s.num_heads + m) * s.num_levels * s.num_points;
  const scalar_t* loc = a.sampling_locations + head_point * 2;
  const scalar_t* attn = a.attention_weights + head_point;
  const scalar_t* value_b = a.value + (bq / s.num_queries) * s.num_keys * key_stride;
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

// Backward of one (query, head) in dot-product form: per corner, dot = <grad_out, v> feeds
// the location and attention gradients (msda::bilinear_point_backward), and
// attn * weight * grad_out is added to that corner's row of the value gradient: row k of
// (batch b, head m) at grad_value_bm + k * gv_key_stride (a whole-tensor buffer laid out
// like value, or one head's compact num_keys x head_dims slice).
template <typename scalar_t, int kHeadDims>
inline void backward_query_head(const MsdaCpuArgs<scalar_t>& a, int64_t bq, int64_t m,
                                const scalar_t* grad_output, at::opmath_type<scalar_t>* go,
                                at::opmath_type<scalar_t>* grad_value_bm, int64_t gv_key_stride,
                                scalar_t* grad_sampling_locations,
                                scalar_t* grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;
  const scalar_t* go_src = grad_output + bq * key_stride + m * head_dims;
  for (int64_t c = 0; c < head_dims; ++c) go[c] = static_cast<acc_t>(go_src[c]);
  const int64_t head_point = (bq * s.num_heads + m) * s.num_levels * s.num_points;
  const scalar_t* loc = a.sampling_locations + head_point * 2;
  const scalar_t* attn = a.attention_weights + head_point;
  scalar_t* grad_loc = grad_sampling_locations + head_point * 2;
  scalar_t* grad_attn = grad_attention_weights + head_point;
  const scalar_t* value_bm = a.value + (bq / s.num_queries) * s.num_keys * key_stride +
                             m * head_dims;
  for (int64_t l = 0; l < s.num_levels; ++l, loc += 2 * s.num_points, attn += s.num_points,
               grad_loc += 2 * s.num_points, grad_attn += s.num_points) {
    const int64_t height = a.spatial_shapes[2 * l], width = a.spatial_shapes[2 * l + 1];
    const int64_t start = a.level_start_index[l];
    const bool level_ok = msda::level_in_bounds(start, height, width, s.num_keys);
    for (int64_t p = 0; p < s.num_points; ++p) {
      msda::BilinearPoint<acc_t> pt;
      if (!level_ok || !msda::bilinear_point<acc_t>(loc[2 * p], loc[2 * p + 1], height, width, pt)) {
        grad_loc[2 * p] = grad_loc[2 * p + 1] = grad_attn[p] = scalar_t(0);
        continue;
      }
      const acc_t attn_p = attn[p];
      acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      for (int corner = 0; corner < 4; ++corner) {
        if (pt.offset[corner] < 0) continue;
        const int64_t key = start + pt.offset[corner];
        acc_t* gv = grad_value_bm + key * gv_key_stride;
        const acc_t w = attn_p * pt.weight[corner];
#pragma omp simd
        for (int64_t c = 0; c < head_dims; ++c) gv[c] += w * go[c];
        dot[corner] = dot_product<kHeadDims>(go, value_bm + key * key_stride, head_dims);
      }
      acc_t g_attn, g_x, g_y;
      msda::bilinear_point_backward<acc_t>(pt, dot, attn_p, height, width, g_attn, g_x, g_y);
      grad_loc[2 * p] = static_cast<scalar_t>(g_x);
      grad_loc[2 * p + 1] = static_cast<scalar_t>(g_y);
      grad_attn[p] = static_cast<scalar_t>(g_attn);
    }
  }
}

// Channel scratch of head_dims accumulators: on the stack when head_dims is a
// compile-time constant, on the heap otherwise.
template <typename acc_t, int kHeadDims>
struct ChannelScratch {
  explicit ChannelScratch(int64_t head_dims) : heap(kHeadDims > 0 ? 0 : head_dims) {}
  acc_t* data() { return kHeadDims > 0 ? stack : heap.data(); }
  acc_t stack[kHeadDims > 0 ? kHeadDims : 1];
  std::vector<acc_t> heap;
};

template <typename scalar_t, int kHeadDims>
void forward(const MsdaCpuArgs<scalar_t>& a, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  if (split_by_head(s)) {
    at::parallel_for(0, s.bs * s.num_heads, 1, [&](int64_t begin, int64_t end) {
      ChannelScratch<acc_t, kHeadDims> acc(s.head_dims);
      for (int64_t bm = begin; bm < end; ++bm) {
        const int64_t b = bm / s.num_heads, m = bm % s.num_heads;
        for (int64_t q = 0; q < s.num_queries; ++q) {
          forward_query_head<scalar_t, kHeadDims>(a, b * s.num_queries + q, m, acc.data(), output);
        }
      }
    });
    return;
  }
  at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
    ChannelScratch<acc_t, kHeadDims> acc(s.head_dims);
    for (int64_t bq = begin; bq < end; ++bq) {
      for (int64_t m = 0; m < s.num_heads; ++m) {
        forward_query_head<scalar_t, kHeadDims>(a, bq, m, acc.data(), output);
      }
    }
  });
}

// With by_head (= split_by_head(sizes)), each thread takes whole (batch, head) pairs, whose
// value-gradient rows no other thread touches. With head_slices, it accumulates one pair's
// gradient in a compact num_keys x head_dims float scratch (zeroed per pair, cache-resident
// for typical maps) and then writes it into grad_value, which therefore needs no zeroing
// beforehand and gets each element written once. Without (float16, whose conversion does
// not vectorize here), it accumulates into grad_value_bufs[0], a float32 buffer laid out
// like value that the caller zeroes and converts. Split by query, grad_value_bufs holds one
// such buffer per thread, which the caller sums.
template <typename scalar_t, int kHeadDims>
void backward(const MsdaCpuArgs<scalar_t>& a, const scalar_t* grad_output, bool by_head,
              bool head_slices, scalar_t* grad_value,
              at::opmath_type<scalar_t>* const* grad_value_bufs, int64_t num_bufs,
              scalar_t* grad_sampling_locations, scalar_t* grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;
  if (by_head) {
    at::parallel_for(0, s.bs * s.num_heads, 1, [&](int64_t begin, int64_t end) {
      ChannelScratch<acc_t, kHeadDims> go(s.head_dims);
      std::vector<acc_t> slice(head_slices ? static_cast<size_t>(s.num_keys * head_dims) : 0);
      for (int64_t bm = begin; bm < end; ++bm) {
        const int64_t b = bm / s.num_heads, m = bm % s.num_heads;
        const int64_t origin = b * s.num_keys * key_stride + m * head_dims;
        acc_t* target = head_slices ? slice.data() : grad_value_bufs[0] + origin;
        const int64_t target_stride = head_slices ? head_dims : key_stride;
        std::fill(slice.begin(), slice.end(), acc_t(0));
        for (int64_t q = 0; q < s.num_queries; ++q) {
          backward_query_head<scalar_t, kHeadDims>(a, b * s.num_queries + q, m, grad_output,
                                                   go.data(), target, target_stride,
                                                   grad_sampling_locations, grad_attention_weights);
        }
        if (!head_slices) continue;
        for (int64_t k = 0; k < s.num_keys; ++k) {
          const acc_t* src = slice.data() + k * head_dims;
          scalar_t* dst = grad_value + origin + k * key_stride;
#pragma omp simd
          for (int64_t c = 0; c < head_dims; ++c) dst[c] = static_cast<scalar_t>(src[c]);
        }
      }
    });
    return;
  }
  at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    TORCH_CHECK(thread < num_bufs, "ms_deform_attn_backward: thread ", thread, " has no buffer");
    ChannelScratch<acc_t, kHeadDims> go(s.head_dims);
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / s.num_queries;
      for (int64_t m = 0; m < s.num_heads; ++m) {
        acc_t* grad_value_bm = grad_value_bufs[thread] + b * s.num_keys * key_stride +
                               m * head_dims;
        backward_query_head<scalar_t, kHeadDims>(a, bq, m, grad_output, go.data(),
                                                 grad_value_bm, key_stride,
                                                 grad_sampling_locations, grad_attention_weights);
      }
    }
  });
}

}  // namespace DDETR_ISA_NS
}  // namespace cpu
}  // namespace ddetr
