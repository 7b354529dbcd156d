// The depthwise CPU kernels, written once over GCC/Clang vector types of DEPTHWISE_VEC_BYTES bytes and compiled once
// per instruction set (depthwise_cpu_<isa>.cpp includes this file after switching the target, as ContMix's kernels).
// No include guard and no includes: the wrapper includes every header before the target switch.
//
// Channels-last maps are vectorised over channels, a 64-byte cache line of channels at a time, and register-blocked
// over output columns (forward) or taps (weight gradient): each loaded weight vector (forward) or grad_out vector
// (weight gradient) feeds a block of independent FMAs, 8 accumulator vectors in all on every ISA. Columns whose
// taps all read inside the map take a branch-free loop; border columns take their own tap ranges.
// NCHW maps are vectorised over output columns of a zero-padded copy of the input plane (per thread scratch), with
// the kernel taps broadcast, so no border tests at all.
#if !defined(DEPTHWISE_VEC_BYTES)
#error "define DEPTHWISE_VEC_BYTES before including depthwise_cpu_body.h"
#endif

namespace {

template <typename scalar_t>
struct Simd {
  typedef scalar_t vec __attribute__((vector_size(DEPTHWISE_VEC_BYTES)));
  static constexpr int64_t lanes = DEPTHWISE_VEC_BYTES / sizeof(scalar_t);
  static constexpr int per_line = 64 / DEPTHWISE_VEC_BYTES;  // vectors per 64-byte cache line of channels
};

// Accumulator vectors a register block may hold (of 16 registers on SSE/AVX2, 32 on AVX-512).
constexpr int kAccumulators = 8;

#include "cpu_vector_ops.h"  // load, store, splat, hsum, round_up, imin, imax

// Calls f(std::integral_constant<int, B>, start) for consecutive blocks that cover [start, count): blocks of the
// template's B while they fit, then of B/2, ..., 1 (so every block size is a compile-time constant).
template <int B, typename F>
inline void for_blocks(int64_t count, int64_t& start, F&& f) {
  for (; start + B <= count; start += B) f(std::integral_constant<int, B>{}, start);
  if constexpr (B > 1) for_blocks<B / 2>(count, start, f);
}

// ---- channels-last forward -----------------------------------------------------------------------------------

// Output column j of row i, channels [c0, c0 + NV * lanes(V)), with the taps that read inside the map.
template <typename V, int NV, typename scalar_t>
inline void nhwc_column(const Shape& s, const scalar_t* xn, const scalar_t* wt, const scalar_t* bias,
                        scalar_t* orow, int64_t i, int64_t j, int64_t c0, int64_t a0, int64_t a1) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = bias != nullptr ? load<V>(bias + c0 + v * L) : V{};
  int64_t e0, e1;
  valid_taps(j, s.W, s, &e0, &e1);
  for (int64_t a = a0; a < a1; ++a) {
    const scalar_t* xr = xn + (i - s.pad + s.dil * a) * s.W * s.C + (j - s.pad) * s.C + c0;
    const scalar_t* wr = wt + a * s.K * s.C + c0;
    for (int64_t e = e0; e < e1; ++e)
      for (int v = 0; v < NV; ++v) acc[v] += load<V>(wr + e * s.C + v * L) * load<V>(xr + s.dil * e * s.C + v * L);
  }
  for (int v = 0; v < NV; ++v) store(orow + j * s.C + c0 + v * L, acc[v]);
}

// JB interior output columns [j, j + JB) of row i (every tap inside the map), channels [c0, c0 + NV * lanes).
// KS > 0 fixes the kernel size and dilation 1 at compile time: the loops unroll and the input vector of column
// j + jj + e, the same address for every (jj, e) with one sum, is loaded once and feeds several FMAs.
template <typename V, int NV, int JB, int KS, typename scalar_t>
inline void nhwc_block(const Shape& s, const scalar_t* xn, const scalar_t* wt, const scalar_t* bias, scalar_t* orow,
                       int64_t i, int64_t j, int64_t c0, int64_t a0, int64_t a1) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  const int64_t K = KS > 0 ? KS : s.K, dil = KS > 0 ? 1 : s.dil, C = s.C;
  V acc[JB][NV];
  for (int v = 0; v < NV; ++v) {
    const V b = bias != nullptr ? load<V>(bias + c0 + v * L) : V{};
    for (int jj = 0; jj < JB; ++jj) acc[jj][v] = b;
  }
  for (int64_t a = a0; a < a1; ++a) {
    const scalar_t* xr = xn + (i - s.pad + dil * a) * s.W * C + (j - s.pad) * C + c0;
    const scalar_t* wr = wt + a * K * C + c0;
    for (int64_t e = 0; e < K; ++e) {
      V w[NV];
      for (int v = 0; v < NV; ++v) w[v] = load<V>(wr + e * C + v * L);
      for (int jj = 0; jj < JB; ++jj)
        for (int v = 0; v < NV; ++v) acc[jj][v] += w[v] * load<V>(xr + (jj + dil * e) * C + v * L);
    }
  }
  for (int jj = 0; jj < JB; ++jj)
    for (int v = 0; v < NV; ++v) store(orow + (j + jj) * C + c0 + v * L, acc[jj][v]);
}

// One output row, channels [c0, c0 + NV * lanes(V)): border columns one by one, interior ones in blocks.
template <typename V, int NV, typename scalar_t>
inline void nhwc_row(const Shape& s, const scalar_t* xn, const scalar_t* wt, const scalar_t* bias, scalar_t* orow,
                     int64_t i, int64_t c0, int64_t a0, int64_t a1) {
  constexpr int JB = kAccumulators / NV;
  const int64_t lo = imin(s.pad, s.Wo), hi = imax(lo, s.Wo - s.pad);  // interior columns [lo, hi)
  int64_t j = 0;
  for (; j < lo; ++j) nhwc_column<V, NV>(s, xn, wt, bias, orow, i, j, c0, a0, a1);
  // Interior columns in blocks of JB, then JB/2, ..., 1; the dense kernel sizes of most of OverLoCK's depthwise
  // convs take blocks compiled for their size.
  const int ks = s.dil == 1 && (s.K == 3 || s.K == 5 || s.K == 7) ? int(s.K) : 0;
  for_blocks<JB>(hi, j, [&](auto jb, int64_t j0) {
    constexpr int B = decltype(jb)::value;
    switch (ks) {
      case 3: nhwc_block<V, NV, B, 3>(s, xn, wt, bias, orow, i, j0, c0, a0, a1); break;
      case 5: nhwc_block<V, NV, B, 5>(s, xn, wt, bias, orow, i, j0, c0, a0, a1); break;
      case 7: nhwc_block<V, NV, B, 7>(s, xn, wt, bias, orow, i, j0, c0, a0, a1); break;
      default: nhwc_block<V, NV, B, 0>(s, xn, wt, bias, orow, i, j0, c0, a0, a1);
    }
  });
  for (; j < s.Wo; ++j) nhwc_column<V, NV>(s, xn, wt, bias, orow, i, j, c0, a0, a1);
}

template <typename scalar_t>
void forward_nhwc(const Shape& s, const scalar_t* x, const scalar_t* wt, const scalar_t* bias, scalar_t* out,
                  int64_t begin, int64_t end) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  constexpr int NL = Simd<scalar_t>::per_line;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.Ho, i = row % s.Ho;
    int64_t a0, a1;
    valid_taps(i, s.H, s, &a0, &a1);
    const scalar_t* xn = x + n * s.H * s.W * s.C;
    scalar_t* orow = out + row * s.Wo * s.C;
    int64_t c0 = 0;
    for (; c0 + NL * L <= s.C; c0 += NL * L) nhwc_row<V, NL>(s, xn, wt, bias, orow, i, c0, a0, a1);
    for (; c0 + L <= s.C; c0 += L) nhwc_row<V, 1>(s, xn, wt, bias, orow, i, c0, a0, a1);
    for (; c0 < s.C; ++c0) nhwc_row<scalar_t, 1>(s, xn, wt, bias, orow, i, c0, a0, a1);
  }
}

// ---- NCHW: zero-padded plane copies -----------------------------------------------------------------------------

// Row stride of a padded input plane: every vector load of a (rounded-up) output row at any tap stays inside.
template <typename scalar_t>
inline int64_t padded_stride(const Shape& s) {
  return round_up(s.Wo, Simd<scalar_t>::lanes) + s.dil * (s.K - 1);
}

template <typename scalar_t>
int64_t nchw_scratch(const Shape& s) {
  return (s.H + 2 * s.pad) * padded_stride<scalar_t>(s) + s.Ho * round_up(s.Wo, Simd<scalar_t>::lanes);
}

// The plane `src` [H, W] with `pad` zeros around it, rows `stride` apart (the tail of each row zero too).
template <typename scalar_t>
inline void pad_plane(const Shape& s, const scalar_t* src, scalar_t* dst, int64_t stride) {
  const int64_t rows = s.H + 2 * s.pad;
  for (int64_t k = 0; k < rows * stride; ++k) dst[k] = scalar_t(0);
  for (int64_t y = 0; y < s.H; ++y)
    __builtin_memcpy(dst + (y + s.pad) * stride + s.pad, src + y * s.W, s.W * sizeof(scalar_t));
}

// NB vectors of output row i from column j.
template <int NB, typename scalar_t>
inline void nchw_block(const Shape& s, const scalar_t* xp, int64_t stride, const scalar_t* w, scalar_t b,
                       scalar_t* orow, int64_t i, int64_t j) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[NB];
  for (int v = 0; v < NB; ++v) acc[v] = splat<V>(b);
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* xr = xp + (i + s.dil * a) * stride + j;
    for (int64_t e = 0; e < s.K; ++e) {
      const V wv = splat<V>(w[a * s.K + e]);
      for (int v = 0; v < NB; ++v) acc[v] += wv * load<V>(xr + s.dil * e + v * L);
    }
  }
  for (int v = 0; v < NB; ++v) {
    const int64_t col = j + v * L;
    if (col + L <= s.Wo) {
      store(orow + col, acc[v]);
    } else {
      scalar_t tmp[L];
      store(tmp, acc[v]);
      for (int64_t l = 0; col + l < s.Wo; ++l) orow[col + l] = tmp[l];
    }
  }
}

template <typename scalar_t>
void forward_nchw(const Shape& s, const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out,
                  int64_t begin, int64_t end, scalar_t* scratch) {
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t stride = padded_stride<scalar_t>(s), vectors = round_up(s.Wo, L) / L;
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t c = plane % s.C;
    pad_plane(s, x + plane * s.H * s.W, scratch, stride);
    const scalar_t* wc = w + c * s.K * s.K;
    const scalar_t b = bias != nullptr ? bias[c] : scalar_t(0);
    for (int64_t i = 0; i < s.Ho; ++i) {
      scalar_t* orow = out + (plane * s.Ho + i) * s.Wo;
      int64_t v = 0;
      for_blocks<kAccumulators>(vectors, v, [&](auto nb, int64_t v0) {
        nchw_block<decltype(nb)::value>(s, scratch, stride, wc, b, orow, i, v0 * L);
      });
    }
  }
}

// ---- weight gradient ------------------------------------------------------------------------------------------

// Channels-last: taps [e0, e0 + EB) of kernel row a, channels [c0, c0 + NV * lanes), summed over output row
// `go_row` against input row `xr`, added to partial[(a*K + e) * C + c].
template <typename V, int NV, int EB, typename scalar_t>
inline void nhwc_tap_block(const Shape& s, const scalar_t* go_row, const scalar_t* xr, scalar_t* partial, int64_t a,
                           int64_t e0, int64_t c0) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V acc[EB][NV];
  for (int t = 0; t < EB; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = V{};
  // Columns where every tap of the block reads inside the row, then each tap's own remaining columns.
  int64_t lo, hi, lo_t, hi_t;
  valid_outputs(e0, s.W, s.Wo, s, &lo, &lo_t);
  valid_outputs(e0 + EB - 1, s.W, s.Wo, s, &hi_t, &hi);
  lo = imin(lo, s.Wo);
  hi = imax(hi, lo);
  const scalar_t* x0 = xr + (s.dil * e0 - s.pad) * s.C + c0;
  for (int64_t j = lo; j < hi; ++j) {
    V g[NV];
    for (int v = 0; v < NV; ++v) g[v] = load<V>(go_row + j * s.C + c0 + v * L);
    const scalar_t* xj = x0 + j * s.C;
    for (int t = 0; t < EB; ++t)
      for (int v = 0; v < NV; ++v) acc[t][v] += g[v] * load<V>(xj + t * s.dil * s.C + v * L);
  }
  for (int t = 0; t < EB; ++t) {
    valid_outputs(e0 + t, s.W, s.Wo, s, &lo_t, &hi_t);
    const scalar_t* xt = xr + (s.dil * (e0 + t) - s.pad) * s.C + c0;
    auto add_columns = [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j)
        for (int v = 0; v < NV; ++v)
          acc[t][v] += load<V>(go_row + j * s.C + c0 + v * L) * load<V>(xt + j * s.C + v * L);
    };
    add_columns(lo_t, imin(lo, hi_t));
    add_columns(imax(hi, lo_t), hi_t);
    scalar_t* dst = partial + (a * s.K + e0 + t) * s.C + c0;
    for (int v = 0; v < NV; ++v) store(dst + v * L, load<V>(dst + v * L) + acc[t][v]);
  }
}

template <typename V, int NV, typename scalar_t>
inline void nhwc_grad_row(const Shape& s, const scalar_t* go_row, const scalar_t* xr, scalar_t* partial, int64_t a,
                          int64_t c0) {
  if constexpr (3 * NV <= kAccumulators) {
    if (s.K == 3) {  // the 3 taps of a row in one pass over grad_out (instead of blocks of 2 and 1)
      nhwc_tap_block<V, NV, 3>(s, go_row, xr, partial, a, 0, c0);
      return;
    }
  }
  int64_t e = 0;
  for_blocks<kAccumulators / NV>(s.K, e, [&](auto eb, int64_t e0) {
    nhwc_tap_block<V, NV, decltype(eb)::value>(s, go_row, xr, partial, a, e0, c0);
  });
}

template <typename scalar_t>
void grad_weight_nhwc(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* partial, int64_t begin,
                      int64_t end) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  constexpr int NL = Simd<scalar_t>::per_line;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.Ho, i = row % s.Ho;
    int64_t a0, a1;
    valid_taps(i, s.H, s, &a0, &a1);
    const scalar_t* go_row = grad_out + row * s.Wo * s.C;
    for (int64_t a = a0; a < a1; ++a) {
      const scalar_t* xr = x + (n * s.H + i - s.pad + s.dil * a) * s.W * s.C;
      int64_t c0 = 0;
      for (; c0 + NL * L <= s.C; c0 += NL * L) nhwc_grad_row<V, NL>(s, go_row, xr, partial, a, c0);
      for (; c0 + L <= s.C; c0 += L) nhwc_grad_row<V, 1>(s, go_row, xr, partial, a, c0);
      for (; c0 < s.C; ++c0) nhwc_grad_row<scalar_t, 1>(s, go_row, xr, partial, a, c0);
    }
  }
}

// NCHW: taps [e0, e0 + EB) of kernel row a over one (padded) plane; grad_out rows zero past Wo.
template <int EB, typename scalar_t>
inline void nchw_tap_block(const Shape& s, const scalar_t* gp, int64_t gstride, const scalar_t* xp, int64_t stride,
                           scalar_t* gw, int64_t a, int64_t e0) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[EB];
  for (int t = 0; t < EB; ++t) acc[t] = V{};
  for (int64_t i = 0; i < s.Ho; ++i) {
    const scalar_t* g = gp + i * gstride;
    const scalar_t* xr = xp + (i + s.dil * a) * stride + s.dil * e0;
    for (int64_t j = 0; j < gstride; j += L) {
      const V gv = load<V>(g + j);
      for (int t = 0; t < EB; ++t) acc[t] += gv * load<V>(xr + t * s.dil + j);
    }
  }
  for (int t = 0; t < EB; ++t) gw[a * s.K + e0 + t] += hsum<scalar_t>(acc[t]);
}

template <typename scalar_t>
void grad_weight_nchw(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_w, int64_t begin,
                      int64_t end, scalar_t* scratch) {
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t stride = padded_stride<scalar_t>(s), gstride = round_up(s.Wo, L);
  scalar_t* xp = scratch;
  scalar_t* gp = scratch + (s.H + 2 * s.pad) * stride;
  for (int64_t c = begin; c < end; ++c) {
    scalar_t* gw = grad_w + c * s.K * s.K;
    for (int64_t t = 0; t < s.K * s.K; ++t) gw[t] = scalar_t(0);
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t plane = n * s.C + c;
      pad_plane(s, x + plane * s.H * s.W, xp, stride);
      for (int64_t i = 0; i < s.Ho; ++i) {
        scalar_t* dst = gp + i * gstride;
        __builtin_memcpy(dst, grad_out + (plane * s.Ho + i) * s.Wo, s.Wo * sizeof(scalar_t));
        for (int64_t j = s.Wo; j < gstride; ++j) dst[j] = scalar_t(0);
      }
      for (int64_t a = 0; a < s.K; ++a) {
        int64_t e = 0;
        for_blocks<kAccumulators>(s.K, e, [&](auto eb, int64_t e0) {
          nchw_tap_block<decltype(eb)::value>(s, gp, gstride, xp, stride, gw, a, e0);
        });
      }
    }
  }
}

}  // namespace

extern const Kernels kernels;
constexpr Kernels kernels = {
    DEPTHWISE_CPU_CAPABILITY_NAME,
    {&forward_nhwc<float>, &forward_nchw<float>, &grad_weight_nhwc<float>, &grad_weight_nchw<float>,
     &nchw_scratch<float>},
    {&forward_nhwc<double>, &forward_nchw<double>, &grad_weight_nhwc<double>, &grad_weight_nchw<double>,
     &nchw_scratch<double>},
};
