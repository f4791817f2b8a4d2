// Check for the repack patches: one mul_mat of a Q4_1, Q8_0 or Q5_0 weight
// through the repacked buffer (CPU_REPACK) and through a plain CPU buffer
// (stock vec_dot), each against a double-precision product of the
// dequantized weights; prints both errors and both times for several batch
// sizes M. Build against a llama.cpp tree (the one in llama-cpp-sys-2) with
// the patches applied (patch -p1 < each, in ggml.cmake's order) and its
// shared libraries built (cmake -B build -DBUILD_SHARED_LIBS=ON; target ggml):
//   L=path/to/llama.cpp; g++ -O2 -std=c++17 repack-check.cpp -I$L/ggml/include \
//     -L$L/build/bin -lggml -lggml-base -lggml-cpu -Wl,-rpath,$L/build/bin -o repack-check
//   ./repack-check q4_1   # or q8_0, q5_0
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include <cstdio>
#include <cstring>
#include <cmath>
#include <random>
#include <vector>
#include <string>
#include <chrono>
static int REPS = 1; static double LAST_US = 0; static ggml_type TYPE = GGML_TYPE_Q4_1;

// The patched x86 kernels and their generic C fallbacks (exported by
// libggml-cpu): for Q8_0 and Q5_0 both run on the repacked weights and the
// same activations, which shows the fallback that non-AVX2 builds and
// other CPUs compile computes what the AVX2 kernel does.
extern "C" {
typedef void (*kernel_t)(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemv_q8_0_4x8_q8_0(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemm_q8_0_4x8_q8_0(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemv_q8_0_4x8_q8_0_generic(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemm_q8_0_4x8_q8_0_generic(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemv_q5_0_4x8_q8_0(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemm_q5_0_4x8_q8_0(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemv_q5_0_4x8_q8_0_generic(int, float *, size_t, const void *, const void *, int, int);
void ggml_gemm_q5_0_4x8_q8_0_generic(int, float *, size_t, const void *, const void *, int, int);
void ggml_quantize_mat_q8_0_4x8_generic(const float *, void *, int64_t);
}

// Largest |kernel - generic| over the M x N outputs, relative to the largest |generic|.
static double kernel_vs_generic(const void * w, const std::vector<float> & x, int K, int N, int M) {
    const bool q8 = TYPE == GGML_TYPE_Q8_0;
    kernel_t gemm[2] = { q8 ? ggml_gemm_q8_0_4x8_q8_0 : ggml_gemm_q5_0_4x8_q8_0,
                         q8 ? ggml_gemm_q8_0_4x8_q8_0_generic : ggml_gemm_q5_0_4x8_q8_0_generic };
    kernel_t gemv[2] = { q8 ? ggml_gemv_q8_0_4x8_q8_0 : ggml_gemv_q5_0_4x8_q8_0,
                         q8 ? ggml_gemv_q8_0_4x8_q8_0_generic : ggml_gemv_q5_0_4x8_q8_0_generic };
    const int nb = K / 32, M4 = M - M % 4;
    const size_t group = (size_t) nb * (4 * 2 + 128), row = ggml_row_size(GGML_TYPE_Q8_0, K);
    std::vector<uint8_t> act(group * (M4 / 4) + row * (M - M4));
    for (int g = 0; g < M4 / 4; g++) ggml_quantize_mat_q8_0_4x8_generic(x.data() + (size_t) g * 4 * K, act.data() + g * group, K);
    for (int r = M4; r < M; r++) ggml_quantize_chunk(GGML_TYPE_Q8_0, x.data() + (size_t) r * K, act.data() + group * (M4 / 4) + (r - M4) * row, 0, 1, K, nullptr);
    std::vector<float> out[2] = { std::vector<float>(M * N), std::vector<float>(M * N) };
    for (int v = 0; v < 2; v++) {
        if (M4) gemm[v](K, out[v].data(), N, w, act.data(), M4, N);
        for (int r = M4; r < M; r++) gemv[v](K, out[v].data() + (size_t) r * N, N, w, act.data() + group * (M4 / 4) + (r - M4) * row, 1, N);
    }
    double diff = 0, scale = 0;
    for (int i = 0; i < M * N; i++) { diff = fmax(diff, fabs(out[0][i] - out[1][i])); scale = fmax(scale, fabs(out[1][i])); }
    return diff / scale;
}
static double LAST_KERNEL_DIFF = -1;

static std::vector<float> run(ggml_backend_t be, ggml_backend_buffer_type_t wbuft, const std::vector<uint8_t>& wq, const std::vector<float>& x, int K, int N, int M) {
    ggml_init_params p = { 16 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * cw = ggml_init(p);
    ggml_tensor * W = ggml_new_tensor_2d(cw, TYPE, K, N);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(cw, wbuft);
    ggml_backend_tensor_set(W, wq.data(), 0, wq.size());
    ggml_context * cx = ggml_init(p);
    ggml_tensor * X = ggml_new_tensor_2d(cx, GGML_TYPE_F32, K, M);
    ggml_tensor * Y = ggml_mul_mat(cx, W, X);
    ggml_cgraph * gf = ggml_new_graph(cx);
    ggml_build_forward_expand(gf, Y);
    ggml_backend_buffer_t bx = ggml_backend_alloc_ctx_tensors(cx, be);
    ggml_backend_tensor_set(X, x.data(), 0, x.size() * 4);
    ggml_backend_graph_compute(be, gf);
    if ((TYPE == GGML_TYPE_Q8_0 || TYPE == GGML_TYPE_Q5_0) && wbuft != ggml_backend_cpu_buffer_type()) {
        LAST_KERNEL_DIFF = kernel_vs_generic(W->data, x, K, N, M);
    }
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < REPS; r++) ggml_backend_graph_compute(be, gf);
    LAST_US = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / REPS;
    std::vector<float> y(N * M);
    ggml_backend_tensor_get(Y, y.data(), 0, y.size() * 4);
    ggml_backend_buffer_free(bx); ggml_backend_buffer_free(bw); ggml_free(cx); ggml_free(cw);
    return y;
}

int main(int argc, char ** argv) {
    const std::string type = argc > 1 ? argv[1] : "q4_1";
    if (type == "q8_0") TYPE = GGML_TYPE_Q8_0;
    else if (type == "q5_0") TYPE = GGML_TYPE_Q5_0;
    else if (type != "q4_1") { printf("type: q4_1, q8_0 or q5_0\n"); return 1; }
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 2);
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
    ggml_backend_buffer_type_t repack = nullptr;
    for (auto * b = get_extra(dev); b && *b; b++) if (std::string(ggml_backend_buft_name(*b)) == "CPU_REPACK") repack = *b;
    if (!repack) { printf("no CPU_REPACK\n"); return 1; }
    std::mt19937 rng(42);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    // SmolLM2's FFN shapes, and Gemma 3 270M's width against a slice of its
    // 262k-row output layer.
    const int Ks[] = {576, 1536, 640}; const int Ns[] = {1536, 576, 8192}; const int Ms[] = {1, 3, 4, 5, 16, 19};
    for (int t = 0; t < 3; t++) for (int M : Ms) {
        int K = Ks[t], N = Ns[t];
        std::vector<float> wf(K * N), x(K * M);
        for (auto & v : wf) v = nd(rng) * 0.05f + 0.01f;
        for (auto & v : x) v = nd(rng);
        std::vector<uint8_t> wq(ggml_row_size(TYPE, K) * N);
        ggml_quantize_chunk(TYPE, wf.data(), wq.data(), 0, N, K, nullptr);
        std::vector<float> wd(K * N);
        ggml_get_type_traits(TYPE)->to_float(wq.data(), wd.data(), K * N);
        REPS = 300; double tr = 1e18, ts = 1e18; std::vector<float> yr, ys;
        for (int rep = 0; rep < 3; rep++) { yr = run(be, repack, wq, x, K, N, M); tr = fmin(tr, LAST_US); ys = run(be, ggml_backend_cpu_buffer_type(), wq, x, K, N, M); ts = fmin(ts, LAST_US); }
        printf("  time us: repack %.1f stock %.1f  (x%.2f)", tr, ts, ts / tr);
        if (LAST_KERNEL_DIFF >= 0) printf("  kernel vs generic C: max rel diff %.1e", LAST_KERNEL_DIFF);
        printf("\n");
        double er = 0, es = 0, mr = 0, ms = 0, scale = 0;
        for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) {
            double ref = 0; for (int k = 0; k < K; k++) ref += (double) wd[n * K + k] * x[m * K + k];
            double a = fabs(yr[m * N + n] - ref), b = fabs(ys[m * N + n] - ref);
            er += a; es += b; mr = fmax(mr, a); ms = fmax(ms, b); scale += fabs(ref);
        }
        int c = M * N;
        printf("K=%4d N=%4d M=%2d  mean|ref|=%.4f  repack: mean %.2e max %.2e   stock: mean %.2e max %.2e\n", K, N, M, scale / c, er / c, mr, es / c, ms);
    }
    return 0;
}
