// Argument checks of ms_deform_attn, shared by the CPU and CUDA implementations. Every
// failure names the argument and its shape, and raises ValueError (TORCH_CHECK_VALUE) or
// TypeError (TORCH_CHECK_TYPE) in Python.
#include <ATen/ATen.h>

#include <sstream>

#include "ms_deform_attn.h"

namespace ddetr {
namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, "ms_deform_attn: ", name, " must be ", rank, "-D ", layout,
                    ", got shape ", shape_of(t));
}

void check_size(const at::Tensor& t, const char* name, int64_t dim, int64_t expected,
                const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, "ms_deform_attn: ", name, " has shape ",
                    shape_of(t), " but its dim ", dim, " (", what, ") must be ", expected);
}

}  // namespace

MsdaSizes check_ms_deform_attn_args(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                    const at::Tensor& level_start_index,
                                    const at::Tensor& sampling_locations,
                                    const at::Tensor& attention_weights, int64_t im2col_step,
                                    bool check_values) {
  check_rank(value, "value", 4, "(bs, num_keys, num_heads, head_dims)");
  check_rank(spatial_shapes, "spatial_shapes", 2, "(num_levels, 2)");
  check_rank(level_start_index, "level_start_index", 1, "(num_levels,)");
  check_rank(sampling_locations, "sampling_locations", 6,
             "(bs, num_queries, num_heads, num_levels, num_points, 2)");
  check_rank(attention_weights, "attention_weights", 5,
             "(bs, num_queries, num_heads, num_levels, num_points)");
  TORCH_CHECK_VALUE(im2col_step > 0, "ms_deform_attn: im2col_step must be positive, got ",
                    im2col_step);

  const MsdaSizes s{value.size(0), value.size(1), value.size(2), value.size(3),
                    sampling_locations.size(1), spatial_shapes.size(0), sampling_locations.size(4)};
  check_size(spatial_shapes, "spatial_shapes", 1, 2, "(H, W)");
  check_size(level_start_index, "level_start_index", 0, s.num_levels, "num_levels");
  check_size(sampling_locations, "sampling_locations", 0, s.bs, "bs of value");
  check_size(sampling_locations, "sampling_locations", 2, s.num_heads, "num_heads of value");
  check_size(sampling_locations, "sampling_locations", 3, s.num_levels,
             "num_levels of spatial_shapes");
  check_size(sampling_locations, "sampling_locations", 5, 2, "(x, y)");
  TORCH_CHECK_VALUE(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
                    "ms_deform_attn: attention_weights has shape ", shape_of(attention_weights),
                    " but must be sampling_locations' shape without the last dim: ",
                    sampling_locations.sizes().slice(0, 5));

  TORCH_CHECK_TYPE(at::isFloatingType(value.scalar_type()),
                   "ms_deform_attn: value must be floating point, got ", value.scalar_type());
  TORCH_CHECK_TYPE(sampling_locations.scalar_type() == value.scalar_type() &&
                       attention_weights.scalar_type() == value.scalar_type(),
                   "ms_deform_attn: value, sampling_locations and attention_weights must share "
                   "one dtype, got ",
                   value.scalar_type(), ", ", sampling_locations.scalar_type(), " and ",
                   attention_weights.scalar_type());
  TORCH_CHECK_TYPE(spatial_shapes.scalar_type() == at::kLong &&
                       level_start_index.scalar_type() == at::kLong,
                   "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ",
                   spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  const auto device = value.device();
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"spatial_shapes", &spatial_shapes},
      {"level_start_index", &level_start_index},
      {"sampling_locations", &sampling_locations},
      {"attention_weights", &attention_weights}};
  for (const auto& [name, t] : others) {
    TORCH_CHECK_VALUE(t->device() == device, "ms_deform_attn: ", name, " is on ", t->device(),
                      " but value is on ", device, "; all inputs must be on one device");
  }

  if (check_values) {
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const int64_t* hw = shapes.data_ptr<int64_t>();
    const int64_t* start = starts.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < s.num_levels; ++l) {
      TORCH_CHECK_VALUE(hw[2 * l] >= 0 && hw[2 * l + 1] >= 0, "ms_deform_attn: spatial_shapes[",
                        l, "] = (", hw[2 * l], ", ", hw[2 * l + 1], ") must be non-negative");
      TORCH_CHECK_VALUE(start[l] == total, "ms_deform_attn: level_start_index[", l, "] is ",
                        start[l], " but the levels before it hold ", total,
                        " keys (level_start_index must be the cumulative sum of H*W)");
      TORCH_CHECK_VALUE(hw[2 * l] == 0 || hw[2 * l + 1] <= (s.num_keys - total) / hw[2 * l],
                        "ms_deform_attn: spatial_shapes ", shape_of(spatial_shapes),
                        " describe more keys than value has (num_keys = ", s.num_keys, ")");
      total += hw[2 * l] * hw[2 * l + 1];
    }
    TORCH_CHECK_VALUE(total == s.num_keys, "ms_deform_attn: value has ", s.num_keys,
                      " keys (shape ", shape_of(value), ") but spatial_shapes sum to ", total,
                      " = sum of H*W");
  }
  return s;
}

MsdaInputs contiguous_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights) {
  return {value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
          sampling_locations.contiguous(), attention_weights.contiguous()};
}

void check_grad_output(const at::Tensor& grad_output, const MsdaSizes& s,
                       const at::Tensor& value) {
  TORCH_CHECK_VALUE(grad_output.dim() == 3 && grad_output.size(0) == s.bs &&
                        grad_output.size(1) == s.num_queries &&
                        grad_output.size(2) == s.num_heads * s.head_dims,
                    "ms_deform_attn_backward: grad_output has shape ", shape_of(grad_output),
                    " but the output is (", s.bs, ", ", s.num_queries, ", ",
                    s.num_heads * s.head_dims, ")");
  TORCH_CHECK_TYPE(grad_output.scalar_type() == value.scalar_type(),
                   "ms_deform_attn_backward: grad_output must have value's dtype ",
                   value.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.device() == value.device(),
                    "ms_deform_attn_backward: grad_output is on ", grad_output.device(),
                    " but value is on ", value.device());
}

}  // namespace ddetr
