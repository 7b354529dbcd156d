// The CPU kernels of the ContMix core, written once over GCC/Clang vector types of CONTMIX_VEC_BYTES bytes and
// compiled once per instruction set: contmix_cpu_<isa>.cpp opens namespace mmoverlock::contmix::cpu::<isa>, switches
// the compiler's target (e.g. AVX2 + FMA) and includes this file. It has no include guard and includes nothing:
// every header it needs is included by the wrapper *before* the target switch, so library code stays baseline and
// only this file's functions (all of internal linkage, plus the exported table) use the wider instructions.
//
// Work split (the dispatcher runs the ranges on threads):
//   forward:   one task per output row; per pixel: biased logits -> softmax -> aggregation over the K*K taps,
//              vectorised over channels, several independent accumulators so that FMA latency is hidden.
//   backward:  one task per (plane, band of value rows); each pixel's softmax is recomputed from the inputs. The task
//              scatters P * grad_out into its band of grad_value (vectorised over channels) and, for the output rows
//              inside its band, computes dL/dP_t = <grad_out, value[neighbour t]> vectorised over taps (from a
//              channel-major copy of the value rows, so no horizontal reduction per tap; a few pixels at a time per
//              tap row, so that the value rows read stay in L1), grad_weights, and the row's grad_rpb partial sum.
//              The dispatcher adds the row partial sums in a fixed order.
#if !defined(CONTMIX_VEC_BYTES)
#error "define CONTMIX_VEC_BYTES before including contmix_cpu_body.h"
#endif

namespace {

#include "cpu_vector_ops.h"  // SimdTraits, load, store, splat, hsum, hmax, prefetch_span, round_up, ...

template <typename scalar_t>
using Simd = SimdTraits<scalar_t, CONTMIX_VEC_BYTES>;

#include "cpu_math_ops.h"  // exp_nonpositive

// Lane numbers 0, 1, ..., L - 1: compared with a count, they mask the lanes past the end of a row of taps.
template <typename scalar_t>
inline typename Simd<scalar_t>::ivec lane_numbers() {
  typename Simd<scalar_t>::ivec lane;
  for (int64_t l = 0; l < Simd<scalar_t>::lanes; ++l) lane[l] = static_cast<typename Simd<scalar_t>::index>(l);
  return lane;
}

// Calls f(a, e0, keep) for each row a of the K x K taps (flat, a * K + e) and each vector of taps e0.. of that row;
// `keep` masks the lanes past the row's end, which belong to the next row.
template <typename scalar_t, typename F>
inline void for_tap_row_vectors(const Shape& s, F&& f) {
  using IV = typename Simd<scalar_t>::ivec;
  using I = typename Simd<scalar_t>::index;
  const IV lane = lane_numbers<scalar_t>();
  for (int64_t a = 0; a < s.K; ++a) {
    for (int64_t e0 = 0; e0 < s.K; e0 += Simd<scalar_t>::lanes) f(a, e0, lane < IV{} + static_cast<I>(s.K - e0));
  }
}

template <typename V>
inline V vmax(V a, V b) {
  return a > b ? a : b;
}

// The logits of a pixel are read once and used at once: ask for a pixel's cache lines this many pixels ahead (the
// hardware prefetchers alone leave the loads of the logits waiting on memory).
constexpr int64_t kPrefetchPixels = 4;

template <typename scalar_t>
inline void prefetch_logits(const Shape& s, const scalar_t* weights, int64_t pix, int64_t num_pix) {
  prefetch_span(weights + imin(pix + kPrefetchPixels, num_pix - 1) * s.T, s.T);
}

// Per-thread state of one pixel's taps: the probabilities `p` and the biases `bias` of the current window offset,
// both padded to whole vectors.
template <typename scalar_t>
struct TapBuffers {
  scalar_t* p;
  scalar_t* bias;
  const scalar_t* bias_table;  // the group's bias table and the window offset (bias0) that `bias` was built from
  int64_t bias_key;
};

template <typename scalar_t>
inline int64_t padded_taps(const Shape& s) {
  return round_up(s.T, Simd<scalar_t>::lanes);
}

template <typename scalar_t>
TapBuffers<scalar_t> tap_buffers(const Shape& s, scalar_t* scratch) {
  const int64_t Tp = padded_taps<scalar_t>(s);
  TapBuffers<scalar_t> b{scratch, scratch + Tp, nullptr, -1};  // zero biases: right when there is no table
  for (int64_t t = 0; t < Tp; ++t) b.p[t] = b.bias[t] = 0;
  return b;
}

// P = softmax?(w + bias of the window) into p[0:T], p[T:Tp] = 0. Whole vectors throughout: the last, partial one
// is masked in registers (scalar tails and scalar stores read back as vectors cost more than the taps themselves
// at small K). `w_readable` says whether whole vectors may be read from w up to w[Tp - 1] (the next pixel's logits).
template <typename scalar_t>
inline void pixel_probs(const Shape& s, const scalar_t* w, bool w_readable, const scalar_t* rpb_g, const Window& win,
                        TapBuffers<scalar_t>& b, scalar_t* p) {
  using V = typename Simd<scalar_t>::vec;
  using IV = typename Simd<scalar_t>::ivec;
  using I = typename Simd<scalar_t>::index;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t T = s.T, full = T / L * L;  // taps in whole vectors
  if (rpb_g != nullptr && (win.bias0 != b.bias_key || rpb_g != b.bias_table)) {
    // The biases depend on the group and the window's offset only: rebuilt at the borders, reused inside.
    for (int64_t a = 0; a < s.K; ++a)
      for (int64_t e = 0; e < s.K; ++e) b.bias[a * s.K + e] = rpb_g[win.bias0 + a * s.R + e];
    b.bias_key = win.bias0;
    b.bias_table = rpb_g;
  }
  const scalar_t pad = s.softmax ? scalar_t(-1e30) : scalar_t(0);  // lanes past T: no weight in the max and sum
  const IV keep = lane_numbers<scalar_t>() < IV{} + static_cast<I>(T - full);
  V m = splat<V>(pad);
  for (int64_t t = 0; t < full; t += L) {
    const V x = load<V>(w + t) + load<V>(b.bias + t);
    store(p + t, x);
    m = vmax(m, x);
  }
  if (full < T) {
    V x;
    if (w_readable) {
      x = load<V>(w + full);
    } else {  // the last pixel of the tensor: nothing may be read past it
      scalar_t tail[L] = {};
      for (int64_t t = full; t < T; ++t) tail[t - full] = w[t];
      x = load<V>(tail);
    }
    x = keep ? x + load<V>(b.bias + full) : splat<V>(pad);
    store(p + full, x);
    m = vmax(m, x);
  }
  if (!s.softmax) return;
  const scalar_t mx = hmax<scalar_t>(m);
  V sum = V{};
  for (int64_t t = 0; t < full; t += L) {
    const V e = exp_nonpositive(load<V>(p + t) - mx);
    store(p + t, e);
    sum += e;
  }
  if (full < T) {
    const V e = keep ? exp_nonpositive(load<V>(p + full) - mx) : V{};
    store(p + full, e);
    sum += e;
  }
  const V inv = splat<V>(scalar_t(1) / hsum<scalar_t>(sum));
  for (int64_t t = 0; t < T; t += L) store(p + t, load<V>(p + t) * inv);
}

// Whether whole vectors may be read from the logits of pixel `pix` up to its padded tap count.
template <typename scalar_t>
inline bool logits_readable(const Shape& s, int64_t pix, int64_t num_pix) {
  return (num_pix - pix) * s.T >= padded_taps<scalar_t>(s);
}

// out[c0 : c0 + NV*lanes(V)] = sum over taps of p[t] * value[neighbour t, same channels]. CH accumulators take the
// taps in turn (summed in a fixed order at the end) so that consecutive multiply-adds do not wait on each other.
template <typename V, int NV, int CH, typename scalar_t>
inline void aggregate_block(const Shape& s, const scalar_t* p, const scalar_t* v_plane, const Window& win,
                            int64_t c0, scalar_t* out) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V acc[CH][NV];
  for (int ch = 0; ch < CH; ++ch)
    for (int k = 0; k < NV; ++k) acc[ch][k] = V{};
  const int64_t C = s.C, K = s.K;
  for (int64_t a = 0; a < K; ++a) {
    const scalar_t* vrow = v_plane + ((win.row0 + a) * s.W + win.col0) * C + c0;
    const scalar_t* pa = p + a * K;
    int64_t e = 0;
    for (; e + CH <= K; e += CH) {
      for (int ch = 0; ch < CH; ++ch) {
        const scalar_t pt = pa[e + ch];
        for (int k = 0; k < NV; ++k) acc[ch][k] += pt * load<V>(vrow + (e + ch) * C + k * L);
      }
    }
    for (; e < K; ++e) {
      const scalar_t pt = pa[e];
      for (int k = 0; k < NV; ++k) acc[0][k] += pt * load<V>(vrow + e * C + k * L);
    }
  }
  for (int k = 0; k < NV; ++k) {
    V total = acc[0][k];
    for (int ch = 1; ch < CH; ++ch) total += acc[ch][k];
    store(out + c0 + k * L, total);
  }
}

template <typename scalar_t>
inline void aggregate(const Shape& s, const scalar_t* p, const scalar_t* v_plane, const Window& win,
                      scalar_t* out) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= s.C; c0 += 4 * L) aggregate_block<V, 4, 1>(s, p, v_plane, win, c0, out);
  for (; c0 + 2 * L <= s.C; c0 += 2 * L) aggregate_block<V, 2, 2>(s, p, v_plane, win, c0, out);
  for (; c0 + L <= s.C; c0 += L) aggregate_block<V, 1, 4>(s, p, v_plane, win, c0, out);
  for (; c0 < s.C; ++c0) aggregate_block<scalar_t, 1, 4>(s, p, v_plane, win, c0, out);
}

template <typename scalar_t>
int64_t forward_scratch(const Shape& s) {
  return 2 * padded_taps<scalar_t>(s);
}

template <typename scalar_t>
void forward(const Shape& s, const Tensors<scalar_t>& x, int64_t begin, int64_t end, scalar_t* scratch) {
  TapBuffers<scalar_t> taps = tap_buffers(s, scratch);
  const int64_t num_pix = s.B * s.G * s.H * s.W;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t plane = row / s.H, i = row % s.H;
    const scalar_t* v_plane = x.value + plane * s.H * s.W * s.C;
    const scalar_t* rpb_g = x.rpb != nullptr ? x.rpb + (plane % s.G) * s.R * s.R : nullptr;
    for (int64_t j = 0; j < s.W; ++j) {
      const int64_t pix = row * s.W + j;
      const Window win = pixel_window(i, j, s.H, s.W, s.K);
      prefetch_logits(s, x.weights, pix, num_pix);
      pixel_probs(s, x.weights + pix * s.T, logits_readable<scalar_t>(s, pix, num_pix), rpb_g, win, taps, taps.p);
      aggregate(s, taps.p, v_plane, win, x.out + pix * s.C);
    }
  }
}

// ------------------------------------------------------------------------------------------------------ backward
// The backward works on one output row at a time, tap row by tap row, so that the rows it updates (a row of
// grad_value) and reads (a row of the channel-major values) stay in the L1 cache while it sweeps the pixels:
//   Prow[j*Tp + t]       the softmax of pixel j (recomputed),
//   DProw[j*Tpp + t]     dL/dP of pixel j, Tpp = Tp + lanes (a whole vector may be stored past the last tap).

// grad_value is gathered per value row: for tap row a of output row i (value row y = row0 + a),
//   grad_value[y, x] += sum over the pixels j whose windows contain x of P_j[a, x - col0(j)] * grad_out[j],
// kGatherColumns columns x at a time with one accumulator each. The pixels [jlo(x0), jhi(x0 + 3)] cover all four
// columns; for a column outside pixel j's window the tap index lies within kGatherColumns - 1 of the window, where
// the padded copy of P (PaddedTaps) holds zeros, so the loop needs no branch. Each element of grad_value sums its
// terms in (i, j) order.
constexpr int64_t kGatherColumns = 4;

// P of a row of pixels with every tap row padded by kGatherColumns - 1 zeros on both sides:
// pq[j * stride + a * row + pad + e], row = K + 2 * pad, stride = K * row.
struct PaddedTaps {
  int64_t pad, row, stride;
  explicit PaddedTaps(const Shape& s) : pad(kGatherColumns - 1), row(s.K + 2 * pad), stride(s.K * row) {}
};

// Copy pixel j's P (flat, p[a*K + e]) into the padded layout. Whole vectors with the lanes past K zeroed: their
// spill into the next row's pad and data is rewritten when that row is copied (rows and pixels go in order).
template <typename scalar_t>
inline void pad_taps(const Shape& s, const PaddedTaps& pt, const scalar_t* p, scalar_t* pq) {
  using V = typename Simd<scalar_t>::vec;
  for_tap_row_vectors<scalar_t>(s, [&](int64_t a, int64_t e0, auto keep) {
    store(pq + a * pt.row + pt.pad + e0, keep ? load<V>(p + a * s.K + e0) : V{});
  });
}

template <typename V, int NV, int U, typename scalar_t>
inline void gather_columns(const Shape& s, const PaddedTaps& pt, const scalar_t* pq_a, const scalar_t* go_row,
                           int64_t x0, int64_t c0, scalar_t* gv_row) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int k = 0; k < NV; ++k) acc[u][k] = V{};
  int64_t j_lo, j_hi, unused;
  inverse_window(x0, s.W, s.K, &j_lo, &unused);
  inverse_window(x0 + U - 1, s.W, s.K, &unused, &j_hi);
  for (int64_t j = j_lo; j <= j_hi; ++j) {
    const scalar_t* p = pq_a + j * pt.stride + pt.pad + x0 - window_start(j, s.W, s.K);  // tap of column x0
    V g[NV];
    for (int k = 0; k < NV; ++k) g[k] = load<V>(go_row + j * s.C + c0 + k * L);
    for (int u = 0; u < U; ++u)
      for (int k = 0; k < NV; ++k) acc[u][k] += p[u] * g[k];
  }
  for (int u = 0; u < U; ++u) {
    scalar_t* dst = gv_row + (x0 + u) * s.C + c0;
    for (int k = 0; k < NV; ++k) store(dst + k * L, load<V>(dst + k * L) + acc[u][k]);
  }
}

template <typename V, int NV, typename scalar_t>
inline void gather_row(const Shape& s, const PaddedTaps& pt, const scalar_t* pq_a, const scalar_t* go_row,
                       int64_t c0, scalar_t* gv_row) {
  int64_t x0 = 0;
  for (; x0 + kGatherColumns <= s.W; x0 += kGatherColumns)
    gather_columns<V, NV, kGatherColumns>(s, pt, pq_a, go_row, x0, c0, gv_row);
  for (; x0 < s.W; ++x0) gather_columns<V, NV, 1>(s, pt, pq_a, go_row, x0, c0, gv_row);
}

// grad_value row y += the contributions of tap row `a` of every pixel of the output row.
template <typename scalar_t>
void gather_value_grad(const Shape& s, const PaddedTaps& pt, const scalar_t* pq_a, const scalar_t* go_row,
                       scalar_t* gv_row) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  int64_t c0 = 0;
  for (; c0 + 2 * L <= s.C; c0 += 2 * L) gather_row<V, 2>(s, pt, pq_a, go_row, c0, gv_row);
  for (; c0 + L <= s.C; c0 += L) gather_row<V, 1>(s, pt, pq_a, go_row, c0, gv_row);
  for (; c0 < s.C; ++c0) gather_row<scalar_t, 1>(s, pt, pq_a, go_row, c0, gv_row);
}

// The value rows [row_begin, row_end) of one plane, row-major and channel-major inside a row:
// vt[(y - row_begin) * row_stride + c * Wp + x], rows padded with zeros to Wp = W + lanes so that a whole vector can
// be read from any window column.
template <typename scalar_t>
struct ValueRowsT {
  scalar_t* data;
  int64_t row_begin, Wp, row_stride;
};

template <typename scalar_t>
ValueRowsT<scalar_t> transpose_rows(const Shape& s, const scalar_t* v_plane, int64_t row_begin, int64_t row_end,
                                    scalar_t* buffer) {
  const int64_t Wp = s.W + Simd<scalar_t>::lanes;
  ValueRowsT<scalar_t> vt{buffer, row_begin, Wp, s.C * Wp};
  for (int64_t y = row_begin; y < row_end; ++y) {
    const scalar_t* src = v_plane + y * s.W * s.C;
    scalar_t* dst_row = buffer + (y - row_begin) * vt.row_stride;
    for (int64_t c = 0; c < s.C; ++c) {
      scalar_t* dst = dst_row + c * Wp;
      for (int64_t x = 0; x < s.W; ++x) dst[x] = src[x * s.C + c];
      for (int64_t x = s.W; x < Wp; ++x) dst[x] = 0;
    }
  }
  return vt;
}

// dL/dP_t = <grad_out, value[neighbour t]> of every pixel of an output row, one tap row a at a time and
// kTapDotPixels pixels j0.. at a time: their windows cover the columns [x0, x1) = [col0(j0), col0(j_last) + K) of
// value row row0 + a, at most K + P - 1 of them. Channel by channel, the channel-major values of those columns are
// multiplied with each pixel's grad_out[c] (broadcast) into P x (columns in vectors) accumulators, stored as the
// pixels' rows of a products buffer; once the tap row's tiles are done, each pixel copies its own K columns into its
// dp row. The few cache lines of one tap row stay in L1 across the pixels. Reading each pixel's whole window instead
// (416 cache lines at K 13, C 16, about the L1 cache's 32 KiB) ran at the L2 cache's rate: 21-26 of about 70 ms of a
// one-thread backward at benchmark_contmix's default shape, about 2 cycles per vector multiply-add (2-core AMD EPYC,
// Zen 3). The copies wait until the tap row's tiles are done, so that their loads, each spanning two of the tiles'
// stores, do not wait on stores still in flight.
constexpr int kTapDotPixels = CONTMIX_VEC_BYTES >= 64 ? 8 : 4;

// rows[p][col + x] = sum over channels of go[p * C + c] * vt_a[c * Wp + x], x < NX * lanes, for P pixels.
template <int P, int NX, typename scalar_t>
inline void tap_dot_tile(const Shape& s, const scalar_t* go, const scalar_t* vt_a, int64_t Wp,
                         scalar_t* const (&rows)[P], int64_t col) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[P][NX];
  for (int p = 0; p < P; ++p)
    for (int x = 0; x < NX; ++x) acc[p][x] = V{};
  for (int64_t c = 0; c < s.C; ++c) {
    V v[NX];
    for (int x = 0; x < NX; ++x) v[x] = load<V>(vt_a + c * Wp + x * L);
    for (int p = 0; p < P; ++p) {
      const V g = splat<V>(go[p * s.C + c]);
      for (int x = 0; x < NX; ++x) acc[p][x] += g * v[x];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int x = 0; x < NX; ++x) store(rows[p] + col + x * L, acc[p][x]);
}

// Columns per pixel in the products buffer: whole vectors past the widest tile (K + P - 1 columns) and one more. A
// pixel's row is anchored at its window start, up to P - 1 columns after its tile's, so the tile's stores for it
// begin up to P - 1 columns early, in the previous pixel's row past the whole vectors that hold its K columns.
template <typename scalar_t>
inline int64_t tap_dot_columns(const Shape& s) {
  return round_up(s.K + kTapDotPixels - 1, Simd<scalar_t>::lanes) + Simd<scalar_t>::lanes;
}

// The products of P pixels j0.. with tap row vt_a. Pixel j's row of m (m_stride apart) is anchored at its own window
// start: column window_start(j) of the tap row lands at m + j * m_stride, whichever tile computed it.
template <int P, typename scalar_t>
inline void tap_row_tiles(const Shape& s, int64_t j0, const scalar_t* go_row, const scalar_t* vt_a, int64_t Wp,
                          scalar_t* m, int64_t m_stride) {
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t x0 = window_start(j0, s.W, s.K), x1 = window_start(j0 + P - 1, s.W, s.K) + s.K;
  const int64_t nvec = (x1 - x0 + L - 1) / L;
  const scalar_t* go = go_row + j0 * s.C;
  scalar_t* rows[P];
  for (int p = 0; p < P; ++p) rows[p] = m + (j0 + p) * m_stride - (window_start(j0 + p, s.W, s.K) - x0);
  int64_t xv = 0;
  for (; xv + 2 <= nvec; xv += 2) tap_dot_tile<P, 2>(s, go, vt_a + x0 + xv * L, Wp, rows, xv * L);
  if (xv < nvec) tap_dot_tile<P, 1>(s, go, vt_a + x0 + xv * L, Wp, rows, xv * L);
}

// vt_rows: the value rows (channel-major, `row_stride` apart) from the window's first row, column 0. dp of pixel j
// at dp_row + j * Tpp; m: W * tap_dot_columns scratch.
template <typename scalar_t>
inline void row_tap_dots(const Shape& s, const scalar_t* go_row, const scalar_t* vt_rows, int64_t Wp,
                         int64_t row_stride, scalar_t* m, scalar_t* dp_row, int64_t Tpp) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  constexpr int P = kTapDotPixels;
  const int64_t m_stride = tap_dot_columns<scalar_t>(s);
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* vt_a = vt_rows + a * row_stride;
    int64_t j0 = 0;
    for (; j0 + P <= s.W; j0 += P) tap_row_tiles<P>(s, j0, go_row, vt_a, Wp, m, m_stride);
    for (; j0 < s.W; ++j0) tap_row_tiles<1>(s, j0, go_row, vt_a, Wp, m, m_stride);
    for (int64_t j = 0; j < s.W; ++j) {
      // Whole vectors: the lanes past the row's K taps land on the next tap row's slots (written by its own turn,
      // later) or, for the last tap row, in dp's padding.
      const scalar_t* src = m + j * m_stride;
      scalar_t* dst = dp_row + j * Tpp + a * s.K;
      for (int64_t e0 = 0; e0 < s.K; e0 += L) store(dst + e0, load<V>(src + e0));
    }
  }
}

// gl[0:Tp] = dL/d(biased logit) from dp = dL/dP (zero past T), whole vectors: p[T:Tp] = 0 (pixel_probs) and
// dp's lanes past T, which hold dot products of other columns, are masked out.
template <typename scalar_t>
inline void logit_grads(const Shape& s, const scalar_t* p, const scalar_t* dp, scalar_t* gl) {
  using V = typename Simd<scalar_t>::vec;
  using IV = typename Simd<scalar_t>::ivec;
  using I = typename Simd<scalar_t>::index;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t T = s.T, full = T / L * L;
  const IV keep = lane_numbers<scalar_t>() < IV{} + static_cast<I>(T - full);
  if (!s.softmax) {
    for (int64_t t = 0; t < full; t += L) store(gl + t, load<V>(dp + t));
    if (full < T) store(gl + full, keep ? load<V>(dp + full) : V{});
    return;
  }
  // dot = sum_t P_t dL/dP_t; dL/dl_t = P_t (dL/dP_t - dot).
  V dot_v = V{};
  for (int64_t t = 0; t < full; t += L) dot_v += load<V>(p + t) * load<V>(dp + t);
  if (full < T) dot_v += keep ? load<V>(p + full) * load<V>(dp + full) : V{};
  const V dot_s = splat<V>(hsum<scalar_t>(dot_v));
  for (int64_t t = 0; t < full; t += L) store(gl + t, load<V>(p + t) * (load<V>(dp + t) - dot_s));
  if (full < T) store(gl + full, keep ? load<V>(p + full) * (load<V>(dp + full) - dot_s) : V{});
}

// One pixel's logit gradients added to its output row's grad_rpb partial sum: tap (a, e) lands in the slot's row a
// (table row dr0 + a) and column cq0 + e. The slot rows have room for a whole vector past their last column.
template <typename scalar_t>
inline void add_rpb_partial(const Shape& s, const scalar_t* gl, int64_t cq0, int64_t slot_stride, scalar_t* slot) {
  using V = typename Simd<scalar_t>::vec;
  for_tap_row_vectors<scalar_t>(s, [&](int64_t a, int64_t e0, auto keep) {
    scalar_t* dst = slot + a * slot_stride + cq0 + e0;
    store(dst, load<V>(dst) + (keep ? load<V>(gl + a * s.K + e0) : V{}));
  });
}

template <typename scalar_t>
int64_t rpb_row_stride(const Shape& s) {
  return s.R + Simd<scalar_t>::lanes;
}

// Layout of the backward's scratch: biases (Tp), gl (Tp + L), the products buffer of the tap dots (W rows),
// dp_row (W * Tpp), Prow (W * Tp), the padded copy of Prow (W * K * (K + 2 pad) + L), the value rows.
template <typename scalar_t>
struct BackwardScratch {
  int64_t Tp, Tpp, m_offset, dp_offset, p_offset, pq_offset, vt_offset, size;
  BackwardScratch(const Shape& s, int64_t band) {
    const int64_t L = Simd<scalar_t>::lanes;
    Tp = padded_taps<scalar_t>(s);
    Tpp = Tp + L;
    m_offset = Tp + Tpp;
    dp_offset = m_offset + s.W * tap_dot_columns<scalar_t>(s);
    p_offset = dp_offset + s.W * Tpp;
    pq_offset = p_offset + s.W * Tp;
    vt_offset = pq_offset + s.W * PaddedTaps(s).stride + L;
    size = vt_offset + (band + s.K) * s.C * (s.W + L);
  }
};

template <typename scalar_t>
int64_t backward_scratch(const Shape& s, int64_t band) {
  return BackwardScratch<scalar_t>(s, band).size;
}

template <typename scalar_t>
void backward(const Shape& s, const Tensors<scalar_t>& x, int64_t band, int64_t begin, int64_t end,
              scalar_t* scratch) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const BackwardScratch<scalar_t> layout(s, band);
  const int64_t bands = (s.H + band - 1) / band, Tp = layout.Tp, Tpp = layout.Tpp;
  TapBuffers<scalar_t> taps{nullptr, scratch, nullptr, -1};
  scalar_t* gl = scratch + Tp;
  scalar_t* m = scratch + layout.m_offset;
  scalar_t* dp_row = scratch + layout.dp_offset;
  scalar_t* p_row = scratch + layout.p_offset;
  scalar_t* pq_row = scratch + layout.pq_offset;
  const PaddedTaps padded(s);
  scalar_t* vt_buffer = scratch + layout.vt_offset;
  for (int64_t t = 0; t < layout.vt_offset; ++t) scratch[t] = 0;
  const int64_t slot_stride = rpb_row_stride<scalar_t>(s), slot_size = s.K * slot_stride;
  const int64_t num_pix = s.B * s.G * s.H * s.W;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t plane = task / bands;
    const int64_t y0 = (task % bands) * band, y1 = imin(s.H, y0 + band);  // value rows [y0, y1) of this task
    const int64_t plane_pix = plane * s.H * s.W;
    const scalar_t* v_plane = x.value + plane_pix * s.C;
    scalar_t* gv_plane = x.grad_value + plane_pix * s.C;
    const scalar_t* rpb_g = x.rpb != nullptr ? x.rpb + (plane % s.G) * s.R * s.R : nullptr;
    for (int64_t k = y0 * s.W * s.C; k < y1 * s.W * s.C; ++k) gv_plane[k] = 0;
    // The output rows [y0, y1) are this task's: their windows cover the value rows [start(y0), start(y1-1) + K).
    const ValueRowsT<scalar_t> vt = transpose_rows(s, v_plane, window_start(y0, s.H, s.K),
                                                   window_start(y1 - 1, s.H, s.K) + s.K, vt_buffer);
    // The output rows whose windows reach into [y0, y1).
    int64_t i_first, i_last, unused;
    inverse_window(y0, s.H, s.K, &i_first, &unused);
    inverse_window(y1 - 1, s.H, s.K, &unused, &i_last);
    for (int64_t i = i_first; i <= i_last; ++i) {
      const int64_t row0 = window_start(i, s.H, s.K);
      const int64_t a0 = imax(0, y0 - row0), a1 = imin(s.K, y1 - row0);  // tap rows inside the band
      const int64_t row_pix = plane_pix + i * s.W;
      const scalar_t* go_row = x.grad_out + row_pix * s.C;
      for (int64_t j = 0; j < s.W; ++j) {
        prefetch_logits(s, x.weights, row_pix + j, num_pix);
        const Window win = pixel_window(i, j, s.H, s.W, s.K);
        pixel_probs(s, x.weights + (row_pix + j) * s.T, logits_readable<scalar_t>(s, row_pix + j, num_pix), rpb_g, win,
                    taps, p_row + j * Tp);
        if (a0 < a1) pad_taps(s, padded, p_row + j * Tp, pq_row + j * padded.stride);
      }
      // grad_value, one value row (one tap row) at a time.
      for (int64_t a = a0; a < a1; ++a)
        gather_value_grad(s, padded, pq_row + a * padded.row, go_row, gv_plane + (row0 + a) * s.W * s.C);
      if (i < y0 || i >= y1) continue;  // grad_weights and grad_rpb of row i belong to the band holding it
      const scalar_t* vt_rows = vt.data + (row0 - vt.row_begin) * vt.row_stride;
      scalar_t* slot = x.rpb_rows != nullptr ? x.rpb_rows + (plane * s.H + i) * slot_size : nullptr;
      if (slot != nullptr)
        for (int64_t k = 0; k < slot_size; ++k) slot[k] = 0;
      row_tap_dots(s, go_row, vt_rows, vt.Wp, vt.row_stride, m, dp_row, Tpp);
      for (int64_t j = 0; j < s.W; ++j) {
        logit_grads(s, p_row + j * Tp, dp_row + j * Tpp, gl);
        scalar_t* gw = x.grad_weights + (row_pix + j) * s.T;
        // Whole vectors, the last one spilling into pixel j + 1's slots, which its own turn rewrites; the row's last
        // pixel stops at T (the next row may belong to another thread).
        const int64_t whole = j + 1 < s.W && Tp <= 2 * s.T ? Tp : s.T / L * L;
        int64_t t = 0;
        for (; t < whole; t += L) store(gw + t, load<V>(gl + t));
        for (; t < s.T; ++t) gw[t] = gl[t];
        if (slot != nullptr) add_rpb_partial(s, gl, window_start(j, s.W, s.K) - j + s.K - 1, slot_stride, slot);
      }
    }
  }
}

}  // namespace

// Constant-initialised (function addresses only), so loading the library runs no code of this instruction set.
extern const Kernels kernels;
constexpr Kernels kernels = {
    CONTMIX_CPU_CAPABILITY_NAME,
    {&forward_scratch<float>, &backward_scratch<float>, &rpb_row_stride<float>, &forward<float>, &backward<float>},
    {&forward_scratch<double>, &backward_scratch<double>, &rpb_row_stride<double>, &forward<double>,
     &backward<double>},
};
