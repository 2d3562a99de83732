/* The fused instance norm's forward on a CPU, fp32: y = act(IN(x) * weight + bias) (+ residual), written
 * reflection-padded by `pad` into out. The same contract as fastcyclegan/norm_torch.py's
 * instance_norm_forward for NCHW- and channels-last-contiguous x, in one call (one OpenMP region) instead of
 * six-odd ATen passes, reading x twice at most and writing out once.
 *
 * Statistics per (image, channel) plane: two passes (sum, then the sum of squared deviations from the mean)
 * over blocks small enough to stay in cache, blocks merged in double by Chan's formula (Welford's update for
 * a block), so |mean| >> std loses no digits; the blocks' sums in double for NCHW planes, in fp32 (twice the
 * lanes) on values shifted by the block's first pixel for channels-last ones (pixel_block). The transform of
 * NCHW planes x * a + b (a = rstd * weight, b = bias - mean * a, eager's batch-norm form) in double too,
 * rounded once to fp32; of channels-last pixels (x - m) * a + k in fp32 (pixel_row: twice the lanes), x - m
 * exact where x is near the mean: where |mean| >> std eager's fp32 transform loses |mean| / std * 2^-24 of the
 * output, these nothing beyond a rounding or two of the result.
 *
 * Layouts (no strides beyond these; the caller checks):
 *   x           : NCHW (n, c, h, w) or channels-last (n, h, w, c), contiguous
 *   residual    : NULL or (n, c, h, w) with element strides res_stride[4] (in NCHW order), unit stride along
 *                 w (NCHW) or c (channels-last): a contiguous tensor or a padded tensor's interior
 *   out         : the same layout, (h + 2 pad) x (w + 2 pad) planes; may be x itself when pad == 0
 *   weight, bias: NULL or (c,)
 *   mean, rstd  : (n, c), written
 * Built by fastcyclegan/norm_cpu_build.py with the host's compiler and -fopenmp: loaded into a process where torch
 * has loaded libgomp, its OpenMP calls use that runtime and its threads.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16          /* independent double accumulators: the compiler vectorises across them */
#define BLOCK_VALUES 8192 /* a block of values read twice from L1/L2 (32 KB in fp32) */
#define CH_BLOCK 64       /* channels whose per-channel values a channels-last loop keeps in registers */

/* Storage: fp32 or bf16 (bf16 = the top half of an fp32, rounded to nearest even as torch rounds). The
 * `bf16` flag is a constant wherever a loop is specialised (the always_inline functions below), so each
 * storage type gets its own vectorised loops. */
static inline __attribute__((always_inline)) float load(const void *p, int64_t i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline __attribute__((always_inline)) void store(void *p, int64_t i, float f, int bf16) {
    if (!bf16) {
        ((float *)p)[i] = f;
        return;
    }
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = f != f ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u); /* NaN stays a quiet NaN */
    ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
}

/* Chan's merge of statistics b into a. */
static void merge(double *count, double *mean, double *m2, double count_b, double mean_b, double m2_b) {
    double total = *count + count_b;
    double delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}

/* mean and sum of squared deviations of v[0..len), two passes, LANES partial sums in double. */
static inline __attribute__((always_inline)) void block_stats(const void *v, int64_t len, int bf16, double *mean,
                                                              double *m2) {
    double acc[LANES] = {0}, s = 0;
    int64_t i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += load(v, i + j, bf16);
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < len; i++) s += load(v, i, bf16);
    const double m = s / (double)len;
    double sq[LANES] = {0}, q = 0;
    for (i = 0; i + LANES <= len; i += LANES)
        for (int j = 0; j < LANES; j++) {
            double d = load(v, i + j, bf16) - m;
            sq[j] += d * d;
        }
    for (int j = 0; j < LANES; j++) q += sq[j];
    for (; i < len; i++) {
        double d = load(v, i, bf16) - m;
        q += d * d;
    }
    *mean = m;
    *m2 = q;
}

/* mean and biased variance of one contiguous plane: two passes per block of values, blocks merged. */
static void plane_stats(const void *v, int64_t len, int bf16, double *mean, double *var) {
    double count = 0, m = 0, m2 = 0;
    for (int64_t start = 0; start < len; start += BLOCK_VALUES) {
        int64_t k = len - start < BLOCK_VALUES ? len - start : BLOCK_VALUES;
        double mb, m2b;
        const void *block = (const char *)v + start * (bf16 ? 2 : 4);
        if (bf16) block_stats(block, k, 1, &mb, &m2b);
        else block_stats(block, k, 0, &mb, &m2b);
        merge(&count, &m, &m2, (double)k, mb, m2b);
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

/* One channels-last row of w pixels: out = act((x - m) * a + k) (+ res, pixel stride res_step), m, a and k
 * per channel in fp32 (f holds them: m, then a, then k, c values each), k = b + m * a from the double
 * transform, so m's rounding is taken back: x - m is exact where x is near m (|mean| >> std loses nothing),
 * the result within 1.5 ulp. fp32 lanes, twice double's (128x128 b1 fp32: 17 norms 3.7 -> 2.1 ms). act, bf16
 * and whether there is a residual are constants where it is inlined: one vectorised loop each (with them
 * decided inside the loop, gcc vectorised none). out may be x. Here channels [c0, c0 + cb), cb <= CH_BLOCK: with
 * cb the constant CH_BLOCK their m, a and k stay in registers across the row's pixels (loaded once a row, not
 * once a value: the 16 sites of the 128x128 network 1.18 -> 0.92 ms bf16 with the statistics below). */
static inline __attribute__((always_inline)) void channel_block_row(const void *x, void *out, const void *res,
                                                                    int64_t res_step, const float *f, int64_t w,
                                                                    int64_t c, int64_t c0, int64_t cb, int act,
                                                                    float slope, int bf16, int has_res) {
    float m[CH_BLOCK], a[CH_BLOCK], k[CH_BLOCK];
    for (int64_t j = 0; j < cb; j++) {
        m[j] = f[c0 + j];
        a[j] = f[c + c0 + j];
        k[j] = f[2 * c + c0 + j];
    }
    for (int64_t col = 0; col < w; col++)
        for (int64_t j = 0; j < cb; j++) {
            const int64_t ch = c0 + j;
            float y = activate(fmaf(load(x, col * c + ch, bf16) - m[j], a[j], k[j]), act, slope);
            if (has_res) y += load(res, col * res_step + ch, bf16);
            store(out, col * c + ch, y, bf16);
        }
}

static inline __attribute__((always_inline)) void pixel_row(const void *x, void *out, const void *res,
                                                            int64_t res_step, const float *f, int64_t w, int64_t c,
                                                            int act, float slope, int bf16, int has_res) {
    int64_t c0 = 0;
    for (; c0 + CH_BLOCK <= c; c0 += CH_BLOCK)
        channel_block_row(x, out, res, res_step, f, w, c, c0, CH_BLOCK, act, slope, bf16, has_res);
    if (c0 < c) channel_block_row(x, out, res, res_step, f, w, c, c0, c - c0, act, slope, bf16, has_res);
}

/* One NCHW row of w values of one plane: the same with scalar a and b, the residual's row contiguous. */
static inline __attribute__((always_inline)) void plane_row(const void *x, void *out, const void *res,
                                                            int64_t res_step, const double *a, const double *b,
                                                            int64_t w, int64_t c, int act, float slope, int bf16,
                                                            int has_res) {
    (void)res_step, (void)c;
    const double a0 = a[0], b0 = b[0];
    for (int64_t i = 0; i < w; i++) {
        float y = activate((float)(load(x, i, bf16) * a0 + b0), act, slope);
        if (has_res) y += load(res, i, bf16);
        store(out, i, y, bf16);
    }
}

/* KERNEL (pixel_row or plane_row) with its constants chosen: 3 activations x 2 storage types x residual or
 * not, each a loop of its own. */
#define ROW_CASE(KERNEL, ACT, BF16, RES) KERNEL(ROW_ARGS, ACT, slope, BF16, RES)
#define ROW_ACTS(KERNEL, BF16, RES)                                                                           \
    (act == ACT_RELU    ? ROW_CASE(KERNEL, ACT_RELU, BF16, RES)                                              \
     : act == ACT_LEAKY ? ROW_CASE(KERNEL, ACT_LEAKY, BF16, RES)                                             \
                        : ROW_CASE(KERNEL, ACT_NONE, BF16, RES))
#define ROW_DISPATCH(KERNEL)                                                                                  \
    if (bf16) res ? ROW_ACTS(KERNEL, 1, 1) : ROW_ACTS(KERNEL, 1, 0);                                         \
    else res ? ROW_ACTS(KERNEL, 0, 1) : ROW_ACTS(KERNEL, 0, 0)

static void apply_pixel_row(const void *x, void *out, const void *res, int64_t res_step, const float *f,
                            int64_t w, int64_t c, int act, float slope, int bf16) {
#define ROW_ARGS x, out, res, res_step, f, w, c
    ROW_DISPATCH(pixel_row);
#undef ROW_ARGS
}

static void apply_plane_row(const void *x, void *out, const void *res, const double *a, const double *b,
                            int64_t w, int act, float slope, int bf16) {
    const int64_t res_step = 1, c = 1;
#define ROW_ARGS x, out, res, res_step, a, b, w, c
    ROW_DISPATCH(plane_row);
#undef ROW_ARGS
}

/* The reflection border of one padded row of wp pixels of `pixel` bytes (`row` at its first interior
 * pixel): padded column pad - k mirrors pad + k. */
static void reflect_row(char *row, int64_t w, int64_t pad, size_t pixel) {
    for (int64_t k = 1; k <= pad; k++) {
        memcpy(row - k * (int64_t)pixel, row + k * (int64_t)pixel, pixel);
        memcpy(row + (w - 1 + k) * (int64_t)pixel, row + (w - 1 - k) * (int64_t)pixel, pixel);
    }
}

static void forward_nchw(const void *x, void *out, const void *residual, const int64_t *rs, const float *weight,
                         const float *bias, float *mean_out, float *rstd_out, int64_t n, int64_t c, int64_t h,
                         int64_t w, int64_t pad, int act, float slope, double eps, int bf16, int n_threads) {
    const int64_t hw = h * w, wp = w + 2 * pad, plane_out = (h + 2 * pad) * wp, es = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < n * c; p++) {
        const char *xp = (const char *)x + p * hw * es;
        double m, var, a, b;
        plane_stats(xp, hw, bf16, &m, &var);
        transform(m, var, eps, weight, bias, p % c, &rstd_out[p], &a, &b);
        mean_out[p] = (float)m;
        char *op = (char *)out + p * plane_out * es;
        for (int64_t r = 0; r < h; r++) {
            char *row = op + ((r + pad) * wp + pad) * es;
            const void *res = residual ? (const char *)residual + ((p / c) * rs[0] + (p % c) * rs[1] + r * rs[2]) * es
                                       : NULL;
            apply_plane_row(xp + r * w * es, row, res, &a, &b, w, act, slope, bf16);
            reflect_row(row, w, pad, (size_t)es);
        }
        for (int64_t k = 1; k <= pad; k++) { /* whole padded rows, corners included */
            memcpy(op + (pad - k) * wp * es, op + (pad + k) * wp * es, (size_t)(wp * es));
            memcpy(op + (pad + h - 1 + k) * wp * es, op + (pad + h - 1 - k) * wp * es, (size_t)(wp * es));
        }
    }
}

/* Column sums of k pixels of c values (channels-last) shifted by the block's first pixel, then the sums of
 * squared deviations from their mean, in fp32 accumulators (twice double's lanes): the shift keeps the sums
 * near the values' spread, not their size (|mean| >> std loses nothing), and a block holds at most
 * BLOCK_VALUES / c pixels a channel (32 at 256 channels, 128 at 64): the sums err by about sqrt(k) * 2^-24
 * of the spread. shift, mean: the first pixel and the shifted values' mean; the blocks merge in double.
 * Here channels [c0, c0 + cb), cb <= CH_BLOCK, their sums in registers across the block's pixels (the same
 * additions in the same order as one channel at a time: the same bits). */
static inline __attribute__((always_inline)) void channel_block_stats(const void *v, int64_t k, int64_t c,
                                                                      int64_t c0, int64_t cb, int bf16,
                                                                      float *shift, float *mean, float *sq) {
    float sh[CH_BLOCK], m[CH_BLOCK], q[CH_BLOCK];
    for (int64_t j = 0; j < cb; j++) {
        sh[j] = load(v, c0 + j, bf16);
        m[j] = q[j] = 0;
    }
    for (int64_t i = 1; i < k; i++)
        for (int64_t j = 0; j < cb; j++) m[j] += load(v, i * c + c0 + j, bf16) - sh[j];
    for (int64_t j = 0; j < cb; j++) m[j] /= (float)k;
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < cb; j++) {
            float d = (load(v, i * c + c0 + j, bf16) - sh[j]) - m[j];
            q[j] += d * d;
        }
    for (int64_t j = 0; j < cb; j++) {
        shift[c0 + j] = sh[j];
        mean[c0 + j] = m[j];
        sq[c0 + j] = q[j];
    }
}

static inline __attribute__((always_inline)) void pixel_block(const void *v, int64_t k, int64_t c, int bf16,
                                                              float *shift, float *mean, float *sq) {
    int64_t c0 = 0;
    for (; c0 + CH_BLOCK <= c; c0 += CH_BLOCK) channel_block_stats(v, k, c, c0, CH_BLOCK, bf16, shift, mean, sq);
    if (c0 < c) channel_block_stats(v, k, c, c0, c - c0, bf16, shift, mean, sq);
}

/* Statistics of pixels [start, end) of one channels-last image: per block of pixels a two-pass mean and
 * sum of squared deviations, merged into (count, mean, m2). */
static void pixel_stats(const void *img, int64_t start, int64_t end, int64_t c, int bf16, double *count,
                        double *mean, double *m2, double *scratch) {
    int64_t block = BLOCK_VALUES / c;
    if (block < 1) block = 1;
    *count = 0;
    for (int64_t ch = 0; ch < c; ch++) mean[ch] = m2[ch] = 0;
    for (int64_t p0 = start; p0 < end; p0 += block) {
        int64_t k = end - p0 < block ? end - p0 : block;
        const void *v = (const char *)img + p0 * c * (bf16 ? 2 : 4);
        float *shift = (float *)scratch, *fm = shift + c, *fsq = fm + c; /* in the 2 c doubles' room */
        if (bf16) pixel_block(v, k, c, 1, shift, fm, fsq);
        else pixel_block(v, k, c, 0, shift, fm, fsq);
        double total = *count + (double)k;
        for (int64_t ch = 0; ch < c; ch++) {
            double block_mean = (double)shift[ch] + (double)fm[ch], block_sq = fsq[ch];
            double delta = block_mean - mean[ch];
            mean[ch] += delta * ((double)k / total);
            m2[ch] += block_sq + delta * delta * (*count * (double)k / total);
        }
        *count = total;
    }
}

static int forward_channels_last(const void *x, void *out, const void *residual, const int64_t *rs,
                                 const float *weight, const float *bias, float *mean_out, float *rstd_out,
                                 int64_t n, int64_t c, int64_t h, int64_t w, int64_t pad, int act, float slope,
                                 double eps, int bf16, int n_threads) {
    const int64_t hw = h * w, wp = w + 2 * pad, row_out = wp * c, img_out = (h + 2 * pad) * row_out;
    const int64_t es = bf16 ? 2 : 4;
    /* (image, chunk) tasks, enough for every thread at batch 1; their partial statistics merged per image */
    int64_t chunks = n >= n_threads ? 1 : (n_threads + n - 1) / n;
    if (chunks > hw) chunks = hw;
    const int64_t per_chunk = (hw + chunks - 1) / chunks, tasks = n * chunks;
    double *part = malloc(sizeof(double) * (size_t)(tasks * (2 * c + 1)));
    double *scratch_all = malloc(sizeof(double) * (size_t)(n_threads * 2 * c)); /* a block's sums, a thread */
    float *coef = malloc(sizeof(float) * (size_t)(3 * n * c)); /* per image: m, a, k (pixel_row) */
    if (!part || !scratch_all || !coef) {
        free(part);
        free(scratch_all);
        free(coef);
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
            pixel_stats((const char *)x + img * hw * c * es, start, end, c, bf16, &rec[0], rec + 1, rec + 1 + c,
                        scratch);
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
            double a, b;
            transform(m, m2 / (double)hw, eps, weight, bias, ch, &rstd_out[q], &a, &b);
            float *f = coef + img * 3 * c;
            f[ch] = (float)m;
            f[c + ch] = (float)a;
            f[2 * c + ch] = (float)(b + (double)f[ch] * a); /* (x - m_f) * a + k = x * a + b */
        }
        /* the region's end joins the threads: no barrier after the last loop */
#pragma omp for schedule(static) nowait
        for (int64_t rr = 0; rr < n * h; rr++) { /* one interior row of one image, its borders included */
            int64_t img = rr / h, r = rr % h;
            const float *f = coef + img * 3 * c;
            const char *xr = (const char *)x + (img * hw + r * w) * c * es;
            const void *res = residual ? (const char *)residual + (img * rs[0] + r * rs[2]) * es : NULL;
            char *row = (char *)out + (img * img_out + (r + pad) * row_out + pad * c) * es;
            apply_pixel_row(xr, row, res, rs[3], f, w, c, act, slope, bf16);
            reflect_row(row, w, pad, (size_t)(c * es));
            /* the whole padded rows that mirror this one (padded row pad - k mirrors pad + k, pad + h - 1 + k
             * mirrors pad + h - 1 - k), corners included, written by the thread that wrote it: no barrier
             * between the interior rows and the border rows (one fewer synchronisation a call) */
            char *padded = row - pad * c * es;
            const size_t row_bytes = (size_t)(row_out * es);
            if (r >= 1 && r <= pad) memcpy(padded - 2 * r * row_out * es, padded, row_bytes);
            if (r >= h - 1 - pad && r <= h - 2) memcpy(padded + 2 * (h - 1 - r) * row_out * es, padded, row_bytes);
        }
    }
    free(part);
    free(scratch_all);
    free(coef);
    return 0;
}

/* The version of this file's calling convention: fastcyclegan/norm_cpu_build.py refuses a library that answers
 * another (or none). Raise it with any change to an exported function's arguments. */
int fcg_abi_version(void) { return 2; }

/* x, residual and out fp32 (bf16 = 0) or bf16 (bf16 = 1); weight, bias, mean, rstd fp32. Returns 0, or 1
 * when memory for the partial statistics could not be had (nothing meaningful written). */
int fcg_instance_norm_forward(const void *x, void *out, const void *residual, const int64_t *res_stride,
                              const float *weight, const float *bias, float *mean_out, float *rstd_out, int64_t n,
                              int64_t c, int64_t h, int64_t w, int64_t pad, int channels_last, int act, float slope,
                              double eps, int bf16, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (channels_last)
        return forward_channels_last(x, out, residual, res_stride, weight, bias, mean_out, rstd_out, n, c, h, w,
                                     pad, act, slope, eps, bf16, n_threads);
    forward_nchw(x, out, residual, res_stride, weight, bias, mean_out, rstd_out, n, c, h, w, pad, act, slope, eps,
                 bf16, n_threads);
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
