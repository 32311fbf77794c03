// The per-sampling-point math of multi-scale deformable attention (Eq. 3), written once
// and shared by the CPU kernel (ms_deform_attn_cpu.cpp) and the CUDA kernel
// (ms_deform_attn_cuda.cu), so the CPU tests exercise what the GPU runs.
//
// Convention (grid_sample, align_corners=False): a normalized location (x, y) in [0, 1]^2
// maps to the pixel coordinate (x * W - 0.5, y * H - 0.5); (0, 0) is the top-left corner
// of the map, pixel centres sit at half-integers, and samples outside the map read zeros.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DDETR_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU kernels' AVX-512 copy calls the formulas on vector lanes, and
// they must be compiled there, for that instruction set, not as functions of their own.
#define DDETR_HOST_DEVICE inline __attribute__((always_inline))
#else
#define DDETR_HOST_DEVICE inline
#endif

namespace ddetr {
namespace msda {

template <typename acc_t>
DDETR_HOST_DEVICE acc_t floor_of(acc_t x) {
#if defined(__CUDA_ARCH__)
  return floor(x);
#else
  return std::floor(x);
#endif
}

// The formulas below are templates on T: float or double, or on CPU a vector of float lanes
// (ms_deform_attn_cpu_kernel.h's AVX-512 kernels run them on 16 sampling points at once).
// They use only +, - and * with scalar constants, which both kinds of T support, and take
// their arguments by reference (GCC notes an ABI change for 64-byte vectors by value).

// The pixel coordinate of a normalized location along an axis of `size` pixels.
template <typename T>
DDETR_HOST_DEVICE T pixel_coordinate(const T& loc, const T& size) {
  return loc * size - 0.5f;
}

// The bilinear weights of the four neighbouring pixels (top-left, top-right, bottom-left,
// bottom-right) of a point frac_h below the top row and frac_w right of the left column.
template <typename T>
DDETR_HOST_DEVICE void bilinear_weights(const T& frac_h, const T& frac_w, T weight[4]) {
  const T rest_h = 1.f - frac_h;
  const T rest_w = 1.f - frac_w;
  weight[0] = rest_h * rest_w;
  weight[1] = rest_h * frac_w;
  weight[2] = frac_h * rest_w;
  weight[3] = frac_h * frac_w;
}

// Gradients of one sampling point, given its bilinear weights, dot[i] = <grad_output, value
// at corner i> for the corners on the map (0 for the others) and its attention weight:
//   grad_attn            = sum_i weight_i * dot_i
//   grad_loc_{x,y}       = attn * sum_i d weight_i / d loc_{x,y} * dot_i
// The value gradient (attn * weight_i * grad_output at corner i) is scattered by the
// kernels, which own the memory layout.
template <typename T>
DDETR_HOST_DEVICE void bilinear_gradients(const T& frac_h, const T& frac_w, const T weight[4],
                                          const T dot[4], const T& attn, const T& height,
                                          const T& width, T& grad_attn, T& grad_loc_x,
                                          T& grad_loc_y) {
  const T rest_h = 1.f - frac_h;
  const T rest_w = 1.f - frac_w;
  grad_attn = weight[0] * dot[0] + weight[1] * dot[1] + weight[2] * dot[2] + weight[3] * dot[3];
  // d/dh of the weights: (-rest_w, -frac_w, rest_w, frac_w); d/dw: (-rest_h, rest_h, -frac_h, frac_h)
  const T grad_h = rest_w * (dot[2] - dot[0]) + frac_w * (dot[3] - dot[1]);
  const T grad_w = rest_h * (dot[1] - dot[0]) + frac_h * (dot[3] - dot[2]);
  // h = loc_y * height - 0.5, w = loc_x * width - 0.5 (pixel_coordinate)
  grad_loc_x = attn * grad_w * width;
  grad_loc_y = attn * grad_h * height;
}

// Where one sampling point reads: its four neighbouring pixels (top-left, top-right,
// bottom-left, bottom-right) as key indices relative to the start of its level, -1 for a
// corner outside the map, with their bilinear weights.
template <typename acc_t>
struct BilinearPoint {
  int64_t offset[4];
  acc_t weight[4];
  acc_t frac_h;  // h - floor(h): distance below the top row
  acc_t frac_w;  // w - floor(w): distance right of the left column
};

// Fills `pt` for the normalized location (loc_x, loc_y) on a height x width map.
// Returns false when no corner of the point lies on the map (the sample is zero), which
// includes NaN/Inf locations: the comparisons are written so that NaN fails them, and they
// also bound the values before the float-to-integer conversion.
template <typename acc_t>
DDETR_HOST_DEVICE bool bilinear_point(acc_t loc_x, acc_t loc_y, int64_t height, int64_t width,
                                      BilinearPoint<acc_t>& pt) {
  const acc_t h = pixel_coordinate(loc_y, static_cast<acc_t>(height));
  const acc_t w = pixel_coordinate(loc_x, static_cast<acc_t>(width));
  if (!(h > acc_t(-1) && w > acc_t(-1) && h < static_cast<acc_t>(height) &&
        w < static_cast<acc_t>(width))) {
    return false;
  }
  const acc_t h_floor = floor_of(h);
  const acc_t w_floor = floor_of(w);
  const int64_t h_low = static_cast<int64_t>(h_floor);  // in [-1, height - 1]
  const int64_t w_low = static_cast<int64_t>(w_floor);  // in [-1, width - 1]
  pt.frac_h = h - h_floor;
  pt.frac_w = w - w_floor;
  const bool top = h_low >= 0, bottom = h_low + 1 < height;
  const bool left = w_low >= 0, right = w_low + 1 < width;
  const int64_t base = h_low * width + w_low;
  pt.offset[0] = (top && left) ? base : -1;
  pt.offset[1] = (top && right) ? base + 1 : -1;
  pt.offset[2] = (bottom && left) ? base + width : -1;
  pt.offset[3] = (bottom && right) ? base + width + 1 : -1;
  bilinear_weights(pt.frac_h, pt.frac_w, pt.weight);
  return true;
}

// bilinear_gradients of a point filled by bilinear_point.
template <typename acc_t>
DDETR_HOST_DEVICE void bilinear_point_backward(const BilinearPoint<acc_t>& pt, const acc_t dot[4],
                                               acc_t attn, int64_t height, int64_t width,
                                               acc_t& grad_attn, acc_t& grad_loc_x,
                                               acc_t& grad_loc_y) {
  bilinear_gradients(pt.frac_h, pt.frac_w, pt.weight, dot, attn, static_cast<acc_t>(height),
                     static_cast<acc_t>(width), grad_attn, grad_loc_x, grad_loc_y);
}

// A level whose start/size would read outside `value` is skipped by the kernels, so even
// inconsistent spatial shapes that slipped past the argument checks cannot read out of bounds.
DDETR_HOST_DEVICE bool level_in_bounds(int64_t start, int64_t height, int64_t width,
                                       int64_t num_keys) {
  // height * width <= num_keys - start, written without the product (it could overflow)
  return start >= 0 && start <= num_keys && height > 0 && width > 0 &&
         height <= (num_keys - start) / width;
}

}  // namespace msda
}  // namespace ddetr
