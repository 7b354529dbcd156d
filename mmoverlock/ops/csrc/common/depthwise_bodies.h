// Per-element bodies of the depthwise convolution that the CUDA kernels run (one thread per output element, one
// block per weight), also run on the CPU by the test driver (depthwise_testing.cpp), so the CPU test suite checks
// the arithmetic the GPU runs. Inputs in float32/float64/half types, sums in acc_t (float for half types).
// Layout: `channels_last` maps are [N, H, W, C] in memory, others [N, C, H, W]; the weight is [C, K, K].
#pragma once

#include "depthwise_common.h"

namespace mmoverlock {
namespace depthwise {

// Index arithmetic: 64-bit only for the base of one image (n) in a map, 32-bit inside it, which the launchers check
// (check_image_indices: H * W * C of the input and the output fit in int32). So an element costs one or two calls of
// the GPU's 64-bit division routine, never one per tap.
struct ImagePos {
  int64_t n;
  int c, i, j;
};

// Offset of (c, i, j) inside one [H, W, C] (channels_last) or [C, H, W] image.
DEPTHWISE_HD int image_offset(int c, int i, int j, int C, int H, int W, bool channels_last) {
  return channels_last ? (i * W + j) * C + c : (c * H + i) * W + j;
}

// The position of flat output index `index` (in the output's memory order).
DEPTHWISE_HD ImagePos output_pos(const Shape& s, int64_t index, bool channels_last) {
  const int C = static_cast<int>(s.C), Ho = static_cast<int>(s.Ho), Wo = static_cast<int>(s.Wo);
  const int64_t n = index / (s.C * s.Ho * s.Wo);
  int r = static_cast<int>(index - n * s.C * s.Ho * s.Wo);
  ImagePos p{n, 0, 0, 0};
  if (channels_last) {
    p.c = r % C;
    r /= C;
    p.j = r % Wo;
    p.i = r / Wo;
  } else {
    p.j = r % Wo;
    r /= Wo;
    p.i = r % Ho;
    p.c = r / Ho;
  }
  return p;
}

// out at flat output index `index` (in the output's memory order): the bias plus the valid taps, row by row.
template <typename scalar_t, typename acc_t>
DEPTHWISE_HD acc_t forward_element(const Shape& s, int64_t index, bool channels_last, const scalar_t* x,
                                   const scalar_t* w, const scalar_t* bias) {
  const ImagePos p = output_pos(s, index, channels_last);
  const int C = static_cast<int>(s.C), H = static_cast<int>(s.H), W = static_cast<int>(s.W),
            K = static_cast<int>(s.K), pad = static_cast<int>(s.pad), dil = static_cast<int>(s.dil);
  int a0, a1, e0, e1;
  valid_taps(p.i, H, s, &a0, &a1);
  valid_taps(p.j, W, s, &e0, &e1);
  acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[p.c]) : acc_t(0);
  const scalar_t* wc = w + p.c * K * K;
  const scalar_t* image = x + p.n * s.C * s.H * s.W;
  for (int a = a0; a < a1; ++a) {
    const int y = p.i - pad + dil * a;
    for (int e = e0; e < e1; ++e) {
      const int xx = p.j - pad + dil * e;
      acc += static_cast<acc_t>(wc[a * K + e]) *
             static_cast<acc_t>(image[image_offset(p.c, y, xx, C, H, W, channels_last)]);
    }
  }
  return acc;
}

// Threads of a CUDA block that sums one weight's gradient; the test driver splits the sum the same way.
constexpr int kGradWeightThreads = 256;

// Partial weight gradient of tap (a, e) of channel c: the products grad_out * x over the output positions, image by
// image, at the positions q = begin, begin + step, ... below Ho*Wo of each image (q = i * Wo + j), summed in that
// order.
template <typename scalar_t, typename acc_t>
DEPTHWISE_HD acc_t grad_weight_partial(const Shape& s, int c, int a, int e, int begin, int step, bool channels_last,
                                       const scalar_t* grad_out, const scalar_t* x) {
  const int C = static_cast<int>(s.C), H = static_cast<int>(s.H), W = static_cast<int>(s.W),
            Ho = static_cast<int>(s.Ho), Wo = static_cast<int>(s.Wo);
  const int dy = static_cast<int>(s.dil) * a - static_cast<int>(s.pad),
            dx = static_cast<int>(s.dil) * e - static_cast<int>(s.pad);
  acc_t acc(0);
  for (int64_t n = 0; n < s.N; ++n) {
    const scalar_t* go = grad_out + n * s.C * s.Ho * s.Wo;
    const scalar_t* image = x + n * s.C * s.H * s.W;
    for (int q = begin; q < Ho * Wo; q += step) {
      const int i = q / Wo, j = q - i * Wo, y = i + dy, xx = j + dx;
      if (y < 0 || y >= H || xx < 0 || xx >= W) continue;
      acc += static_cast<acc_t>(go[image_offset(c, i, j, C, Ho, Wo, channels_last)]) *
             static_cast<acc_t>(image[image_offset(c, y, xx, C, H, W, channels_last)]);
    }
  }
  return acc;
}

// The block's reduction of its threads' partial sums `buf[0..kGradWeightThreads)`, as a tree: at each level `half`,
// thread t < half adds buf[t + half] (the CUDA kernel synchronises between levels; the driver loops).
template <typename acc_t>
DEPTHWISE_HD void tree_step(acc_t* buf, int t, int half) {
  if (t < half) buf[t] += buf[t + half];
}

}  // namespace depthwise
}  // namespace mmoverlock
