// LAWN's whole constrained step fused with the base optimizer's update, on CPU (see lawn/constraint/fused_step.py).
//
// For each constrained weight w with gradient g (per tensor, or per row w_i), in one kernel:
//
//   projection   g <- g - (<g, w> / |w|^2) w                  (optional)
//   base step    Adam / AdamW (torch.optim.Adam's math, incl. weight_decay, amsgrad, maximize) or
//                SGD (momentum, dampening, nesterov, weight_decay, maximize), on the state in torch's own format
//   retraction   w <- w * (target / |w|)                       (optional)
//
// Per row: a row is read from memory once, software-pipelined: the loop over row i's elements updates row i
// (summing |w_i'|^2 as the new values are stored), sums <g, w> of row i+1 as it streams in from memory, and
// rescales row i-1, still in cache. The memory traffic is the base step's alone (Adam: read w, g, m, v; write w,
// m, v) and the memory streams overlap the update's arithmetic.
// Per tensor: the coefficient needs the whole tensor's dot before the update, and the rescale the whole
// tensor's new norm after it, so there are three passes (dot; update + norm; rescale). Each thread handles the
// same contiguous range of the tensor in all three, so what it touched last is still in its caches.
//
// Math in fp32 for fp32 and bf16 weights (state in the weights' dtype: torch's own format, which its optimizers
// require), rounded once when stored, as torch's fused optimizers do. Sums: fp32 vector lanes over blocks of
// BLOCK elements, fp64 across blocks, in block order (independent of the thread count).
// The loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 (GCC target_clones) and the best one the CPU
// has is picked at load time, as in fused_constraint.cpp.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef LAWN_VECTOR_CLONES
// defined by the other kernel of the same translation unit (csrc/kernels.cpp)
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LAWN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LAWN_VECTOR_CLONES
#endif
#define LAWN_INLINE inline __attribute__((always_inline))

namespace lawn_step {

namespace {

constexpr int64_t BLOCK = 4096;  // elements summed in fp32 lanes before the fp64 accumulation

using bf16 = uint16_t;  // storage of a bfloat16

LAWN_INLINE float load(float x) { return x; }
LAWN_INLINE float load(bf16 x) {
  const uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// Store x as T; return the value stored, as float.
LAWN_INLINE float put(float* p, float x) {
  *p = x;
  return x;
}
LAWN_INLINE float put(bf16* p, float x) {  // round to nearest even, NaN stays NaN (as c10::BFloat16)
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const bf16 h = static_cast<bf16>(x != x ? 0x7FC0u : (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  *p = h;
  return load(h);
}

// x as a float if finite, else fallback (issue 12, item 13: one non-finite entry must not spread to the tensor).
inline float finite_or(double x, float fallback) { return std::isfinite(x) ? static_cast<float>(x) : fallback; }

// Per-element coefficients. sign: -1 with maximize; weight_decay: L2 (Adam, SGD), 0 for AdamW, whose decoupled
// decay is the factor decay = 1 - lr * weight_decay (1 otherwise).
struct Adam {
  float sign, weight_decay, decay, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt, eps;
  bool amsgrad;
};

struct Sgd {
  float sign, weight_decay, lr, momentum, one_minus_dampening;
  bool nesterov, has_momentum;
};

// <g, w> and |w|^2 over n elements: fp32 lanes per block, fp64 across blocks.
template <typename T>
LAWN_INLINE void dot_sq(const T* g, const T* w, int64_t n, double* dot, double* sq) {
  double d = 0.0, s = 0.0;
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t len = std::min(BLOCK, n - start);
    const T* x = g + start;
    const T* y = w + start;
    float bd = 0.f, bs = 0.f;
#pragma omp simd reduction(+ : bd, bs)
    for (int64_t i = 0; i < len; ++i) {
      const float wi = load(y[i]);
      bd += load(x[i]) * wi;
      bs += wi * wi;
    }
    d += bd;
    s += bs;
  }
  *dot = d;
  *sq = s;
}

// The Adam update of n elements (g projected with coefficient c first); returns sum of the new w^2 (as stored).
template <typename T>
LAWN_INLINE double adam_span(T* w, const T* g, T* m, T* v, T* vmax, int64_t n, float c, const Adam& hyper) {
  const Adam k = hyper;  // a local copy: stores through w, m, v cannot alias it (keeps the loops vectorised)
  double total = 0.0;
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t len = std::min(BLOCK, n - start);
    T* wb = w + start;
    const T* gb = g + start;
    T* mb = m + start;
    T* vb = v + start;
    float sq = 0.f;
    if (k.amsgrad) {
      T* xb = vmax + start;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < len; ++i) {
        const float w0 = load(wb[i]);
        const float gi = (load(gb[i]) - c * w0) * k.sign + w0 * k.weight_decay;
        const float m0 = load(mb[i]);
        const float mi = put(mb + i, m0 + k.one_minus_beta1 * (gi - m0));
        const float vi = put(vb + i, load(vb[i]) * k.beta2 + k.one_minus_beta2 * gi * gi);
        const float xi = put(xb + i, std::max(load(xb[i]), vi));
        const float denom = std::sqrt(xi) / k.bias_correction2_sqrt + k.eps;
        const float wi = put(wb + i, w0 * k.decay - k.step_size * mi / denom);
        sq += wi * wi;
      }
    } else {
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < len; ++i) {
        const float w0 = load(wb[i]);
        const float gi = (load(gb[i]) - c * w0) * k.sign + w0 * k.weight_decay;
        const float m0 = load(mb[i]);
        const float mi = put(mb + i, m0 + k.one_minus_beta1 * (gi - m0));
        const float vi = put(vb + i, load(vb[i]) * k.beta2 + k.one_minus_beta2 * gi * gi);
        const float denom = std::sqrt(vi) / k.bias_correction2_sqrt + k.eps;
        const float wi = put(wb + i, w0 * k.decay - k.step_size * mi / denom);
        sq += wi * wi;
      }
    }
    total += sq;
  }
  return total;
}

// SGD with momentum over one block; FIRST: the buffer is new (takes the gradient), NESTEROV: look ahead.
template <typename T, bool FIRST, bool NESTEROV>
LAWN_INLINE float sgd_momentum_block(T* wb, const T* gb, T* bb, int64_t len, float c, const Sgd& k) {
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < len; ++i) {
    const float w0 = load(wb[i]);
    const float gi = (load(gb[i]) - c * w0) * k.sign + w0 * k.weight_decay;
    const float bi = put(bb + i, FIRST ? gi : load(bb[i]) * k.momentum + gi * k.one_minus_dampening);
    const float d = NESTEROV ? gi + bi * k.momentum : bi;
    const float wi = put(wb + i, w0 - d * k.lr);
    sq += wi * wi;
  }
  return sq;
}

// The SGD update of n elements (g projected with coefficient c first); returns sum of the new w^2 (as stored).
template <typename T>
LAWN_INLINE double sgd_span(T* w, const T* g, T* buf, int64_t n, float c, const Sgd& hyper, bool first) {
  const Sgd k = hyper;  // a local copy: stores through w, buf cannot alias it
  double total = 0.0;
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t len = std::min(BLOCK, n - start);
    T* wb = w + start;
    const T* gb = g + start;
    float sq = 0.f;
    if (!k.has_momentum) {
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < len; ++i) {
        const float w0 = load(wb[i]);
        const float gi = (load(gb[i]) - c * w0) * k.sign + w0 * k.weight_decay;
        const float wi = put(wb + i, w0 - gi * k.lr);
        sq += wi * wi;
      }
    } else if (first) {
      sq = k.nesterov ? sgd_momentum_block<T, true, true>(wb, gb, buf + start, len, c, k)
                      : sgd_momentum_block<T, true, false>(wb, gb, buf + start, len, c, k);
    } else {
      sq = k.nesterov ? sgd_momentum_block<T, false, true>(wb, gb, buf + start, len, c, k)
                      : sgd_momentum_block<T, false, false>(wb, gb, buf + start, len, c, k);
    }
    total += sq;
  }
  return total;
}

template <typename T>
LAWN_INLINE void scale_span(T* w, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) put(w + i, load(w[i]) * s);
}

// What one kernel call does to one tensor (all pointers into its storage).
template <typename T>
struct Job {
  T* w;
  const T* g;
  T* a;  // Adam: exp_avg; SGD: momentum_buffer (or nullptr)
  T* b;  // Adam: exp_avg_sq
  T* x;  // Adam: max_exp_avg_sq (amsgrad) or nullptr
  const float* target;  // the target norm(s), or nullptr (no retraction)
  int64_t rows, cols;
  bool project, first;
};

template <typename T>
LAWN_INLINE double update(const Job<T>& j, const Adam& k, int64_t off, int64_t n, float c) {
  return adam_span(j.w + off, j.g + off, j.a + off, j.b + off, j.x ? j.x + off : nullptr, n, c, k);
}

template <typename T>
LAWN_INLINE double update(const Job<T>& j, const Sgd& k, int64_t off, int64_t n, float c) {
  return sgd_span(j.w + off, j.g + off, j.a ? j.a + off : nullptr, n, c, k, j.first);
}

// Per-element updates for the pipelined rows below: op(i, w, g) stores the state at i and returns the new weight,
// g being the projected gradient.
template <typename T, bool AMSGRAD>
struct AdamOp {
  Adam k;
  T* m;
  T* v;
  T* x;
  LAWN_INLINE float operator()(int64_t i, float w0, float g) const {
    const float gi = g * k.sign + w0 * k.weight_decay;
    const float m0 = load(m[i]);
    const float mi = put(m + i, m0 + k.one_minus_beta1 * (gi - m0));
    float vi = put(v + i, load(v[i]) * k.beta2 + k.one_minus_beta2 * gi * gi);
    if constexpr (AMSGRAD) vi = put(x + i, std::max(load(x[i]), vi));
    return w0 * k.decay - k.step_size * mi / (std::sqrt(vi) / k.bias_correction2_sqrt + k.eps);
  }
};

template <typename T, bool MOMENTUM, bool FIRST, bool NESTEROV>
struct SgdOp {
  Sgd k;
  T* b;
  LAWN_INLINE float operator()(int64_t i, float w0, float g) const {
    const float gi = g * k.sign + w0 * k.weight_decay;
    if constexpr (!MOMENTUM) {
      return w0 - gi * k.lr;
    } else {
      const float bi = put(b + i, FIRST ? gi : load(b[i]) * k.momentum + gi * k.one_minus_dampening);
      return w0 - (NESTEROV ? gi + bi * k.momentum : bi) * k.lr;
    }
  }
};

// One row's loop (elements [off, off + n) of the tensor): the update of this row with coefficient c (returning its
// new sum of squares), and, in the same loop, the dot (and |w|^2) of the next row (gn, wn: its g and w, streaming
// in from memory while this row's arithmetic runs) and, if SCALE, the rescale of the previous row (wp, by sp:
// still in cache). Without a next row, gn = wn = g (read only, the sums unused).
template <bool SCALE, typename T, typename Op>
LAWN_INLINE double row_loop(T* w, const T* g, int64_t off, int64_t n, float c, const Op& op, const T* gn, const T* wn,
                            T* wp, float sp, double* dot_next, double* sq_next) {
  double total = 0.0, dot = 0.0, sq = 0.0;
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t len = std::min(BLOCK, n - start);
    float bt = 0.f, bd = 0.f, bs = 0.f;
#pragma omp simd reduction(+ : bt, bd, bs)
    for (int64_t i = start; i < start + len; ++i) {
      const float w0 = load(w[i]);
      const float wi = put(w + i, op(off + i, w0, load(g[i]) - c * w0));
      bt += wi * wi;
      const float wni = load(wn[i]);
      bd += load(gn[i]) * wni;
      bs += wni * wni;
      if constexpr (SCALE) put(wp + i, load(wp[i]) * sp);
    }
    total += bt;
    dot += bd;
    sq += bs;
  }
  *dot_next = dot;
  *sq_next = sq;
  return total;
}

// Rows [first, last), software-pipelined: row r's loop also sums row r+1's dot and rescales row r-1, so the memory
// streams (this row's state, the next row's g and w) overlap the arithmetic, and each row is read from memory once.
template <typename T, typename Op>
LAWN_INLINE void rows_pipelined(const Job<T>& j, const Op& op, int64_t first, int64_t last) {
  const int64_t n = j.cols;
  auto coefficient = [&](int64_t r, double dot, double sq) -> float {
    if (!j.project) return 0.f;
    return finite_or(dot / sq, 0.f);  // a non-finite gradient or norm: this row is not projected
  };
  auto scale_of = [&](int64_t r, double nsq) -> float {
    return j.target == nullptr ? 1.f : finite_or(double(j.target[r]) / std::sqrt(nsq), 1.f);  // else: not rescaled
  };
  double dot, sq;
  dot_sq(j.g + first * n, j.w + first * n, n, &dot, &sq);
  float c = coefficient(first, dot, sq), sp = 1.f;
  for (int64_t r = first; r < last; ++r) {
    T* w = j.w + r * n;
    const T* g = j.g + r * n;
    const bool next = r + 1 < last;
    const T* gn = next ? g + n : g;
    const T* wn = next ? w + n : g;
    double nsq;
    if (r == first) {
      nsq = row_loop<false>(w, g, r * n, n, c, op, gn, wn, static_cast<T*>(nullptr), 1.f, &dot, &sq);
    } else {
      nsq = row_loop<true>(w, g, r * n, n, c, op, gn, wn, w - n, sp, &dot, &sq);
    }
    sp = scale_of(r, nsq);
    if (next) c = coefficient(r + 1, dot, sq);
  }
  if (j.target != nullptr) scale_span(j.w + (last - 1) * n, sp, n);
}

template <typename T>
LAWN_INLINE void rows_range(const Job<T>& j, const Adam& k, int64_t first, int64_t last) {
  if (k.amsgrad) {
    rows_pipelined(j, AdamOp<T, true>{k, j.a, j.b, j.x}, first, last);
  } else {
    rows_pipelined(j, AdamOp<T, false>{k, j.a, j.b, nullptr}, first, last);
  }
}

template <typename T>
LAWN_INLINE void rows_range(const Job<T>& j, const Sgd& k, int64_t first, int64_t last) {
  if (!k.has_momentum) {
    rows_pipelined(j, SgdOp<T, false, false, false>{k, nullptr}, first, last);
  } else if (j.first) {
    if (k.nesterov) rows_pipelined(j, SgdOp<T, true, true, true>{k, j.a}, first, last);
    else rows_pipelined(j, SgdOp<T, true, true, false>{k, j.a}, first, last);
  } else {
    if (k.nesterov) rows_pipelined(j, SgdOp<T, true, false, true>{k, j.a}, first, last);
    else rows_pipelined(j, SgdOp<T, true, false, false>{k, j.a}, first, last);
  }
}

// Blocks [first, last) of a whole tensor: the update, each block's new sum of squares into out.
template <typename T, typename K>
LAWN_INLINE void blocks_range(const Job<T>& j, const K& k, float c, int64_t first, int64_t last, double* out) {
  for (int64_t blk = first; blk < last; ++blk) {
    const int64_t off = blk * BLOCK;
    out[blk] = update(j, k, off, std::min(BLOCK, j.rows * j.cols - off), c);
  }
}

// One function per (optimizer, dtype) and piece, each compiled per instruction set.
#define LAWN_DEFINE(T, NAME)                                                                                     \
  LAWN_VECTOR_CLONES void adam_rows_##NAME(const Job<T>& j, const Adam& k, int64_t first, int64_t last) {        \
    rows_range(j, k, first, last);                                                                               \
  }                                                                                                              \
  LAWN_VECTOR_CLONES void sgd_rows_##NAME(const Job<T>& j, const Sgd& k, int64_t first, int64_t last) {          \
    rows_range(j, k, first, last);                                                                               \
  }                                                                                                              \
  LAWN_VECTOR_CLONES void dot_range_##NAME(const Job<T>& j, int64_t first, int64_t last, double* out) {          \
    for (int64_t blk = first; blk < last; ++blk) {                                                               \
      const int64_t off = blk * BLOCK, n = std::min(BLOCK, j.rows * j.cols - off);                               \
      dot_sq(j.g + off, j.w + off, n, out + 2 * blk, out + 2 * blk + 1);                                         \
    }                                                                                                            \
  }                                                                                                              \
  LAWN_VECTOR_CLONES void adam_range_##NAME(const Job<T>& j, const Adam& k, float c, int64_t first, int64_t last, \
                                            double* out) {                                                       \
    blocks_range(j, k, c, first, last, out);                                                                     \
  }                                                                                                              \
  LAWN_VECTOR_CLONES void sgd_range_##NAME(const Job<T>& j, const Sgd& k, float c, int64_t first, int64_t last,   \
                                           double* out) {                                                        \
    blocks_range(j, k, c, first, last, out);                                                                     \
  }                                                                                                              \
  LAWN_VECTOR_CLONES void scale_range_##NAME(const Job<T>& j, float s, int64_t first, int64_t last) {            \
    const int64_t n = j.rows * j.cols, lo = first * BLOCK, hi = std::min(last * BLOCK, n);                       \
    scale_span(j.w + lo, s, hi - lo);                                                                            \
  }

LAWN_DEFINE(float, f32)
LAWN_DEFINE(bf16, bf16)

// Overloads so that the driver below is written once for both dtypes.
#define LAWN_DISPATCH(T, NAME)                                                                                   \
  inline void rows(const Job<T>& j, const Adam& k, int64_t f, int64_t l) { adam_rows_##NAME(j, k, f, l); }       \
  inline void rows(const Job<T>& j, const Sgd& k, int64_t f, int64_t l) { sgd_rows_##NAME(j, k, f, l); }         \
  inline void dots(const Job<T>& j, int64_t f, int64_t l, double* o) { dot_range_##NAME(j, f, l, o); }           \
  inline void blocks(const Job<T>& j, const Adam& k, float c, int64_t f, int64_t l, double* o) {                 \
    adam_range_##NAME(j, k, c, f, l, o);                                                                         \
  }                                                                                                              \
  inline void blocks(const Job<T>& j, const Sgd& k, float c, int64_t f, int64_t l, double* o) {                  \
    sgd_range_##NAME(j, k, c, f, l, o);                                                                          \
  }                                                                                                              \
  inline void scales(const Job<T>& j, float s, int64_t f, int64_t l) { scale_range_##NAME(j, s, f, l); }

LAWN_DISPATCH(float, f32)
LAWN_DISPATCH(bf16, bf16)

// Row grain: enough rows per task to amortise the scheduling (~16k elements).
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)); }
constexpr int64_t BLOCK_GRAIN = 4;  // blocks per task, per tensor

// One tensor: per row, one parallel loop over rows; per tensor, three parallel loops over the same blocks.
template <typename T, typename K>
void run(const Job<T>& j, const K& k, bool per_row) {
  if (per_row) {
    at::parallel_for(0, j.rows, row_grain(j.cols), [&](int64_t f, int64_t l) { rows(j, k, f, l); });
    return;
  }
  const int64_t n = j.rows * j.cols, nblocks = (n + BLOCK - 1) / BLOCK;
  std::vector<double> part(2 * nblocks);
  float c = 0.f;
  if (j.project) {
    at::parallel_for(0, nblocks, BLOCK_GRAIN, [&](int64_t f, int64_t l) { dots(j, f, l, part.data()); });
    double dot = 0.0, sq = 0.0;  // in block order: independent of the number of threads
    for (int64_t b = 0; b < nblocks; ++b) {
      dot += part[2 * b];
      sq += part[2 * b + 1];
    }
    c = finite_or(dot / sq, 0.f);  // a non-finite gradient or norm: the tensor is not projected
  }
  at::parallel_for(0, nblocks, BLOCK_GRAIN, [&](int64_t f, int64_t l) { blocks(j, k, c, f, l, part.data()); });
  if (j.target == nullptr) return;
  double nsq = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) nsq += part[b];
  const float s = finite_or(double(j.target[0]) / std::sqrt(nsq), 1.f);  // non-finite: not rescaled
  at::parallel_for(0, nblocks, BLOCK_GRAIN, [&](int64_t f, int64_t l) { scales(j, s, f, l); });
}

void check_like(const torch::Tensor& t, const torch::Tensor& w, const char* what, size_t k) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == w.scalar_type() && t.sizes() == w.sizes() &&
                  t.strides() == w.strides(),
              what, "[", k, "]: expected a CPU tensor of the weight's dtype, shape and layout");
}

const float* optional_floats(const torch::Tensor& t, int64_t count, const char* what, size_t k) {
  if (t.numel() == 0) return nullptr;
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == count,
              what, "[", k, "]: expected ", count, " contiguous float32 value(s) on the CPU");
  return t.data_ptr<float>();
}

template <typename T>
Job<T> job(const torch::Tensor& w, const torch::Tensor& g, const torch::Tensor* a, const torch::Tensor* b,
           const torch::Tensor* x, const torch::Tensor& target, bool per_row,
           bool project, bool retract, size_t k) {
  TORCH_CHECK(w.device().is_cpu() && w.is_non_overlapping_and_dense(), "param[", k, "]: expected a dense CPU tensor");
  TORCH_CHECK(!per_row || w.dim() == 0 || w.size(0) <= 1 || w.stride(0) * w.size(0) == w.numel(),
              "param[", k, "]: per row, dim 0 must be the outermost (each row one block of memory)");
  check_like(g, w, "grad", k);
  Job<T> j{};
  j.rows = per_row ? w.size(0) : 1;
  j.cols = j.rows > 0 ? w.numel() / j.rows : 0;
  j.w = reinterpret_cast<T*>(w.data_ptr());
  j.g = reinterpret_cast<const T*>(g.data_ptr());
  if (a != nullptr) {
    check_like(*a, w, "state", k);
    j.a = reinterpret_cast<T*>(a->data_ptr());
  }
  if (b != nullptr) {
    check_like(*b, w, "state", k);
    j.b = reinterpret_cast<T*>(b->data_ptr());
  }
  if (x != nullptr) {
    check_like(*x, w, "max_exp_avg_sq", k);
    j.x = reinterpret_cast<T*>(x->data_ptr());
  }
  j.project = project;
  j.target = retract ? optional_floats(target, j.rows, "target", k) : nullptr;
  TORCH_CHECK(!retract || j.target != nullptr, "target[", k, "]: expected the target norm(s)");
  return j;
}

double increment(torch::Tensor& step, size_t k) {  // step += 1 in place (torch's `step` state); its new value
  TORCH_CHECK(step.device().is_cpu() && step.numel() == 1, "step[", k, "]: expected a one-element CPU tensor");
  if (step.scalar_type() == torch::kFloat64) return ++*step.data_ptr<double>();
  TORCH_CHECK(step.scalar_type() == torch::kFloat32, "step[", k, "]: expected float32 or float64");
  return ++*step.data_ptr<float>();
}

}  // namespace

// In place, for each k: project grads[k] (if project), one Adam step on params[k] with its state, retract params[k]
// onto targets[k] (if retract). max_exp_avg_sqs empty unless amsgrad.
void adam_(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads, std::vector<torch::Tensor> exp_avgs,
           std::vector<torch::Tensor> exp_avg_sqs, std::vector<torch::Tensor> max_exp_avg_sqs,
           std::vector<torch::Tensor> steps, std::vector<torch::Tensor> targets,
           double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool amsgrad,
           bool maximize, bool project, bool retract, bool per_row) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n &&
                  targets.size() == n && (!amsgrad || max_exp_avg_sqs.size() == n),
              "adam_: lists differ in length");
  // The step counts first, each with its own bias corrections (as torch: step += 1, then the update).
  std::vector<Adam> hyper(n);
  for (size_t k = 0; k < n; ++k) {
    const double step = increment(steps[k], k);
    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    const double bias_correction2 = 1.0 - std::pow(beta2, step);
    Adam& h = hyper[k];
    h.sign = maximize ? -1.f : 1.f;
    h.weight_decay = decoupled ? 0.f : float(weight_decay);
    h.decay = decoupled ? float(1.0 - lr * weight_decay) : 1.f;
    h.beta2 = float(beta2);
    h.one_minus_beta1 = float(1.0 - beta1);
    h.one_minus_beta2 = float(1.0 - beta2);
    h.step_size = float(lr / bias_correction1);
    h.bias_correction2_sqrt = float(std::sqrt(bias_correction2));
    h.eps = float(eps);
    h.amsgrad = amsgrad;
  }
  for (size_t k = 0; k < n; ++k) {
    const torch::Tensor& w = params[k];
    if (w.numel() == 0) continue;
    const torch::Tensor* x = amsgrad ? &max_exp_avg_sqs[k] : nullptr;
    if (w.scalar_type() == torch::kFloat32) {
      run(job<float>(w, grads[k], &exp_avgs[k], &exp_avg_sqs[k], x, targets[k], per_row, project, retract, k),
          hyper[k], per_row);
    } else {
      TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "param[", k, "]: expected float32 or bfloat16");
      run(job<bf16>(w, grads[k], &exp_avgs[k], &exp_avg_sqs[k], x, targets[k], per_row, project, retract, k),
          hyper[k], per_row);
    }
  }
}

// In place, for each k: project grads[k] (if project), one SGD step on params[k] (momentum_buffers[k]: its buffer,
// empty without momentum; first[k]: the buffer is new and takes the gradient), retract (if retract).
void sgd_(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads,
          std::vector<torch::Tensor> momentum_buffers, std::vector<bool> first, std::vector<torch::Tensor> targets, double lr, double momentum, double dampening, double weight_decay,
          bool nesterov, bool maximize, bool project, bool retract, bool per_row) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && momentum_buffers.size() == n && first.size() == n && targets.size() == n,
              "sgd_: lists differ in length");
  Sgd h{};
  h.sign = maximize ? -1.f : 1.f;
  h.weight_decay = float(weight_decay);
  h.lr = float(lr);
  h.momentum = float(momentum);
  h.one_minus_dampening = float(1.0 - dampening);
  h.nesterov = nesterov;
  h.has_momentum = momentum != 0.0;
  for (size_t k = 0; k < n; ++k) {
    const torch::Tensor& w = params[k];
    if (w.numel() == 0) continue;
    const torch::Tensor* buf = h.has_momentum ? &momentum_buffers[k] : nullptr;
    if (w.scalar_type() == torch::kFloat32) {
      Job<float> j = job<float>(w, grads[k], buf, nullptr, nullptr, targets[k], per_row, project, retract, k);
      j.first = first[k];
      run(j, h, per_row);
    } else {
      TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "param[", k, "]: expected float32 or bfloat16");
      Job<bf16> j = job<bf16>(w, grads[k], buf, nullptr, nullptr, targets[k], per_row, project, retract, k);
      j.first = first[k];
      run(j, h, per_row);
    }
  }
}

}  // namespace lawn_step
