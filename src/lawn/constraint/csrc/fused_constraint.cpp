// Fused CPU kernels for LAWN's norm constraint on contiguous fp32 tensors (see lawn/constraint/fused.py).
//
//   projection: g <- g - (<g, w> / |w|^2) w      retraction: w <- w * (target / |w|)
//
// Per row, each row is read once: its dot and |w|^2 are summed while the row streams through
// the cache, and the update follows while the row is still there. Per tensor, the reduction pass and the
// update pass are the two passes the math needs. Sums run in fp32 vector lanes over blocks of BLOCK
// elements and in fp64 across blocks, so they stay accurate for tensors of any size (torch's fp32
// vector_norm on CPU drifts by ~1e-5 relative at 1M elements). Work is split with at::parallel_for,
// i.e. over torch's own intra-op threads (torch.set_num_threads).
//
// The loops are compiled for several instruction sets (GCC's target_clones: AVX-512, AVX2+FMA, baseline x86-64)
// and the best one the CPU has is picked when the library loads, so one build is safe on any x86-64 machine
// (torch's extension cache may be shared between machines) and still uses wide vectors where they exist.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef LAWN_VECTOR_CLONES
// defined by the other kernel of the same translation unit (csrc/kernels.cpp)
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LAWN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LAWN_VECTOR_CLONES
#endif

namespace lawn_constraint {

namespace {

constexpr int64_t BLOCK = 4096;  // fp32 elements summed in vector lanes before the fp64 accumulation

struct Sums {
  double dot = 0.0;
  double sq = 0.0;
};

// <a, b> and (if wanted) <b, b> over n elements.
inline Sums sums(const float* a, const float* b, int64_t n, bool want_sq) {
  Sums out;
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t len = std::min(BLOCK, n - start);
    const float* x = a + start;
    const float* y = b + start;
    float dot = 0.f, sq = 0.f;
    if (want_sq) {
#pragma omp simd reduction(+ : dot, sq)
      for (int64_t i = 0; i < len; ++i) {
        dot += x[i] * y[i];
        sq += y[i] * y[i];
      }
    } else {
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < len; ++i) dot += x[i] * y[i];
    }
    out.dot += dot;
    out.sq += sq;
  }
  return out;
}

inline double squared_norm(const float* w, int64_t n) { return sums(w, w, n, false).dot; }

// A projection coefficient or a retraction scale that is not finite (a NaN or inf in g or w, a zero norm) is
// replaced by the value that leaves the tensor as it is (0, 1): non-finite values then stay where they are.
inline float finite_or(double x, float fallback) { return std::isfinite(x) ? static_cast<float>(x) : fallback; }

inline void axpy(float* g, const float* w, float c, int64_t n) {  // g <- g - c w
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) g[i] -= c * w[i];
}

inline void scale(float* w, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] *= s;
}

// The loops, one function each so that each is compiled per instruction set (the inline helpers above are
// inlined into every clone).
LAWN_VECTOR_CLONES void block_sums(const float* a, const float* b, int64_t n, bool want_sq, int64_t first,
                                   int64_t last, Sums* out) {
  for (int64_t k = first; k < last; ++k) {
    const int64_t start = k * BLOCK;
    out[k] = sums(a + start, b + start, std::min(BLOCK, n - start), want_sq);
  }
}

LAWN_VECTOR_CLONES void axpy_range(float* g, const float* w, float c, int64_t first, int64_t last) {
  axpy(g + first, w + first, c, last - first);
}

LAWN_VECTOR_CLONES void scale_range(float* w, float s, int64_t first, int64_t last) {
  scale(w + first, s, last - first);
}

// Rows [first, last) of a (rows, cols) pair: g_i <- g_i - (<g_i, w_i> / |w_i|^2) w_i.
LAWN_VECTOR_CLONES void project_rows(float* g, const float* w, int64_t cols, int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) {
    float* gi = g + i * cols;
    const float* wi = w + i * cols;
    const Sums s = sums(gi, wi, cols, true);
    axpy(gi, wi, finite_or(s.dot / s.sq, 0.0f), cols);
  }
}

// Rows [first, last): w_i <- w_i * (target_i / |w_i|).
LAWN_VECTOR_CLONES void retract_rows(float* w, const float* target, int64_t cols, int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) {
    float* wi = w + i * cols;
    scale(wi, finite_or(double(target[i]) / std::sqrt(squared_norm(wi, cols)), 1.0f), cols);
  }
}

// Blocks of a whole tensor, summed in parallel: (dot, sq) over all of it.
Sums tensor_sums(const float* a, const float* b, int64_t n, bool want_sq) {
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  std::vector<Sums> part(blocks);
  at::parallel_for(0, blocks, 16, [&](int64_t first, int64_t last) {
    block_sums(a, b, n, want_sq, first, last, part.data());
  });
  Sums total;  // summed in block order: the result does not depend on the number of threads
  for (const Sums& s : part) {
    total.dot += s.dot;
    total.sq += s.sq;
  }
  return total;
}

// Any dense layout will do (contiguous, channels_last, ...): sums do not depend on the order of the elements and
// the updates are elementwise, as long as g and w share their strides and, per row, each row is one block.
void check(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, what, ": expected float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_non_overlapping_and_dense(), what, ": expected a dense tensor");
}

void check_rows(const torch::Tensor& t, bool per_row) {
  TORCH_CHECK(!per_row || t.size(0) <= 1 || t.stride(0) * t.size(0) == t.numel(),
              "per row: expected dim 0 to be the outermost (each row one block of memory)");
}

int64_t rows_of(const torch::Tensor& t, bool per_row) { return per_row ? t.size(0) : 1; }

// Row grain: enough rows per task to amortise the scheduling (~16k elements).
int64_t grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)); }

}  // namespace

// In place, for each k: grads[k] <- grads[k] - (<grads[k], params[k]> / |params[k]|^2) params[k], per tensor or
// per row.
void project_(std::vector<torch::Tensor> grads, std::vector<torch::Tensor> params, bool per_row) {
  TORCH_CHECK(grads.size() == params.size(), "project_: lists differ in length");
  for (size_t k = 0; k < grads.size(); ++k) {
    check(grads[k], "grad");
    check(params[k], "param");
    TORCH_CHECK(grads[k].sizes() == params[k].sizes() && grads[k].strides() == params[k].strides(),
                "project_: grad and param differ in shape or layout");
    check_rows(params[k], per_row);
    float* g = grads[k].data_ptr<float>();
    const float* w = params[k].data_ptr<float>();
    const int64_t n = params[k].numel();
    if (n == 0) continue;
    const int64_t rows = rows_of(params[k], per_row), cols = n / rows;
    if (!per_row) {
      const Sums s = tensor_sums(g, w, n, true);
      const float c = finite_or(s.dot / s.sq, 0.0f);
      at::parallel_for(0, n, 1 << 14, [&](int64_t first, int64_t last) { axpy_range(g, w, c, first, last); });
      continue;
    }
    at::parallel_for(0, rows, grain(cols), [&](int64_t first, int64_t last) {
      project_rows(g, w, cols, first, last);
    });
  }
}

// In place, for each k: params[k] <- params[k] * (targets[k] / |params[k]|), per tensor or per row.
void retract_(std::vector<torch::Tensor> params, std::vector<torch::Tensor> targets, bool per_row) {
  TORCH_CHECK(params.size() == targets.size(), "retract_: lists differ in length");
  for (size_t k = 0; k < params.size(); ++k) {
    check(params[k], "param");
    check(targets[k], "target");
    check_rows(params[k], per_row);
    float* w = params[k].data_ptr<float>();
    const int64_t n = params[k].numel();
    if (n == 0) continue;
    const int64_t rows = rows_of(params[k], per_row), cols = n / rows;
    TORCH_CHECK(targets[k].numel() == rows, "retract_: expected ", rows, " target(s)");
    const float* target = targets[k].data_ptr<float>();
    if (!per_row) {
      const float s = finite_or(double(target[0]) / std::sqrt(tensor_sums(w, w, n, false).dot), 1.0f);
      at::parallel_for(0, n, 1 << 14, [&](int64_t first, int64_t last) { scale_range(w, s, first, last); });
      continue;
    }
    at::parallel_for(0, rows, grain(cols), [&](int64_t first, int64_t last) {
      retract_rows(w, target, cols, first, last);
    });
  }
}

}  // namespace lawn_constraint
