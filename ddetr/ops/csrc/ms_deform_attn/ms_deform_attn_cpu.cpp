// CPU implementation of ddetr::ms_deform_attn: argument checks, allocation, dtype and
// head_dims dispatch, and run-time choice of the instruction set. The kernels themselves
// are in ms_deform_attn_cpu_kernel.h, the per-point math in ms_deform_attn_math.h.
#if defined(__GNUC__) && !defined(__clang__)
// The vector kernels pass 64-byte vectors between inline functions (and to the math
// header's formulas, always inlined); GCC's note that such a signature's ABI differs
// between instruction sets does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <ATen/ATen.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // F16C / AVX-512 half conversions in the vector kernels
#endif
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ms_deform_attn.h"
#include "ms_deform_attn_math.h"

namespace ddetr {
namespace cpu {

template <typename scalar_t>
struct MsdaCpuArgs {
  const scalar_t* value;
  const int64_t* spatial_shapes;
  const int64_t* level_start_index;
  const scalar_t* sampling_locations;
  const scalar_t* attention_weights;
  MsdaSizes sizes;
};

// How the backward split by head accumulates the value gradient of a (batch, head) pair.
enum class HeadGrad {
  // A compact num_keys x head_dims float scratch, zeroed per pair and then written whole
  // into grad_value (which needs no zeroing; every element is written once): dense reads,
  // for which the vector kernels also copy the pair's value rows into a compact slice.
  kScratch,
  // Straight into grad_value (float32/float64), which the caller zeroes; only the sampled
  // rows are touched again.
  kInPlace,
  // The scratch, but only the rows sampled are written out (into grad_value, which the
  // caller zeroes) and zeroed again for the next pair: half types with sparse reads.
  kScratchSampledRows,
};

// The backward takes whole heads per thread (see ms_deform_attn_cpu_kernel.h) when there
// are at least 4 (batch, head) pairs per thread.
inline bool split_by_head(const MsdaSizes& s) {
  return s.bs * s.num_heads >= 4 * static_cast<int64_t>(at::get_num_threads());
}

// Whether each value row is sampled several times on average (4 corners per sample): true
// for the encoder, where every pixel is a query; false for the decoder's few queries.
inline bool dense_reads(const MsdaSizes& s) {
  constexpr int64_t kMinSamplesPerRow = 4;
  return s.num_queries * s.num_levels * s.num_points >= kMinSamplesPerRow * s.num_keys;
}

}  // namespace cpu
}  // namespace ddetr

// One copy of the kernels per instruction set (see the top of ms_deform_attn_cpu_kernel.h).
// Everything above is included before the target pragmas, so no header code is compiled
// for a wider instruction set than the machine may have.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DDETR_X86_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,bmi2")
#define DDETR_ISA_NS avx512
#define DDETR_ISA_LEVEL 2
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA_NS
#undef DDETR_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2")
#define DDETR_ISA_NS avx2
#define DDETR_ISA_LEVEL 1
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA_NS
#undef DDETR_ISA_LEVEL
#pragma GCC pop_options
#endif

#define DDETR_ISA_NS generic
#define DDETR_ISA_LEVEL 0
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA_NS
#undef DDETR_ISA_LEVEL

namespace ddetr {
namespace {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

bool isa_supported(Isa isa) {
#ifdef DDETR_X86_MULTI_ISA
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2");
    default: return true;
  }
#else
  return isa == Isa::kGeneric;
#endif
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kGeneric}) {
    if (name == isa_name(isa)) return isa;
  }
  TORCH_CHECK_VALUE(false, "ms_deform_attn: unknown CPU instruction set '", name,
                    "' (expected avx512, avx2 or generic)");
}

Isa best_isa() {
  // DDETR_CPU_ISA=avx2|generic caps the choice, e.g. to compare paths.
  const char* env = std::getenv("DDETR_CPU_ISA");
  Isa cap = env ? parse_isa(env) : Isa::kAvx512;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (static_cast<int>(isa) <= static_cast<int>(cap) && isa_supported(isa)) return isa;
  }
  return Isa::kGeneric;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{static_cast<int>(best_isa())};
  return isa;
}

Isa isa_now() { return static_cast<Isa>(current_isa().load()); }

// The kernels of every instruction set are the same source; these pick one at run time.
template <typename scalar_t, int kHeadDims>
void forward_isa(const cpu::MsdaCpuArgs<scalar_t>& args, scalar_t* out) {
  switch (isa_now()) {
#ifdef DDETR_X86_MULTI_ISA
    case Isa::kAvx512: return cpu::avx512::forward<scalar_t, kHeadDims>(args, out);
    case Isa::kAvx2: return cpu::avx2::forward<scalar_t, kHeadDims>(args, out);
#endif
    default: return cpu::generic::forward<scalar_t, kHeadDims>(args, out);
  }
}

template <typename scalar_t, int kHeadDims, typename... Rest>
void backward_isa(const cpu::MsdaCpuArgs<scalar_t>& args, Rest... rest) {
  switch (isa_now()) {
#ifdef DDETR_X86_MULTI_ISA
    case Isa::kAvx512: return cpu::avx512::backward<scalar_t, kHeadDims>(args, rest...);
    case Isa::kAvx2: return cpu::avx2::backward<scalar_t, kHeadDims>(args, rest...);
#endif
    default: return cpu::generic::backward<scalar_t, kHeadDims>(args, rest...);
  }
}

// head_dims = 32 (256 channels over 8 heads) gets kernels with the channel count fixed at
// compile time, whose accumulators stay in registers; other sizes use the generic loop.
template <typename Fn>
void dispatch_head_dims(int64_t head_dims, const Fn& fn) {
  if (head_dims == 32) {
    fn(std::integral_constant<int, 32>{});
  } else {
    fn(std::integral_constant<int, 0>{});
  }
}

template <typename scalar_t>
cpu::MsdaCpuArgs<scalar_t> make_args(const at::Tensor& value,
                                              const at::Tensor& spatial_shapes,
                                              const at::Tensor& level_start_index,
                                              const at::Tensor& sampling_locations,
                                              const at::Tensor& attention_weights,
                                              const MsdaSizes& sizes) {
  return {value.const_data_ptr<scalar_t>(),          spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), sizes};
}

// Whether the op runs the float32 kernel on float32 copies of the inputs: for float16 with
// a head_dims the vector kernels do not take (see kVectorKernel), when each value row is
// read many times. Those kernels convert c10::Half one channel at a time, which does not
// vectorize (1.5-2.4x slower than float32), while converting the inputs once streams at
// memory speed; with few queries, converting the whole value costs more than the kernel.
bool half_as_float(const at::Tensor& value, const MsdaSizes& s) {
  return value.scalar_type() == at::kHalf && s.head_dims != 32 && cpu::dense_reads(s);
}

}  // namespace

std::string cpu_isa() { return isa_name(static_cast<Isa>(current_isa().load())); }

void set_cpu_isa(const std::string& name) {
  const Isa isa = parse_isa(name);
  TORCH_CHECK_VALUE(isa_supported(isa), "ms_deform_attn: this CPU does not support ", name);
  current_isa().store(static_cast<int>(isa));
}

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_in,
                                      const at::Tensor& spatial_shapes_in,
                                      const at::Tensor& level_start_index_in,
                                      const at::Tensor& sampling_locations_in,
                                      const at::Tensor& attention_weights_in,
                                      int64_t im2col_step) {
  const MsdaSizes s = check_ms_deform_attn_args(value_in, spatial_shapes_in, level_start_index_in,
                                                sampling_locations_in, attention_weights_in,
                                                im2col_step, /*check_values=*/true);
  const auto [value, spatial_shapes, level_start_index, sampling_locations, attention_weights] =
      contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in);
  if (half_as_float(value, s)) {
    return ms_deform_attn_forward_cpu(value.to(at::kFloat), spatial_shapes, level_start_index,
                                      sampling_locations.to(at::kFloat),
                                      attention_weights.to(at::kFloat), im2col_step)
        .to(at::kHalf);
  }
  auto output = at::empty({s.bs, s.num_queries, s.num_heads * s.head_dims}, value.options());
  if (output.numel() == 0) return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        const auto args = make_args<scalar_t>(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, s);
        scalar_t* out = output.mutable_data_ptr<scalar_t>();
        dispatch_head_dims(s.head_dims, [&](auto head_dims) {
          forward_isa<scalar_t, decltype(head_dims)::value>(args, out);
        });
      });
  return output;
}

namespace {

// Large value gradients (the decoder's at the paper's image size: 45 MB for 2 images) come
// from this cache of freed blocks instead of fresh memory. glibc maps a block of 32 MiB or
// more afresh (unless a free chunk of the heap happens to fit it) and unmaps it when it is
// freed, also with ddetr.engine.cpu_memory's setting (glibc's mmap threshold goes no
// higher); every backward then page-faults each 4 KiB page of the gradient again: 11,000
// faults, several times the kernel's own work at the decoder's few queries (docs/op.md,
// benchmarks). Zeroing a kept block is one pass over memory that is already mapped. At most
// kMaxBlocks freed blocks are kept (a training step frees one layer's value gradient before
// the next layer's backward needs one); release_grad_cache() frees them.
class GradBlockCache {
 public:
  static constexpr size_t kMinBytes = size_t{32} << 20;
  static constexpr size_t kMaxBlocks = 2;
  static constexpr size_t kAlign = 64;

  static GradBlockCache& instance() {
    static auto* cache = new GradBlockCache();  // never destroyed: deleters may run at exit
    return *cache;
  }

  // An uninitialized block of at least nbytes (a kept one at most twice as large) and its size.
  std::pair<void*, size_t> take(size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->second >= nbytes && it->second <= 2 * nbytes) {
          const auto block = *it;
          blocks_.erase(it);
          return block;
        }
      }
    }
    const size_t size = (nbytes + kAlign - 1) / kAlign * kAlign;
    void* data = std::aligned_alloc(kAlign, size);
    TORCH_CHECK(data != nullptr, "ms_deform_attn backward: out of memory allocating ", size,
                " bytes for the value gradient");
    return {data, size};
  }

  // Keeps a freed block, freeing the oldest kept one when kMaxBlocks are kept.
  void give(void* data, size_t size) {
    void* evicted = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (blocks_.size() == kMaxBlocks) {
        evicted = blocks_.front().first;
        blocks_.erase(blocks_.begin());
      }
      blocks_.emplace_back(data, size);
    }
    std::free(evicted);
  }

  int64_t release() {
    std::vector<std::pair<void*, size_t>> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(blocks_);
    }
    int64_t freed = 0;
    for (const auto& [data, size] : blocks) {
      std::free(data);
      freed += static_cast<int64_t>(size);
    }
    return freed;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> blocks_;  // oldest first
};

// A contiguous tensor shaped like `value` for its gradient, zeroed or not.
at::Tensor value_grad_buffer(const at::Tensor& value, bool zeroed) {
  const size_t nbytes = static_cast<size_t>(value.numel()) * value.element_size();
  if (nbytes < GradBlockCache::kMinBytes) {
    return zeroed ? at::zeros_like(value, at::MemoryFormat::Contiguous)
                  : at::empty_like(value, at::MemoryFormat::Contiguous);
  }
  const auto [data, size] = GradBlockCache::instance().take(nbytes);
  auto grad = at::from_blob(
      data, value.sizes(), [size = size](void* ptr) { GradBlockCache::instance().give(ptr, size); },
      value.options());
  return zeroed ? grad.zero_() : grad;
}

}  // namespace

int64_t release_grad_cache() { return GradBlockCache::instance().release(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in, const at::Tensor& grad_output_in,
    int64_t im2col_step) {
  const MsdaSizes s = check_ms_deform_attn_args(value_in, spatial_shapes_in, level_start_index_in,
                                                sampling_locations_in, attention_weights_in,
                                                im2col_step, /*check_values=*/true);
  check_grad_output(grad_output_in, s, value_in);
  const auto [value, spatial_shapes, level_start_index, sampling_locations, attention_weights] =
      contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in);
  const auto grad_output = grad_output_in.contiguous();
  if (half_as_float(value, s)) {
    auto [grad_value, grad_loc, grad_attn] = ms_deform_attn_backward_cpu(
        value.to(at::kFloat), spatial_shapes, level_start_index, sampling_locations.to(at::kFloat),
        attention_weights.to(at::kFloat), grad_output.to(at::kFloat), im2col_step);
    return {grad_value.to(at::kHalf), grad_loc.to(at::kHalf), grad_attn.to(at::kHalf)};
  }

  const bool by_head = cpu::split_by_head(s);
  const bool empty = grad_output.numel() == 0 || sampling_locations.numel() == 0;
  // float32/float64 accumulate in grad_value itself: split by query (with num_threads - 1
  // private buffers), or by head when few rows are sampled. Half types with few rows
  // sampled write only those rows. All of these need grad_value zeroed first. Otherwise
  // every element of grad_value is written once: by head from a per-head scratch, by query
  // (half types) from float32 buffers summed and converted below.
  const bool wide_type = value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble;
  const cpu::HeadGrad head_grad = cpu::dense_reads(s) ? cpu::HeadGrad::kScratch
                                  : wide_type          ? cpu::HeadGrad::kInPlace
                                                       : cpu::HeadGrad::kScratchSampledRows;
  const bool needs_zeros = by_head ? head_grad != cpu::HeadGrad::kScratch : wide_type;
  auto grad_value = value_grad_buffer(value, /*zeroed=*/empty || needs_zeros);
  auto grad_sampling_locations = at::empty_like(sampling_locations);
  auto grad_attention_weights = at::empty_like(attention_weights);
  if (empty) {
    grad_sampling_locations.zero_();
    grad_attention_weights.zero_();
    return {grad_value, grad_sampling_locations, grad_attention_weights};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr bool kSameType = std::is_same_v<acc_t, scalar_t>;
        // Whole-tensor accumulators split by query: one per thread, the first being
        // grad_value itself where it has the accumulator's type.
        const int64_t num_bufs = by_head ? 0 : std::max(1, at::get_num_threads());
        const int64_t num_private = kSameType ? std::max<int64_t>(num_bufs - 1, 0) : num_bufs;
        auto private_bufs = at::zeros({num_private, value.numel()},
                                      value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        std::vector<acc_t*> bufs;
        if (num_bufs > 0) {
          if constexpr (kSameType) bufs.push_back(grad_value.mutable_data_ptr<acc_t>());
          for (int64_t t = 0; t < num_private; ++t) {
            bufs.push_back(private_bufs.mutable_data_ptr<acc_t>() + t * value.numel());
          }
        }
        const auto args = make_args<scalar_t>(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, s);
        const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
        scalar_t* g_loc = grad_sampling_locations.mutable_data_ptr<scalar_t>();
        scalar_t* g_attn = grad_attention_weights.mutable_data_ptr<scalar_t>();
        dispatch_head_dims(s.head_dims, [&](auto head_dims) {
          backward_isa<scalar_t, decltype(head_dims)::value>(
              args, go, by_head, head_grad, grad_value.mutable_data_ptr<scalar_t>(),
              static_cast<acc_t* const*>(bufs.data()), static_cast<int64_t>(bufs.size()),
              g_loc, g_attn);
        });
        if (by_head) return;
        // Sum the private buffers into grad_value.
        auto flat = grad_value.view({-1});
        if constexpr (kSameType) {
          for (int64_t t = 0; t < num_private; ++t) flat.add_(private_bufs[t]);
        } else {
          flat.copy_(num_private == 1 ? private_bufs[0] : private_bufs.sum(0));
        }
      });
  return {grad_value, grad_sampling_locations, grad_attention_weights};
}

TORCH_LIBRARY_IMPL(ddetr, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace ddetr
