// Per-element bodies of the depthwise convolution that the CUDA kernels run (one thread per output element, one
// block per weight), also run on the CPU by the test driver (depthwise_testing.cpp), so the CPU test suite checks
// the arithmetic the GPU runs. Inputs in float32/float64/half types, sums in acc_t (float for half types).
// Layout: `channels_last` maps are [N, H, W, C] in memory, others [N, C, H, W]; the weight is [C, K, K].
#pragma once

#include "depthwise_common.h"

namespace mmoverlock {
namespace depthwise {

DEPTHWISE_HD int64_t map_offset(int64_t n, int64_t c, int64_t i, int64_t j, int64_t C, int64_t H, int64_t W,
                                bool channels_last) {
  return channels_last ? ((n * H + i) * W + j) * C + c : ((n * C + c) * H + i) * W + j;
}

// out at flat output index `index` (in the output's memory order): the bias plus the valid taps, row by row.
template <typename scalar_t, typename acc_t>
DEPTHWISE_HD acc_t forward_element(const Shape& s, int64_t index, bool channels_last, const scalar_t* x,
                                   const scalar_t* w, const scalar_t* bias) {
  int64_t n, c, i, j;
  if (channels_last) {
    c = index % s.C;
    j = (index / s.C) % s.Wo;
    i = (index / (s.C * s.Wo)) % s.Ho;
    n = index / (s.C * s.Wo * s.Ho);
  } else {
    j = index % s.Wo;
    i = (index / s.Wo) % s.Ho;
    c = (index / (s.Wo * s.Ho)) % s.C;
    n = index / (s.Wo * s.Ho * s.C);
  }
  int64_t a0, a1, e0, e1;
  valid_taps(i, s.H, s, &a0, &a1);
  valid_taps(j, s.W, s, &e0, &e1);
  acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  const scalar_t* wc = w + c * s.K * s.K;
  for (int64_t a = a0; a < a1; ++a) {
    const int64_t y = i - s.pad + s.dil * a;
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t xx = j - s.pad + s.dil * e;
      acc += static_cast<acc_t>(wc[a * s.K + e]) *
             static_cast<acc_t>(x[map_offset(n, c, y, xx, s.C, s.H, s.W, channels_last)]);
    }
  }
  return acc;
}

// Threads of a CUDA block that sums one weight's gradient; the test driver splits the sum the same way.
constexpr int kGradWeightThreads = 256;

// Partial weight gradient of tap (a, e) of channel c: the products grad_out * x over the output positions
// (n, i, j) with flat number begin, begin + step, ... below N*Ho*Wo, summed in that order.
template <typename scalar_t, typename acc_t>
DEPTHWISE_HD acc_t grad_weight_partial(const Shape& s, int64_t c, int64_t a, int64_t e, int64_t begin, int64_t step,
                                       bool channels_last, const scalar_t* grad_out, const scalar_t* x) {
  acc_t acc(0);
  const int64_t total = s.N * s.Ho * s.Wo;
  for (int64_t p = begin; p < total; p += step) {
    const int64_t j = p % s.Wo, i = (p / s.Wo) % s.Ho, n = p / (s.Wo * s.Ho);
    const int64_t y = i - s.pad + s.dil * a, xx = j - s.pad + s.dil * e;
    if (y < 0 || y >= s.H || xx < 0 || xx >= s.W) continue;
    acc += static_cast<acc_t>(grad_out[map_offset(n, c, i, j, s.C, s.Ho, s.Wo, channels_last)]) *
           static_cast<acc_t>(x[map_offset(n, c, y, xx, s.C, s.H, s.W, channels_last)]);
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
