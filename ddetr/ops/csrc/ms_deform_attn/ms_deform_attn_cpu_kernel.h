// CPU kernels of multi-scale deformable attention, one copy per instruction set.
//
// This file is included several times by ms_deform_attn_cpu.cpp, each time inside a
// `#pragma GCC target(...)` region, with DDETR_ISA_NS naming a namespace of its own and
// DDETR_ISA_LEVEL saying what the region allows (2: AVX-512, 1: AVX2 + F16C, 0: baseline;
// GCC does not define __AVX512F__ and friends inside such regions in C++), so one build
// runs on any x86-64 and the op picks a copy at run time. Hence no include guard and no
// includes of its own.
//
// Work split: the forward gives threads contiguous chunks of queries. The backward, with
// enough (batch, head) pairs for the threads, gives each thread whole heads, so the value
// gradient rows it touches are its own (no races, no private buffers); otherwise chunks of
// queries, each thread with a private grad_value buffer.
// Per sampling point the coordinates are computed once (ms_deform_attn_math.h) and the
// attention weight is folded into the four bilinear weights. With head_dims 32 and float
// accumulation (float32, bfloat16, float16), the vector kernels keep the head's channels
// in registers and prefetch each chunk of points' rows before the arithmetic; other sizes
// (and float64) run a channel loop the compiler vectorizes. The AVX-512 copy computes the
// points' geometry and their location/attention gradients 16 points at a time, in vector
// lanes, with the math header's formulas (LevelLanes and below).

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

// 16 float lanes for the channel loops, as a GCC vector type: one zmm register under
// AVX-512, two ymm under AVX2, four xmm on baseline x86-64. Loads of 16 channels of any of
// the kernel's input types widen to float (bfloat16: a shift; float16: F16C's vcvtph2ps,
// which GCC does not emit for a vector conversion itself).
typedef float Float16Lanes __attribute__((vector_size(64)));

template <typename scalar_t>
inline Float16Lanes load16(const scalar_t* p) {
  Float16Lanes v;
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
#if DDETR_ISA_LEVEL >= 2
    // one widening load and a shift (GCC's vector conversion takes two halves and an
    // insert); maskz forms, as in the float16 case
    const __m512i wide = _mm512_maskz_slli_epi32(
        0xFFFF,
        _mm512_maskz_cvtepu16_epi32(0xFFFF,
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
        16);
    std::memcpy(&v, &wide, sizeof(v));
#else
    typedef uint16_t U16 __attribute__((vector_size(32)));
    typedef uint32_t U32 __attribute__((vector_size(64)));
    U16 bits;
    std::memcpy(&bits, p, sizeof(bits));
    v = reinterpret_cast<Float16Lanes>(__builtin_convertvector(bits, U32) << 16);
#endif
  } else {
    static_assert(std::is_same_v<scalar_t, c10::Half>);
#if DDETR_ISA_LEVEL >= 2
    // The maskz forms (all lanes) leave GCC 12's headers no undefined register to warn about.
    const __m512 wide =
        _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    std::memcpy(&v, &wide, sizeof(v));
#elif DDETR_ISA_LEVEL >= 1
    const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
    std::memcpy(&v, &lo, sizeof(lo));
    std::memcpy(reinterpret_cast<char*>(&v) + sizeof(lo), &hi, sizeof(hi));
#else
    for (int c = 0; c < 16; ++c) v[c] = static_cast<float>(p[c]);
#endif
  }
  return v;
}

// Stores 16 float lanes as scalar_t, rounding to nearest even like c10's conversions.
template <typename scalar_t>
inline void store16(scalar_t* p, Float16Lanes v) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    typedef uint16_t U16 __attribute__((vector_size(32)));
    typedef uint32_t U32 __attribute__((vector_size(64)));
    const U32 bits = reinterpret_cast<U32>(v);
    const U32 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const U32 nan = reinterpret_cast<U32>(v != v);  // all ones in NaN lanes
    const U16 out = __builtin_convertvector((rounded & ~nan) | (0x7FC0u & nan), U16);
    std::memcpy(p, &out, sizeof(out));
  } else {
    static_assert(std::is_same_v<scalar_t, c10::Half>);
#if DDETR_ISA_LEVEL >= 2
    __m512 wide;
    std::memcpy(&wide, &v, sizeof(v));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_maskz_cvtps_ph(0xFFFF, wide, _MM_FROUND_TO_NEAREST_INT));
#elif DDETR_ISA_LEVEL >= 1
    __m256 lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT));
#else
    for (int c = 0; c < 16; ++c) p[c] = static_cast<scalar_t>(v[c]);
#endif
  }
}

// One value to and from float. c10::Half converts in software unless the translation unit
// is compiled for F16C (it is not: the instruction set is chosen per namespace here), so
// these use F16C's scalar instructions where this copy of the kernels may.
template <typename scalar_t>
inline float to_float(scalar_t x) {
#if DDETR_ISA_LEVEL >= 1
  if constexpr (std::is_same_v<scalar_t, c10::Half>) return _cvtsh_ss(x.x);
#endif
  return static_cast<float>(x);
}

template <typename scalar_t>
inline scalar_t from_float(float x) {
#if DDETR_ISA_LEVEL >= 1
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return c10::Half(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT), c10::Half::from_bits());
  }
#endif
  return static_cast<scalar_t>(x);
}

// A location or attention weight in the accumulation type (float32 through to_float).
template <typename acc_t, typename scalar_t>
inline acc_t to_acc(scalar_t x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return to_float(x);
  } else {
    return static_cast<acc_t>(x);
  }
}

// The sampling points of query bq = b * num_queries + q and head m, level by level: for each
// point with a corner on its map, on_point(pt, attn, n, start, height, width) with its
// bilinear taps (msda::bilinear_point), attention weight, index n among the head's
// num_levels * num_points points, and its level's first key and size; for the others (off
// the map, non-finite, or on a level whose shape would read out of bounds), off_map(n).
template <typename acc_t, typename scalar_t, typename OnPoint, typename OffMap>
inline void for_each_point(const MsdaCpuArgs<scalar_t>& a, int64_t bq, int64_t m,
                           OnPoint&& on_point, OffMap&& off_map) {
  const MsdaSizes& s = a.sizes;
  const int64_t head_point = (bq * s.num_heads + m) * s.num_levels * s.num_points;
  const scalar_t* loc = a.sampling_locations + head_point * 2;
  const scalar_t* attn = a.attention_weights + head_point;
  for (int64_t l = 0, n = 0; l < s.num_levels; ++l) {
    const int64_t height = a.spatial_shapes[2 * l], width = a.spatial_shapes[2 * l + 1];
    const int64_t start = a.level_start_index[l];
    const bool level_ok = msda::level_in_bounds(start, height, width, s.num_keys);
    for (int64_t p = 0; p < s.num_points; ++p, ++n) {
      msda::BilinearPoint<acc_t> pt;
      if (level_ok && msda::bilinear_point<acc_t>(to_acc<acc_t>(loc[2 * n]),
                                                  to_acc<acc_t>(loc[2 * n + 1]), height, width,
                                                  pt)) {
        on_point(pt, to_acc<acc_t>(attn[n]), n, start, height, width);
      } else {
        off_map(n);
      }
    }
  }
}

// Sum of the 16 lanes as a tree (lane c + lane c + 8, then + 4, + 2, + 1).
inline float sum16(Float16Lanes v) {
#if defined(__clang__) || __GNUC__ >= 12
  typedef float F8 __attribute__((vector_size(32)));
  typedef float F4 __attribute__((vector_size(16)));
  typedef float F2 __attribute__((vector_size(8)));
  const F8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const F4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const F2 c = __builtin_shufflevector(b, b, 0, 1) + __builtin_shufflevector(b, b, 2, 3);
  return c[0] + c[1];
#else  // GCC before 12 has no __builtin_shufflevector: the same tree on an array
  float part[16];
  std::memcpy(part, &v, sizeof(part));
  for (int width = 8; width > 0; width /= 2) {
    for (int c = 0; c < width; ++c) part[c] += part[c + width];
  }
  return part[0];
#endif
}

// Whether a (scalar_t, kHeadDims) pair runs the vector kernels below: float accumulation
// and whole vectors of channels.
template <typename scalar_t, int kHeadDims>
constexpr bool kVectorKernel =
    kHeadDims > 0 && kHeadDims % 16 == 0 && std::is_same_v<at::opmath_type<scalar_t>, float>;

// Sampling points are handled in chunks of kChunkPoints, in two passes: the first computes
// each point's four taps (value row and weight, msda::bilinear_point) and prefetches the
// rows; the second does the channel arithmetic. Rows scattered over a large map (the
// decoder's) then arrive from memory in parallel instead of one miss after another.
constexpr int kChunkPoints = 16;

// Prefetches the cache lines of a row of `bytes` bytes, for reading (kWrite 0) or writing.
template <int kWrite, typename value_t>
inline void prefetch_row(const value_t* row, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(row) + off, kWrite);
  }
}

// The vector backward's channel arithmetic for one corner of a sampling point: adds
// w * grad_out (w: attention times bilinear weight) to the corner's value-gradient row gv
// and returns <grad_out, value row v>, the corner's dot product for
// msda::bilinear_gradients.
template <int kHeadDims, typename value_t>
inline float corner_backward(const Float16Lanes* go, const value_t* v, float* gv, float w) {
  Float16Lanes d = go[0] * load16(v);
  for (int j = 0; j < kHeadDims / 16; ++j) {
    Float16Lanes g;
    std::memcpy(&g, gv + 16 * j, sizeof(g));
    g += w * go[j];
    std::memcpy(gv + 16 * j, &g, sizeof(g));
    if (j > 0) d += go[j] * load16(v + 16 * j);
  }
  return sum16(d);
}

// acc += w * row: one tap of Eq. 3 on the head's channels (kHeadDims / 16 vectors).
template <int kHeadDims, typename value_t>
inline void add_weighted_row(Float16Lanes* acc, float w, const value_t* row) {
  for (int j = 0; j < kHeadDims / 16; ++j) acc[j] += w * load16(row + 16 * j);
}

// forward_query_head with the head's channels in kHeadDims / 16 vector accumulators held in
// registers for the whole query. A corner off the map reads a row of zeros with weight 0.
template <typename scalar_t, int kHeadDims>
inline void forward_query_head_vec(const MsdaCpuArgs<scalar_t>& a, int64_t bq, int64_t m,
                                   scalar_t* output) {
  constexpr int kVecs = kHeadDims / 16;
  static const scalar_t kZeroRow[kHeadDims] = {};
  const MsdaSizes& s = a.sizes;
  const int64_t key_stride = s.num_heads * kHeadDims;
  const scalar_t* value_bm = a.value + (bq / s.num_queries) * s.num_keys * key_stride +
                             m * kHeadDims;
  Float16Lanes acc[kVecs] = {};
  const scalar_t* rows[kChunkPoints][4];
  float weights[kChunkPoints][4];
  int num_taps = 0;
  auto accumulate = [&]() {
    for (int i = 0; i < num_taps; ++i) {
      for (int corner = 0; corner < 4; ++corner) {
        add_weighted_row<kHeadDims>(acc, weights[i][corner], rows[i][corner]);
      }
    }
    num_taps = 0;
  };
  for_each_point<float>(
      a, bq, m,
      [&](const msda::BilinearPoint<float>& pt, float attn, int64_t, int64_t start, int64_t,
          int64_t) {
        for (int corner = 0; corner < 4; ++corner) {
          const bool on_map = pt.offset[corner] >= 0;
          rows[num_taps][corner] =
              on_map ? value_bm + (start + pt.offset[corner]) * key_stride : kZeroRow;
          weights[num_taps][corner] = on_map ? attn * pt.weight[corner] : 0.f;
          prefetch_row<0>(rows[num_taps][corner], kHeadDims * sizeof(scalar_t));
        }
        if (++num_taps == kChunkPoints) accumulate();
      },
      [](int64_t) {});
  accumulate();
  scalar_t* out = output + bq * key_stride + m * kHeadDims;
  for (int j = 0; j < kVecs; ++j) store16(out + 16 * j, acc[j]);
}

// The AVX-512 kernels take heads of at most this many groups of 16 sampling points (the
// paper's models have one: 4 levels x 4 points).
constexpr int64_t kMaxLaneGroups = 4;

// Per lane of each group of 16 points (point n = level * num_points + point), its level's
// size and first key, and whether the lane holds a point of a level in bounds.
struct LevelLanes {
  std::vector<float> height_f, width_f;
  std::vector<int32_t> height, width, start;
  std::vector<uint16_t> lanes;  // one mask per group
  bool usable = false;

  template <typename scalar_t>
  explicit LevelLanes(const MsdaCpuArgs<scalar_t>& a, int64_t head_dims) {
    const MsdaSizes& s = a.sizes;
    const int64_t n = s.num_levels * s.num_points;
    const int64_t groups = (n + 15) / 16;
    // key * (num_heads * head_dims) * sizeof(scalar_t) must fit in an int32 lane
    const int64_t row_bytes = s.num_heads * head_dims * static_cast<int64_t>(sizeof(scalar_t));
    if (n == 0 || groups > kMaxLaneGroups || row_bytes == 0 ||
        s.num_keys >= std::numeric_limits<int32_t>::max() / row_bytes) {
      return;
    }
    height_f.assign(groups * 16, 1.f);
    width_f.assign(groups * 16, 1.f);
    height.assign(groups * 16, 1);
    width.assign(groups * 16, 1);
    start.assign(groups * 16, 0);
    lanes.assign(groups, 0);
    for (int64_t l = 0; l < s.num_levels; ++l) {
      const int64_t h = a.spatial_shapes[2 * l], w = a.spatial_shapes[2 * l + 1];
      const int64_t first = a.level_start_index[l];
      if (!msda::level_in_bounds(first, h, w, s.num_keys)) continue;  // its lanes stay off
      for (int64_t p = 0; p < s.num_points; ++p) {
        const int64_t i = l * s.num_points + p;
        height_f[i] = static_cast<float>(h);
        width_f[i] = static_cast<float>(w);
        height[i] = static_cast<int32_t>(h);  // in bounds: h * w <= num_keys < 2^31
        width[i] = static_cast<int32_t>(w);
        start[i] = static_cast<int32_t>(first);
        lanes[i / 16] |= static_cast<uint16_t>(1u << (i % 16));
      }
    }
    usable = true;
  }
};

#if DDETR_ISA_LEVEL >= 2
// The forward with each group of 16 of a head's sampling points computed in the 16 lanes
// of AVX-512 registers: their coordinates, four bilinear weights (times the attention
// weight) and four value-row addresses at once, the same formulas as
// msda::bilinear_point in vector form. The per-point bookkeeping is what bounds the scalar
// version (ms_deform_attn_math.h's branches and int64 arithmetic, a hundred instructions a
// point); here a few vector instructions cover 16 points. The channel arithmetic is
// forward_query_head_vec's. Used when every key offset fits in 32 bits (LevelLanes::usable).

// 16 values of scalar_t as float lanes; lanes from `count` on read nothing and are 0.
template <typename scalar_t>
inline __m512 load_lanes(const scalar_t* p, int count) {
  const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1u);
  if constexpr (std::is_same_v<scalar_t, float>) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(
        _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, bits), 16));
  } else {
    static_assert(std::is_same_v<scalar_t, c10::Half>);
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(mask, p));
  }
}

// The taps of a head's sampling points, group by group of 16: for each corner, the
// weight (attention times bilinear; 0 off the map) and the value row (a row of zeros off
// the map).
template <typename scalar_t>
struct GroupTaps {
  alignas(64) float weights[4][16];
  alignas(64) const scalar_t* rows[4][16];
};

template <int kHeadDims, typename scalar_t>
inline const scalar_t* zero_row() {
  static const scalar_t kZeroRow[kHeadDims] = {};
  return kZeroRow;
}

// msda::bilinear_point for 16 points at once (lanes from `count` on, and points of a level
// out of bounds, are off): the four corners' keys relative to the head's first key, whether
// each is on the map, and their bilinear weights.
struct LaneGeometry {
  __mmask16 on;  // points with a corner on their map
  __mmask16 corner_on[4];
  __m512i corner_key[4];
  __m512 frac_h, frac_w;
  __m512 weight[4];
  __m512 height_f, width_f;
};

template <typename scalar_t>
inline LaneGeometry lane_geometry(const LevelLanes& lv, const scalar_t* loc, int64_t g, int count) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 minus_one = _mm512_set1_ps(-1.f);
  const __m512i ones = _mm512_set1_epi32(1), zeros = _mm512_setzero_si512();
  LaneGeometry geo;
  const __m512 loc_lo = load_lanes(loc + 2 * g, std::min(count * 2, 16));
  const __m512 loc_hi = load_lanes(loc + 2 * g + 16, std::max(count * 2 - 16, 0));
  const __m512 x = _mm512_permutex2var_ps(loc_lo, even, loc_hi);
  const __m512 y = _mm512_permutex2var_ps(loc_lo, odd, loc_hi);
  geo.height_f = _mm512_loadu_ps(lv.height_f.data() + g);
  geo.width_f = _mm512_loadu_ps(lv.width_f.data() + g);
  const __m512i height = _mm512_loadu_si512(lv.height.data() + g);
  const __m512i width = _mm512_loadu_si512(lv.width.data() + g);
  const __m512i start = _mm512_loadu_si512(lv.start.data() + g);
  // pixel coordinates; a point with no corner on its map (or NaN) is off
  const __m512 h = msda::pixel_coordinate(y, geo.height_f);
  const __m512 w = msda::pixel_coordinate(x, geo.width_f);
  geo.on = lv.lanes[g / 16] & static_cast<__mmask16>((1u << count) - 1u);
  geo.on &= _mm512_cmp_ps_mask(h, minus_one, _CMP_GT_OQ) & _mm512_cmp_ps_mask(w, minus_one, _CMP_GT_OQ) &
            _mm512_cmp_ps_mask(h, geo.height_f, _CMP_LT_OQ) & _mm512_cmp_ps_mask(w, geo.width_f, _CMP_LT_OQ);
  const __m512 h_floor = _mm512_maskz_roundscale_ps(0xFFFF, h, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 w_floor = _mm512_maskz_roundscale_ps(0xFFFF, w, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  geo.frac_h = h - h_floor;
  geo.frac_w = w - w_floor;
  // off lanes may hold any integer here; they are masked below
  const __m512i h_low = _mm512_maskz_cvttps_epi32(0xFFFF, h_floor), w_low = _mm512_maskz_cvttps_epi32(0xFFFF, w_floor);
  const __mmask16 top = geo.on & _mm512_cmpge_epi32_mask(h_low, zeros);
  const __mmask16 bottom = geo.on & _mm512_cmplt_epi32_mask(_mm512_add_epi32(h_low, ones), height);
  const __mmask16 left = _mm512_cmpge_epi32_mask(w_low, zeros);
  const __mmask16 right = _mm512_cmplt_epi32_mask(_mm512_add_epi32(w_low, ones), width);
  const __m512i key = _mm512_add_epi32(start, _mm512_add_epi32(_mm512_mullo_epi32(h_low, width), w_low));
  geo.corner_on[0] = top & left;
  geo.corner_on[1] = top & right;
  geo.corner_on[2] = bottom & left;
  geo.corner_on[3] = bottom & right;
  geo.corner_key[0] = key;
  geo.corner_key[1] = _mm512_add_epi32(key, ones);
  geo.corner_key[2] = _mm512_add_epi32(key, width);
  geo.corner_key[3] = _mm512_add_epi32(geo.corner_key[2], ones);
  msda::bilinear_weights(geo.frac_h, geo.frac_w, geo.weight);
  return geo;
}

// Fills taps[0 .. groups) for query bq and head m and prefetches their rows.
template <typename scalar_t, int kHeadDims>
inline void point_taps(const MsdaCpuArgs<scalar_t>& a, const LevelLanes& lv, int64_t bq,
                       int64_t m, GroupTaps<scalar_t>* taps) {
  const MsdaSizes& s = a.sizes;
  const int64_t key_stride = s.num_heads * kHeadDims;
  const scalar_t* value_bm = a.value + (bq / s.num_queries) * s.num_keys * key_stride +
                             m * kHeadDims;
  const int64_t n = s.num_levels * s.num_points;
  const int64_t head_point = (bq * s.num_heads + m) * n;
  const scalar_t* loc = a.sampling_locations + head_point * 2;
  const scalar_t* attn = a.attention_weights + head_point;
  const __m512i row_bytes = _mm512_set1_epi32(static_cast<int32_t>(key_stride * sizeof(scalar_t)));
  const __m512i zero = _mm512_set1_epi64(reinterpret_cast<int64_t>(zero_row<kHeadDims, scalar_t>()));
  const __m512i base_row = _mm512_set1_epi64(reinterpret_cast<int64_t>(value_bm));
  for (int64_t g = 0; g < n; g += 16) {
    GroupTaps<scalar_t>& t = taps[g / 16];
    const int count = static_cast<int>(std::min<int64_t>(16, n - g));
    const LaneGeometry geo = lane_geometry(lv, loc, g, count);
    const __m512 attention = load_lanes(attn + g, count);
    for (int corner = 0; corner < 4; ++corner) {
      const __mmask16 k = geo.corner_on[corner];
      _mm512_store_ps(t.weights[corner], _mm512_maskz_mul_ps(k, attention, geo.weight[corner]));
      const __m512i offset = _mm512_mullo_epi32(geo.corner_key[corner], row_bytes);
      const __m512i lo = _mm512_add_epi64(base_row, _mm512_maskz_cvtepi32_epi64(0xFF, _mm512_maskz_extracti64x4_epi64(0xFF, offset, 0)));
      const __m512i hi = _mm512_add_epi64(base_row, _mm512_maskz_cvtepi32_epi64(0xFF, _mm512_maskz_extracti64x4_epi64(0xFF, offset, 1)));
      _mm512_store_si512(t.rows[corner], _mm512_mask_blend_epi64(static_cast<__mmask8>(k), zero, lo));
      _mm512_store_si512(t.rows[corner] + 8, _mm512_mask_blend_epi64(static_cast<__mmask8>(k >> 8), zero, hi));
    }
    for (int i = 0; i < count; ++i) {
      for (int corner = 0; corner < 4; ++corner) {
        prefetch_row<0>(t.rows[corner][i], kHeadDims * sizeof(scalar_t));
      }
    }
  }
}

// Eq. 3's sum over the taps of n points, stored as the head's output row.
template <typename scalar_t, int kHeadDims>
inline void sum_taps(const GroupTaps<scalar_t>* taps, int64_t n, scalar_t* out) {
  constexpr int kVecs = kHeadDims / 16;
  Float16Lanes acc[kVecs] = {};
  for (int64_t g = 0; g < n; g += 16) {
    const GroupTaps<scalar_t>& t = taps[g / 16];
    const int count = static_cast<int>(std::min<int64_t>(16, n - g));
    for (int i = 0; i < count; ++i) {
      for (int corner = 0; corner < 4; ++corner) {
        add_weighted_row<kHeadDims>(acc, t.weights[corner][i], t.rows[corner][i]);
      }
    }
  }
  for (int j = 0; j < kVecs; ++j) store16(out + 16 * j, acc[j]);
}

// The forward of queries [begin, end), all heads: the taps of the next (query, head) are
// computed, and their rows prefetched, before the sum of the current one, so its rows
// arrive while that sum runs.
template <typename scalar_t, int kHeadDims>
inline void forward_simd(const MsdaCpuArgs<scalar_t>& a, const LevelLanes& lv, int64_t begin,
                         int64_t end, scalar_t* output) {
  const MsdaSizes& s = a.sizes;
  const int64_t n = s.num_levels * s.num_points;
  GroupTaps<scalar_t> taps[2][kMaxLaneGroups];
  GroupTaps<scalar_t>* current = taps[0];
  GroupTaps<scalar_t>* next = taps[1];
  const int64_t first = begin * s.num_heads, last = end * s.num_heads;  // (query, head) pairs
  if (first < last) point_taps<scalar_t, kHeadDims>(a, lv, begin, 0, current);
  for (int64_t i = first; i < last; ++i) {
    if (i + 1 < last) {
      point_taps<scalar_t, kHeadDims>(a, lv, (i + 1) / s.num_heads, (i + 1) % s.num_heads, next);
    }
    sum_taps<scalar_t, kHeadDims>(current, n, output + i * kHeadDims);
    std::swap(current, next);
  }
}

// 16 float lanes stored as scalar_t, only the first `count`.
template <typename scalar_t>
inline void store_lanes(scalar_t* p, __m512 v, int count) {
  const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1u);
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm512_mask_storeu_ps(p, mask, v);
  } else {
    alignas(32) scalar_t narrow[16];
    Float16Lanes lanes;
    std::memcpy(&lanes, &v, sizeof(lanes));
    store16(narrow, lanes);
    _mm256_mask_storeu_epi16(p, mask, _mm256_load_si256(reinterpret_cast<const __m256i*>(narrow)));
  }
}

// backward_query_head_vec with each group of 16 points' geometry in vector lanes
// (lane_geometry) and their location and attention gradients computed and stored 16 at a
// time (msda::bilinear_gradients on lanes). The channel arithmetic per corner is
// backward_query_head_vec's. (Preparing the next query's points before this one's channel
// arithmetic, as the forward does, measured slower here: 75-79 against 64-67 ms for the
// paper's encoder, forward and backward.)
template <typename scalar_t, int kHeadDims, typename value_t>
inline void backward_query_head_simd(const MsdaCpuArgs<scalar_t>& a, const LevelLanes& lv,
                                     int64_t bq, int64_t m, const value_t* value_bm,
                                     int64_t v_key_stride, const scalar_t* grad_output,
                                     float* grad_value_bm, int64_t gv_key_stride,
                                     uint8_t* touched, scalar_t* grad_sampling_locations,
                                     scalar_t* grad_attention_weights) {
  constexpr int kVecs = kHeadDims / 16;
  const MsdaSizes& s = a.sizes;
  const int64_t key_stride = s.num_heads * kHeadDims;
  Float16Lanes go[kVecs];
  for (int j = 0; j < kVecs; ++j) go[j] = load16(grad_output + bq * key_stride + m * kHeadDims + 16 * j);
  const int64_t n = s.num_levels * s.num_points;
  const int64_t head_point = (bq * s.num_heads + m) * n;
  const scalar_t* loc = a.sampling_locations + head_point * 2;
  const scalar_t* attn = a.attention_weights + head_point;
  scalar_t* grad_loc = grad_sampling_locations + head_point * 2;
  scalar_t* grad_attn = grad_attention_weights + head_point;
  const __m512i interleave_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i interleave_hi = _mm512_add_epi32(interleave_lo, _mm512_set1_epi32(8));
  alignas(64) int32_t keys[4][16];
  alignas(64) float weights[4][16];
  alignas(64) float dots[4][16];
  for (int64_t g = 0; g < n; g += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, n - g));
    const LaneGeometry geo = lane_geometry(lv, loc, g, count);
    const __m512 attention = load_lanes(attn + g, count);
    uint32_t on[4];
    for (int corner = 0; corner < 4; ++corner) {
      on[corner] = geo.corner_on[corner];
      _mm512_store_si512(keys[corner], geo.corner_key[corner]);
      _mm512_store_ps(weights[corner], _mm512_mul_ps(attention, geo.weight[corner]));
      _mm512_store_ps(dots[corner], _mm512_setzero_ps());
    }
    for (int i = 0; i < count; ++i) {
      for (int corner = 0; corner < 4; ++corner) {
        if (!((on[corner] >> i) & 1u)) continue;
        const int64_t key = keys[corner][i];
        if (touched) touched[key] = 1;
        prefetch_row<0>(value_bm + key * v_key_stride, kHeadDims * sizeof(value_t));
        prefetch_row<1>(grad_value_bm + key * gv_key_stride, kHeadDims * sizeof(float));
      }
    }
    for (int i = 0; i < count; ++i) {
      for (int corner = 0; corner < 4; ++corner) {
        if (!((on[corner] >> i) & 1u)) continue;
        const int64_t key = keys[corner][i];
        dots[corner][i] = corner_backward<kHeadDims>(go, value_bm + key * v_key_stride,
                                                     grad_value_bm + key * gv_key_stride,
                                                     weights[corner][i]);
      }
    }
    const __m512 dot[4] = {_mm512_load_ps(dots[0]), _mm512_load_ps(dots[1]),
                           _mm512_load_ps(dots[2]), _mm512_load_ps(dots[3])};
    __m512 g_attn, g_x, g_y;
    msda::bilinear_gradients(geo.frac_h, geo.frac_w, geo.weight, dot, attention, geo.height_f,
                             geo.width_f, g_attn, g_x, g_y);
    // points off their maps (NaN included) get 0
    g_attn = _mm512_maskz_mov_ps(geo.on, g_attn);
    g_x = _mm512_maskz_mov_ps(geo.on, g_x);
    g_y = _mm512_maskz_mov_ps(geo.on, g_y);
    store_lanes(grad_loc + 2 * g, _mm512_permutex2var_ps(g_x, interleave_lo, g_y), std::min(count * 2, 16));
    store_lanes(grad_loc + 2 * g + 16, _mm512_permutex2var_ps(g_x, interleave_hi, g_y),
                std::max(count * 2 - 16, 0));
    store_lanes(grad_attn + g, g_attn, count);
  }
}
#endif

// backward_query_head with the output gradient in registers and vector dot products. Reads
// (batch, head)'s value rows at value_bm + k * v_key_stride: value itself, or a compact
// float32 copy of the head's slice (see backward).
template <typename scalar_t, int kHeadDims, typename value_t>
inline void backward_query_head_vec(const MsdaCpuArgs<scalar_t>& a, int64_t bq, int64_t m,
                                    const value_t* value_bm, int64_t v_key_stride,
                                    const scalar_t* grad_output, float* grad_value_bm,
                                    int64_t gv_key_stride, uint8_t* touched,
                                    scalar_t* grad_sampling_locations,
                                    scalar_t* grad_attention_weights, const LevelLanes* lanes) {
#if DDETR_ISA_LEVEL >= 2
  if (lanes && lanes->usable) {
    return backward_query_head_simd<scalar_t, kHeadDims>(
        a, *lanes, bq, m, value_bm, v_key_stride, grad_output, grad_value_bm, gv_key_stride,
        touched, grad_sampling_locations, grad_attention_weights);
  }
#endif
  constexpr int kVecs = kHeadDims / 16;
  const MsdaSizes& s = a.sizes;
  const int64_t key_stride = s.num_heads * kHeadDims;
  Float16Lanes go[kVecs];
  for (int j = 0; j < kVecs; ++j) go[j] = load16(grad_output + bq * key_stride + m * kHeadDims + 16 * j);
  const int64_t head_point = (bq * s.num_heads + m) * s.num_levels * s.num_points;
  scalar_t* grad_loc = grad_sampling_locations + head_point * 2;
  scalar_t* grad_attn = grad_attention_weights + head_point;
  // A chunk's points: geometry, attention weight, index among the head's points, map size.
  msda::BilinearPoint<float> pts[kChunkPoints];
  int64_t keys[kChunkPoints][4];
  float attns[kChunkPoints];
  int64_t index[kChunkPoints], heights[kChunkPoints], widths[kChunkPoints];
  int num_points = 0;
  auto differentiate = [&]() {
    for (int i = 0; i < num_points; ++i) {
      const msda::BilinearPoint<float>& pt = pts[i];
      float dot[4] = {0.f, 0.f, 0.f, 0.f};
      for (int corner = 0; corner < 4; ++corner) {
        if (pt.offset[corner] < 0) continue;
        dot[corner] = corner_backward<kHeadDims>(go, value_bm + keys[i][corner] * v_key_stride,
                                                 grad_value_bm + keys[i][corner] * gv_key_stride,
                                                 attns[i] * pt.weight[corner]);
      }
      float g_attn, g_x, g_y;
      msda::bilinear_point_backward<float>(pt, dot, attns[i], heights[i], widths[i], g_attn, g_x, g_y);
      grad_loc[2 * index[i]] = from_float<scalar_t>(g_x);
      grad_loc[2 * index[i] + 1] = from_float<scalar_t>(g_y);
      grad_attn[index[i]] = from_float<scalar_t>(g_attn);
    }
    num_points = 0;
  };
  for_each_point<float>(
      a, bq, m,
      [&](const msda::BilinearPoint<float>& pt, float attn, int64_t n, int64_t start,
          int64_t height, int64_t width) {
        for (int corner = 0; corner < 4; ++corner) {
          if (pt.offset[corner] < 0) continue;
          const int64_t key = start + pt.offset[corner];
          keys[num_points][corner] = key;
          if (touched) touched[key] = 1;
          prefetch_row<0>(value_bm + key * v_key_stride, kHeadDims * sizeof(value_t));
          prefetch_row<1>(grad_value_bm + key * gv_key_stride, kHeadDims * sizeof(float));
        }
        pts[num_points] = pt;
        attns[num_points] = attn;
        index[num_points] = n;
        heights[num_points] = height;
        widths[num_points] = width;
        if (++num_points == kChunkPoints) differentiate();
      },
      [&](int64_t n) { grad_loc[2 * n] = grad_loc[2 * n + 1] = grad_attn[n] = scalar_t(0); });
  differentiate();
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
  const scalar_t* value_bm = a.value + (bq / s.num_queries) * s.num_keys * key_stride +
                             m * head_dims;
  for (int64_t c = 0; c < head_dims; ++c) acc[c] = acc_t(0);
  for_each_point<acc_t>(
      a, bq, m,
      [&](const msda::BilinearPoint<acc_t>& pt, acc_t attn, int64_t, int64_t start, int64_t,
          int64_t) {
        for (int corner = 0; corner < 4; ++corner) {
          if (pt.offset[corner] < 0) continue;
          const scalar_t* v = value_bm + (start + pt.offset[corner]) * key_stride;
          const acc_t w = attn * pt.weight[corner];
#pragma omp simd
          for (int64_t c = 0; c < head_dims; ++c) acc[c] += w * static_cast<acc_t>(v[c]);
        }
      },
      [](int64_t) {});
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
                                uint8_t* touched, scalar_t* grad_sampling_locations,
                                scalar_t* grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;
  const scalar_t* go_src = grad_output + bq * key_stride + m * head_dims;
  for (int64_t c = 0; c < head_dims; ++c) go[c] = static_cast<acc_t>(go_src[c]);
  const int64_t head_point = (bq * s.num_heads + m) * s.num_levels * s.num_points;
  scalar_t* grad_loc = grad_sampling_locations + head_point * 2;
  scalar_t* grad_attn = grad_attention_weights + head_point;
  const scalar_t* value_bm = a.value + (bq / s.num_queries) * s.num_keys * key_stride +
                             m * head_dims;
  for_each_point<acc_t>(
      a, bq, m,
      [&](const msda::BilinearPoint<acc_t>& pt, acc_t attn, int64_t n, int64_t start,
          int64_t height, int64_t width) {
        acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (int corner = 0; corner < 4; ++corner) {
          if (pt.offset[corner] < 0) continue;
          const int64_t key = start + pt.offset[corner];
          if (touched) touched[key] = 1;
          acc_t* gv = grad_value_bm + key * gv_key_stride;
          const acc_t w = attn * pt.weight[corner];
#pragma omp simd
          for (int64_t c = 0; c < head_dims; ++c) gv[c] += w * go[c];
          dot[corner] = dot_product<kHeadDims>(go, value_bm + key * key_stride, head_dims);
        }
        acc_t g_attn, g_x, g_y;
        msda::bilinear_point_backward<acc_t>(pt, dot, attn, height, width, g_attn, g_x, g_y);
        grad_loc[2 * n] = static_cast<scalar_t>(g_x);
        grad_loc[2 * n + 1] = static_cast<scalar_t>(g_y);
        grad_attn[n] = static_cast<scalar_t>(g_attn);
      },
      [&](int64_t n) { grad_loc[2 * n] = grad_loc[2 * n + 1] = grad_attn[n] = scalar_t(0); });
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

// Threads take contiguous chunks of queries: all heads of a query read the same value rows
// (whole rows of num_heads * head_dims channels), so the rows a chunk reads span few memory
// pages. (Splitting by head instead walks every page of the map for each head, and was 1.3-1.9x
// slower on the paper's encoder, from TLB misses.)
template <typename scalar_t, int kHeadDims>
void forward(const MsdaCpuArgs<scalar_t>& a, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
#if DDETR_ISA_LEVEL >= 2
  if constexpr (kVectorKernel<scalar_t, kHeadDims>) {
    const LevelLanes lanes(a, kHeadDims);
    if (lanes.usable) {
      at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
        forward_simd<scalar_t, kHeadDims>(a, lanes, begin, end, output);
      });
      return;
    }
  }
#endif
  at::parallel_for(0, s.bs * s.num_queries, query_grain(s), [&](int64_t begin, int64_t end) {
    ChannelScratch<acc_t, kHeadDims> acc(s.head_dims);
    for (int64_t bq = begin; bq < end; ++bq) {
      for (int64_t m = 0; m < s.num_heads; ++m) {
        if constexpr (kVectorKernel<scalar_t, kHeadDims>) {
          forward_query_head_vec<scalar_t, kHeadDims>(a, bq, m, output);
        } else {
          forward_query_head<scalar_t, kHeadDims>(a, bq, m, acc.data(), output);
        }
      }
    }
  });
}

// Writes one row of a head's float scratch into grad_value.
template <typename scalar_t, int kHeadDims>
inline void write_row(const at::opmath_type<scalar_t>* src, int64_t head_dims, scalar_t* dst) {
  if constexpr (kVectorKernel<scalar_t, kHeadDims>) {
    for (int j = 0; j < kHeadDims / 16; ++j) {
      Float16Lanes v;
      std::memcpy(&v, src + 16 * j, sizeof(v));
      store16(dst + 16 * j, v);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < head_dims; ++c) dst[c] = static_cast<scalar_t>(src[c]);
  }
}

// With by_head (= split_by_head(sizes)), each thread takes whole (batch, head) pairs, whose
// value-gradient rows no other thread touches, accumulating them as head_grad says
// (HeadGrad in ms_deform_attn_cpu.cpp). With dense reads (HeadGrad::kScratch: every value
// row sampled several times on average, as in the encoder), the
// pair's value rows are first copied into a compact float scratch too: a head's rows are
// spread over the whole value tensor (one head_dims slice per row of num_heads * head_dims),
// and reading them in place walks all of its memory pages for every head. Split by query,
// grad_value_bufs holds one whole-tensor accumulator laid out like value per thread, which
// the caller sums (and zeroes beforehand).
template <typename scalar_t, int kHeadDims>
void backward(const MsdaCpuArgs<scalar_t>& a, const scalar_t* grad_output, bool by_head,
              HeadGrad head_grad, scalar_t* grad_value,
              at::opmath_type<scalar_t>* const* grad_value_bufs, int64_t num_bufs,
              scalar_t* grad_sampling_locations, scalar_t* grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const MsdaSizes& s = a.sizes;
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : s.head_dims;
  const int64_t key_stride = s.num_heads * head_dims;
  std::unique_ptr<LevelLanes> lanes;  // for the AVX-512 kernels
#if DDETR_ISA_LEVEL >= 2
  if constexpr (kVectorKernel<scalar_t, kHeadDims>) lanes = std::make_unique<LevelLanes>(a, kHeadDims);
#endif
  if (by_head) {
    const bool in_place = head_grad == HeadGrad::kInPlace;
    const bool sampled_rows = head_grad == HeadGrad::kScratchSampledRows;
    acc_t* grad_value_acc = nullptr;
    if constexpr (std::is_same_v<acc_t, scalar_t>) grad_value_acc = grad_value;
    TORCH_CHECK(!in_place || grad_value_acc, "ms_deform_attn_backward: in place needs float32/64");
    at::parallel_for(0, s.bs * s.num_heads, 1, [&](int64_t begin, int64_t end) {
      ChannelScratch<acc_t, kHeadDims> go(s.head_dims);
      const size_t slice_size = static_cast<size_t>(s.num_keys * head_dims);
      std::vector<acc_t> slice(in_place ? 0 : slice_size);  // zeroed
      std::vector<uint8_t> touched(sampled_rows ? s.num_keys : 0);
      const bool dense_reads = head_grad == HeadGrad::kScratch;
      std::vector<float> values(kVectorKernel<scalar_t, kHeadDims> && dense_reads ? slice_size : 0);
      for (int64_t bm = begin; bm < end; ++bm) {
        const int64_t b = bm / s.num_heads, m = bm % s.num_heads;
        const int64_t origin = b * s.num_keys * key_stride + m * head_dims;
        acc_t* target = in_place ? grad_value_acc + origin : slice.data();
        const int64_t target_stride = in_place ? key_stride : head_dims;
        uint8_t* rows = sampled_rows ? touched.data() : nullptr;
        if (head_grad == HeadGrad::kScratch && bm != begin) {
          std::fill(slice.begin(), slice.end(), acc_t(0));
        }
        if constexpr (kVectorKernel<scalar_t, kHeadDims>) {
          const bool compact = !values.empty();
          if (compact) {
            for (int64_t k = 0; k < s.num_keys; ++k) {
              for (int j = 0; j < kHeadDims / 16; ++j) {
                const Float16Lanes v = load16(a.value + origin + k * key_stride + 16 * j);
                std::memcpy(values.data() + k * kHeadDims + 16 * j, &v, sizeof(v));
              }
            }
          }
          for (int64_t q = 0; q < s.num_queries; ++q) {
            if (compact) {
              backward_query_head_vec<scalar_t, kHeadDims>(
                  a, b * s.num_queries + q, m, values.data(), kHeadDims, grad_output, target,
                  target_stride, rows, grad_sampling_locations, grad_attention_weights,
                  lanes.get());
            } else {
              backward_query_head_vec<scalar_t, kHeadDims>(
                  a, b * s.num_queries + q, m, a.value + origin, key_stride, grad_output, target,
                  target_stride, rows, grad_sampling_locations, grad_attention_weights,
                  lanes.get());
            }
          }
        } else {
          for (int64_t q = 0; q < s.num_queries; ++q) {
            backward_query_head<scalar_t, kHeadDims>(a, b * s.num_queries + q, m, grad_output,
                                                     go.data(), target, target_stride, rows,
                                                     grad_sampling_locations,
                                                     grad_attention_weights);
          }
        }
        if (head_grad == HeadGrad::kScratch) {
          for (int64_t k = 0; k < s.num_keys; ++k) {
            write_row<scalar_t, kHeadDims>(slice.data() + k * head_dims, head_dims,
                                           grad_value + origin + k * key_stride);
          }
        } else if (sampled_rows) {
          for (int64_t k = 0; k < s.num_keys; ++k) {
            if (!touched[k]) continue;
            acc_t* row = slice.data() + k * head_dims;
            write_row<scalar_t, kHeadDims>(row, head_dims, grad_value + origin + k * key_stride);
            std::fill(row, row + head_dims, acc_t(0));
            touched[k] = 0;
          }
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
        const int64_t origin = b * s.num_keys * key_stride + m * head_dims;
        acc_t* grad_value_bm = grad_value_bufs[thread] + origin;
        if constexpr (kVectorKernel<scalar_t, kHeadDims>) {
          backward_query_head_vec<scalar_t, kHeadDims>(a, bq, m, a.value + origin, key_stride,
                                                       grad_output, grad_value_bm, key_stride,
                                                       nullptr, grad_sampling_locations,
                                                       grad_attention_weights, lanes.get());
        } else {
          backward_query_head<scalar_t, kHeadDims>(a, bq, m, grad_output, go.data(),
                                                   grad_value_bm, key_stride, nullptr,
                                                   grad_sampling_locations, grad_attention_weights);
        }
      }
    }
  });
}

}  // namespace DDETR_ISA_NS
}  // namespace cpu
}  // namespace ddetr
