// CPU kernel of ddetr::counter_dropout: y = x * m, m_i = keep_i / (1 - p), where keep_i is
// drawn from a counter-based generator: the i-th output of a SplitMix64 stream keyed by
// `seed`. The mask is a pure function of (seed, i), so
//   - the backward applies the same op to the output gradient (nothing is saved but the
//     seed: no mask tensor in memory between forward and backward),
//   - results do not depend on the number of threads or on how the work is split,
//   - the draws are a few integer multiplies per element in vector registers, where
//     torch's CPU dropout fills a float mask with bernoulli_, rescales it and multiplies
//     (three passes over memory, the mask kept for the backward).
// The Python side draws `seed` from torch's default generator, so torch.manual_seed and
// activation checkpointing's RNG-state replay govern these masks like any dropout's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace ddetr {
namespace {

// Inlined into each per-ISA copy below, which then vectorizes it for its instruction set.
#if defined(__GNUC__)
#define DDETR_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DDETR_ALWAYS_INLINE inline
#endif

// SplitMix64's output function (Steele, Lea & Flood, 2014): a bijective 64-bit mixer.
DDETR_ALWAYS_INLINE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ULL;  // SplitMix64's stream increment

// y[i] = x[i] * (keep ? scale : 0) for i in [begin, end). Multiplying (rather than
// selecting zeros) keeps torch's semantics for dropped NaN / inf inputs (NaN out).
template <typename scalar_t>
DDETR_ALWAYS_INLINE void masked_scale(const scalar_t* x, scalar_t* y, int64_t begin,
                                      int64_t end, uint64_t key, uint64_t threshold,
                                      at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const uint64_t draw = mix64(key + static_cast<uint64_t>(i) * kGoldenGamma) >> 32;
    const opmath_t m = draw >= threshold ? scale : opmath_t(0);
    y[i] = static_cast<scalar_t>(static_cast<opmath_t>(x[i]) * m);
  }
}

// One copy per instruction set and dtype (overloads), chosen when the library loads: the
// loop above vectorizes (8 64-bit lanes a multiply with AVX-512DQ, 4 with AVX2).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DDETR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DDETR_CLONES
#endif

DDETR_CLONES void masked_scale_isa(const float* x, float* y, int64_t begin, int64_t end,
                                   uint64_t key, uint64_t threshold, float scale) {
  masked_scale(x, y, begin, end, key, threshold, scale);
}
DDETR_CLONES void masked_scale_isa(const double* x, double* y, int64_t begin, int64_t end,
                                   uint64_t key, uint64_t threshold, double scale) {
  masked_scale(x, y, begin, end, key, threshold, scale);
}
DDETR_CLONES void masked_scale_isa(const at::BFloat16* x, at::BFloat16* y, int64_t begin,
                                   int64_t end, uint64_t key, uint64_t threshold,
                                   float scale) {
  masked_scale(x, y, begin, end, key, threshold, scale);
}
DDETR_CLONES void masked_scale_isa(const at::Half* x, at::Half* y, int64_t begin, int64_t end,
                                   uint64_t key, uint64_t threshold, float scale) {
  masked_scale(x, y, begin, end, key, threshold, scale);
}

at::Tensor counter_dropout_cpu(const at::Tensor& input, double p, int64_t seed) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "counter_dropout: p must be in [0, 1), got ", p);
  TORCH_CHECK_TYPE(input.is_floating_point(), "counter_dropout: input must be a floating "
                   "point tensor, got ", input.scalar_type());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  // keep_i <=> draw_i >= threshold, draw_i uniform on [0, 2^32): P(keep) = 1 - p within 2^-32
  const uint64_t threshold = static_cast<uint64_t>(std::llround(std::ldexp(p, 32)));
  const uint64_t key = mix64(static_cast<uint64_t>(seed));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "counter_dropout",
                                  [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t scale = static_cast<opmath_t>(1.0 / (1.0 - p));
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    constexpr int64_t kGrain = 1 << 15;
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      masked_scale_isa(x_data, y_data, begin, end, key, threshold, scale);
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddetr, CPU, m) {
  m.impl("counter_dropout", &counter_dropout_cpu);
}

}  // namespace ddetr
