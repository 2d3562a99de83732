/* The fused instance norm's forward on a CPU, fp32: y = act(IN(x) * weight + bias) (+ residual), written
 * reflection-padded by `pad` into out. The same contract as fastcyclegan/norm_torch.py's
 * instance_norm_forward for NCHW- and channels-last-contiguous x, in one call (one OpenMP region) instead of
 * six-odd ATen passes, reading x twice at most and writing out once.
 *
 * Statistics per (image, channel) plane in double: two passes (sum, then the sum of squared deviations from
 * the mean) over blocks small enough to stay in cache, blocks merged by Chan's formula (Welford's update for
 * a block), so |mean| >> std loses no digits. The transform x * a + b (a = rstd * weight, b = bias -
 * mean * a, eager's batch-norm form) in double too, rounded once to fp32: where |mean| >> std eager's fp32
 * transform loses |mean| / std * 2^-24 of the output, this one nothing beyond the final rounding.
 *
 * Layouts (no strides beyond these; the caller checks):
 *   x           : NCHW (n, c, h, w) or channels-last (n, h, w, c), contiguous
 *   residual    : NULL or (n, c, h, w) with element strides res_stride[4] (in NCHW order), unit stride along
 *                 w (NCHW) or c (channels-last): a contiguous tensor or a padded tensor's interior
 *   out         : the same layout, (h + 2 pad) x (w + 2 pad) planes; may be x itself when pad == 0
 *   weight, bias: NULL or (c,)
 *   mean, rstd  : (n, c), written
 * Built by fastcyclegan/norm_cpu.py with the host's compiler and -fopenmp: loaded into a process where torch
 * has loaded libgomp, its OpenMP calls use that runtime and its threads.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16      /* independent double accumulators: the compiler vectorises across them */
#define BLOCK_BYTES 32768 /* a channels-last block of pixels, read twice from L1/L2 */

typedef struct {
    double count, mean, m2; /* a block's or a merge's statistics */
} stats_t;

/* Chan's merge of statistics b into a. */
static void merge(double *count, double *mean, double *m2, double count_b, double mean_b, double m2_b) {
    double total = *count + count_b;
    double delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}

/* Sum of v[0..len) in double, LANES partial sums. */
static double sum_lanes(const float *v, int64_t len) {
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += v[i + j];
    double s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < len; i++) s += v[i];
    return s;
}

/* Sum of (v - m)^2 over v[0..len) in double. */
static double squares_lanes(const float *v, int64_t len, double m) {
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int j = 0; j < LANES; j++) {
            double d = v[i + j] - m;
            acc[j] += d * d;
        }
    double s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < len; i++) {
        double d = v[i] - m;
        s += d * d;
    }
    return s;
}

/* mean and biased variance of one contiguous plane: two passes per block of 8192 values, blocks merged. */
static void plane_stats(const float *v, int64_t len, double *mean, double *var) {
    const int64_t block = BLOCK_BYTES / sizeof(float);
    double count = 0, m = 0, m2 = 0;
    for (int64_t start = 0; start < len; start += block) {
        int64_t k = len - start < block ? len - start : block;
        double mb = sum_lanes(v + start, k) / (double)k;
        merge(&count, &m, &m2, (double)k, mb, squares_lanes(v + start, k, mb));
    }
    *mean = m;
    *var = m2 / (double)len;
}

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_LEAKY = 2 };

/* ReLU (0 for y < 0, NaN kept) or LeakyReLU(slope), as ATen's. */
static inline __attribute__((always_inline)) float activate(float y, int act, float slope) {
    if (act == ACT_RELU) return y < 0 ? 0.0f : y;
    if (act == ACT_LEAKY) return y < 0 ? y * slope : y;
    return y;
}

/* out[i] = act(x[i] * a + b) (+ residual[i]) for i < len; out may be x. */
static void apply_plane_row(const float *x, float *out, const float *residual, int64_t len, double a, double b,
                            int act, float slope) {
    if (residual) {
        for (int64_t i = 0; i < len; i++) {
            float y = (float)(x[i] * a + b);
            y = activate(y, act, slope);
            out[i] = y + residual[i];
        }
    } else {
        for (int64_t i = 0; i < len; i++) {
            float y = (float)(x[i] * a + b);
            y = activate(y, act, slope);
            out[i] = y;
        }
    }
}

/* The per-channel transform of statistics: rstd (0 for a constant plane with eps 0, NaN for a NaN plane,
 * as ATen's), a, b. */
static void transform(double m, double var, double eps, const float *weight, const float *bias, int64_t ch,
                      float *rstd_out, double *a_out, double *b_out) {
    double rstd = var + eps <= 0 ? 0.0 : 1.0 / sqrt(var + eps); /* NaN stays NaN */
    double a = weight ? rstd * weight[ch] : rstd;
    double b = (bias ? bias[ch] : 0.0) - m * a;
    *rstd_out = (float)rstd;
    *a_out = a;
    *b_out = b;
}

static void forward_nchw(const float *x, float *out, const float *residual, const int64_t *rs, const float *weight,
                         const float *bias, float *mean_out, float *rstd_out, int64_t n, int64_t c, int64_t h,
                         int64_t w, int64_t pad, int act, float slope, double eps, int n_threads) {
    const int64_t hw = h * w, wp = w + 2 * pad, plane_out = (h + 2 * pad) * wp;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < n * c; p++) {
        const float *xp = x + p * hw;
        double m, var;
        plane_stats(xp, hw, &m, &var);
        double a, b;
        transform(m, var, eps, weight, bias, p % c, &rstd_out[p], &a, &b);
        mean_out[p] = (float)m;
        float *op = out + p * plane_out;
        for (int64_t r = 0; r < h; r++) {
            float *row = op + (r + pad) * wp + pad;
            const float *res = residual ? residual + (p / c) * rs[0] + (p % c) * rs[1] + r * rs[2] : NULL;
            apply_plane_row(xp + r * w, row, res, w, a, b, act, slope);
            for (int64_t k = 1; k <= pad; k++) { /* reflection: padded column pad - k mirrors pad + k */
                row[-k] = row[k];
                row[w - 1 + k] = row[w - 1 - k];
            }
        }
        for (int64_t k = 1; k <= pad; k++) { /* whole padded rows, corners included */
            memcpy(op + (pad - k) * wp, op + (pad + k) * wp, wp * sizeof(float));
            memcpy(op + (pad + h - 1 + k) * wp, op + (pad + h - 1 - k) * wp, wp * sizeof(float));
        }
    }
}

/* Statistics of pixels [start, end) of one channels-last image (rows of c values): per block of pixels a
 * column sum, the block's mean, the sum of squared deviations, merged into (count, mean, m2). */
static void pixel_stats(const float *img, int64_t start, int64_t end, int64_t c, double *count, double *mean,
                        double *m2, double *scratch) {
    int64_t block = BLOCK_BYTES / (int64_t)sizeof(float) / c;
    if (block < 1) block = 1;
    *count = 0;
    for (int64_t ch = 0; ch < c; ch++) mean[ch] = m2[ch] = 0;
    for (int64_t p0 = start; p0 < end; p0 += block) {
        int64_t k = end - p0 < block ? end - p0 : block;
        const float *v = img + p0 * c;
        for (int64_t ch = 0; ch < c; ch++) scratch[ch] = 0;
        for (int64_t i = 0; i < k; i++)
            for (int64_t ch = 0; ch < c; ch++) scratch[ch] += v[i * c + ch];
        for (int64_t ch = 0; ch < c; ch++) scratch[ch] /= (double)k;
        double *sq = scratch + c;
        for (int64_t ch = 0; ch < c; ch++) sq[ch] = 0;
        for (int64_t i = 0; i < k; i++)
            for (int64_t ch = 0; ch < c; ch++) {
                double d = v[i * c + ch] - scratch[ch];
                sq[ch] += d * d;
            }
        double total = *count + (double)k;
        for (int64_t ch = 0; ch < c; ch++) {
            double delta = scratch[ch] - mean[ch];
            mean[ch] += delta * ((double)k / total);
            m2[ch] += sq[ch] + delta * delta * (*count * (double)k / total);
        }
        *count = total;
    }
}

/* One channels-last row of w pixels: out = act(x * a + b) (+ residual, pixel stride res_step), a and b per
 * channel. `act` and whether there is a residual are constants where it is inlined: one vectorised loop
 * each (with them decided inside the loop, gcc vectorised none). */
static inline __attribute__((always_inline)) void pixels(const float *x, float *out, const float *res,
                                                         int64_t res_step, const double *a, const double *b,
                                                         int64_t w, int64_t c, int act, float slope) {
    for (int64_t col = 0; col < w; col++)
        for (int64_t ch = 0; ch < c; ch++) {
            float y = activate((float)(x[col * c + ch] * a[ch] + b[ch]), act, slope);
            out[col * c + ch] = res ? y + res[col * res_step + ch] : y;
        }
}

static void apply_pixels(const float *x, float *out, const float *res, int64_t res_step, const double *a,
                         const double *b, int64_t w, int64_t c, int act, float slope) {
    if (res) {
        if (act == ACT_RELU) pixels(x, out, res, res_step, a, b, w, c, ACT_RELU, slope);
        else if (act == ACT_LEAKY) pixels(x, out, res, res_step, a, b, w, c, ACT_LEAKY, slope);
        else pixels(x, out, res, res_step, a, b, w, c, ACT_NONE, slope);
    } else {
        if (act == ACT_RELU) pixels(x, out, NULL, 0, a, b, w, c, ACT_RELU, slope);
        else if (act == ACT_LEAKY) pixels(x, out, NULL, 0, a, b, w, c, ACT_LEAKY, slope);
        else pixels(x, out, NULL, 0, a, b, w, c, ACT_NONE, slope);
    }
}

static int forward_channels_last(const float *x, float *out, const float *residual, const int64_t *rs,
                                 const float *weight,
                                 const float *bias, float *mean_out, float *rstd_out, int64_t n, int64_t c,
                                 int64_t h, int64_t w, int64_t pad, int act, float slope, double eps,
                                 int n_threads) {
    const int64_t hw = h * w, wp = w + 2 * pad, row_out = wp * c, img_out = (h + 2 * pad) * row_out;
    /* (image, chunk) tasks, enough for every thread at batch 1; their partial statistics merged per image */
    int64_t chunks = n >= n_threads ? 1 : (n_threads + n - 1) / n;
    if (chunks > hw) chunks = hw;
    const int64_t per_chunk = (hw + chunks - 1) / chunks, tasks = n * chunks;
    double *part = malloc(sizeof(double) * (size_t)(tasks * (2 * c + 1)));
    double *scratch_all = malloc(sizeof(double) * (size_t)(n_threads * 2 * c)); /* a block's sums, a thread */
    double *ab = malloc(sizeof(double) * (size_t)(2 * n * c));
    if (!part || !scratch_all || !ab) {
        free(part);
        free(scratch_all);
        free(ab);
        return 1;
    }
#pragma omp parallel num_threads(n_threads)
    {
        double *scratch = scratch_all + (int64_t)omp_get_thread_num() * 2 * c;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t img = t / chunks, start = (t % chunks) * per_chunk;
            int64_t end = start + per_chunk < hw ? start + per_chunk : hw;
            double *rec = part + t * (2 * c + 1);
            if (start >= end) {
                rec[0] = 0;
                continue;
            }
            pixel_stats(x + img * hw * c, start, end, c, &rec[0], rec + 1, rec + 1 + c, scratch);
        }
#pragma omp for schedule(static)
        for (int64_t q = 0; q < n * c; q++) { /* merge an (image, channel)'s chunks, in order */
            int64_t img = q / c, ch = q % c;
            double count = 0, m = 0, m2 = 0;
            for (int64_t k = 0; k < chunks; k++) {
                const double *rec = part + (img * chunks + k) * (2 * c + 1);
                if (rec[0] > 0) merge(&count, &m, &m2, rec[0], rec[1 + ch], rec[1 + c + ch]);
            }
            mean_out[q] = (float)m;
            transform(m, m2 / (double)hw, eps, weight, bias, ch, &rstd_out[q], &ab[q], &ab[n * c + q]);
        }
#pragma omp for schedule(static)
        for (int64_t rr = 0; rr < n * h; rr++) { /* one interior row of one image, its borders included */
            int64_t img = rr / h, r = rr % h;
            const double *a = ab + img * c, *b = ab + n * c + img * c;
            const float *xr = x + (img * hw + r * w) * c;
            const float *res = residual ? residual + img * rs[0] + r * rs[2] : NULL;
            float *row = out + img * img_out + (r + pad) * row_out + pad * c;
            apply_pixels(xr, row, res, rs[3], a, b, w, c, act, slope);
            for (int64_t k = 1; k <= pad; k++) {
                memcpy(row - k * c, row + k * c, c * sizeof(float));
                memcpy(row + (w - 1 + k) * c, row + (w - 1 - k) * c, c * sizeof(float));
            }
        }
        if (pad) {
#pragma omp for schedule(static)
            for (int64_t rr = 0; rr < n * pad; rr++) { /* whole padded rows, after every interior row */
                int64_t img = rr / pad, k = rr % pad + 1;
                float *base = out + img * img_out;
                memcpy(base + (pad - k) * row_out, base + (pad + k) * row_out, row_out * sizeof(float));
                memcpy(base + (pad + h - 1 + k) * row_out, base + (pad + h - 1 - k) * row_out,
                       row_out * sizeof(float));
            }
        }
    }
    free(part);
    free(scratch_all);
    free(ab);
    return 0;
}

/* Returns 0, or 1 when memory for the partial statistics could not be had (nothing meaningful written). */
int fcg_instance_norm_f32(const float *x, float *out, const float *residual, const int64_t *res_stride,
                          const float *weight,
                          const float *bias, float *mean_out, float *rstd_out, int64_t n, int64_t c, int64_t h,
                          int64_t w, int64_t pad, int channels_last, int act, float slope, double eps,
                          int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (channels_last)
        return forward_channels_last(x, out, residual, res_stride, weight, bias, mean_out, rstd_out, n, c, h, w, pad, act,
                                     slope, eps, n_threads);
    forward_nchw(x, out, residual, res_stride, weight, bias, mean_out, rstd_out, n, c, h, w, pad, act, slope, eps, n_threads);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Backward. From dz, the gradient of act(IN(x) * weight + bias) (+ residual) before the padding (its fold is
 * the caller's), x and the forward's saved (n, c) mean and rstd:
 *   g  = dz where z = xhat * weight + bias > 0, else dz * slope (0 for ReLU)
 *   dx = rstd * weight * (g - mean(g) - xhat * mean(g * xhat)),  sum_g = sum(g),  sum_gx = sum(g * xhat)
 * per plane, as fastcyclegan/norm_torch.py's instance_norm_backward. Pass 1 writes g into dx and sums in
 * double; pass 2 turns it into dx in place (the plane still in cache). dz, x, dx NCHW-contiguous.
 */

/* Per (image, channel): a = rstd * weight and b of the activation's input z = x * a + b. */
static void backward_coefficients(const float *mean, const float *rstd, const float *weight, const float *bias,
                                  int64_t q, int64_t ch, double *coef) {
    double m = mean[q], rs = rstd[q], wt = weight ? weight[ch] : 1.0;
    coef[0] = rs * wt;
    coef[1] = (bias ? bias[ch] : 0.0) - m * coef[0];
}

/* g through the activation whose input was z (a select, no branch: signs are random, branches mispredict). */
static inline __attribute__((always_inline)) double masked(double g, double z, int act, double slope) {
    return z > 0 ? g : (act == ACT_RELU ? 0.0 : g * slope);
}

/* One NCHW plane; `act` a constant where it is called, so each activation gets its own vectorised loops. */
static inline __attribute__((always_inline)) void backward_plane(const float *xp, const float *gp, float *dp,
                                                                 const double *coef, double m, double rs,
                                                                 int64_t hw, int act, float slope, float *sum_g,
                                                                 float *sum_gx) {
    double acc_g[LANES] = {0}, acc_gx[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= hw; i += LANES)
        for (int j = 0; j < LANES; j++) {
            /* g rounded to fp32 once: pass 2 reads it back, and the sums are of exactly those values */
            float g = (float)masked(gp[i + j], xp[i + j] * coef[0] + coef[1], act, slope);
            dp[i + j] = g;
            acc_g[j] += g;
            acc_gx[j] += g * ((xp[i + j] - m) * rs);
        }
    double sg = 0, sgx = 0;
    for (int j = 0; j < LANES; j++) {
        sg += acc_g[j];
        sgx += acc_gx[j];
    }
    for (; i < hw; i++) {
        float g = (float)masked(gp[i], xp[i] * coef[0] + coef[1], act, slope);
        dp[i] = g;
        sg += g;
        sgx += g * ((xp[i] - m) * rs);
    }
    *sum_g = (float)sg;
    *sum_gx = (float)sgx;
    const double mg = sg / (double)hw, mgx = sgx / (double)hw; /* coef[0] = rstd * weight */
    for (i = 0; i < hw; i++) dp[i] = (float)(coef[0] * (dp[i] - mg - (xp[i] - m) * rs * mgx));
}

static void backward_nchw(const float *dz, const float *x, const float *mean, const float *rstd,
                          const float *weight, const float *bias, float *dx, float *sum_g, float *sum_gx,
                          int64_t n, int64_t c, int64_t hw, int act, float slope, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < n * c; p++) {
        double coef[2];
        backward_coefficients(mean, rstd, weight, bias, p, p % c, coef);
        const float *xp = x + p * hw, *gp = dz + p * hw;
        float *dp = dx + p * hw;
        if (act == ACT_RELU)
            backward_plane(xp, gp, dp, coef, mean[p], rstd[p], hw, ACT_RELU, slope, &sum_g[p], &sum_gx[p]);
        else
            backward_plane(xp, gp, dp, coef, mean[p], rstd[p], hw, ACT_LEAKY, slope, &sum_g[p], &sum_gx[p]);
    }
}

/* NCHW-contiguous dz, x and dx; act ACT_RELU or ACT_LEAKY (fastcyclegan/norm_cpu.py calls it with an
 * activation only: without one, and for channels-last, ATen's own passes were faster). */
void fcg_instance_norm_backward_f32(const float *dz, const float *x, const float *mean, const float *rstd,
                                    const float *weight, const float *bias, float *dx, float *sum_g, float *sum_gx,
                                    int64_t n, int64_t c, int64_t h, int64_t w, int act, float slope,
                                    int n_threads) {
    backward_nchw(dz, x, mean, rstd, weight, bias, dx, sum_g, sum_gx, n, c, h * w, act, slope,
                  n_threads < 1 ? 1 : n_threads);
}
