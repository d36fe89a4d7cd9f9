/* CPU kernels: row reductions over a decoder step's logits (beam search, sampling) and
 * training's softmax cross-entropy, dropout and GRU steps.
 *
 * Beam search needs, for each row of [rows, vocabulary] logits, the log of its softmax's
 * denominator (logsumexp) and the largest logit of each block of tokens. PyTorch computes
 * them in passes that each write a [rows, vocabulary] tensor (the bfloat16 -> float cast,
 * log_softmax, then the block amax); these read the row where it is and write only the
 * results. Training's loss reads the logits once forward and once backward, writing only the
 * gradient; dropout hashes its mask from (seed, index) instead of drawing and storing it.
 * Tensors are bfloat16 or float32; rows are `stride` elements apart.
 *
 * Called through ctypes (rasa_hred/core/kernels.py), which releases the GIL. The module
 * init exists only so that setuptools builds and installs this file like any extension.
 * On x86-64 CPUs with AVX-512 the loops are AVX-512 intrinsics (chosen once, at run time);
 * elsewhere they are plain C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
#endif

#define LOG2E 1.44269504088896341f

typedef union {
    uint32_t bits;
    float value;
} word;

static inline float bf16_to_float(uint16_t value) {
    word w = {.bits = (uint32_t)value << 16};
    return w.value;
}

static inline float element(const char *row, int bf16, long i) {
    return bf16 ? bf16_to_float(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* x[i] + bias[i]: the output layer's bias is added where the logits are read (NULL: none). */
static inline float biased(const char *row, int bf16, const float *bias, long i) {
    return element(row, bf16, i) + (bias ? bias[i] : 0.0f);
}

/* 2^t for t <= 0, relative error below 2e-7; 0 below 2^-126 (no subnormals: they are slow
 * and worth nothing next to the row's largest term, which is 1). The AVX-512 path computes
 * the same polynomial. */
static const float EXP2_POLY[6] = {1.8775767e-3f, 8.9893397e-3f, 5.5826318e-2f,
                                   2.4015361e-1f, 6.9315308e-1f, 9.9999994e-1f};

static inline float exp2_nonpositive(float t) {
    t = t < -126.0f ? -127.0f : t;
    float whole = floorf(t);
    float f = t - whole;
    float p = EXP2_POLY[0];
    for (int k = 1; k < 6; k++) p = p * f + EXP2_POLY[k];
    word scale = {.bits = (uint32_t)((int32_t)whole + 127) << 23};
    return p * scale.value;
}

/* --- plain C ------------------------------------------------------------------------- */

static float plain_max(const char *row, int bf16, const float *bias, long count) {
    float best = -INFINITY;
    for (long i = 0; i < count; i++) {
        float x = biased(row, bf16, bias, i);
        best = x > best ? x : best;
    }
    return best;
}

static float plain_sum_exp(const char *row, int bf16, const float *bias, long count, float shift) {
    double total = 0.0; /* a float sum of 10,000 terms would drift by about 1e-5 */
    for (long i = 0; i < count; i++) total += exp2_nonpositive((biased(row, bf16, bias, i) - shift) * LOG2E);
    return (float)total;
}

/* --- AVX-512 ------------------------------------------------------------------------- */

#ifdef HAVE_AVX512_PATH
#define AVX512 __attribute__((target("avx512f")))

/* 16 elements from i on, as floats. */
AVX512 static inline __m512 load16(const char *row, int bf16, long i) {
    if (bf16) {
        __m256i half = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    }
    return _mm512_loadu_ps((const float *)row + i);
}

/* 16 elements from i on plus the bias' (NULL: none). */
AVX512 static inline __m512 load16b(const char *row, int bf16, const float *bias, long i) {
    __m512 x = load16(row, bf16, i);
    return bias ? _mm512_add_ps(x, _mm512_loadu_ps(bias + i)) : x;
}

/* 16 floats to out[i..], as bf16 (rounded to nearest even; the values are finite) or float32. */
AVX512 static inline void store16(char *out, int bf16, long i, __m512 v) {
    if (!bf16) {
        _mm512_storeu_ps((float *)out + i, v);
        return;
    }
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

AVX512 static inline __m512 exp2_nonpositive16(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-127.0f));
    __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, whole);
    __m512 p = _mm512_set1_ps(EXP2_POLY[0]);
    for (int k = 1; k < 6; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[k]));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(whole), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

#define INLINE __attribute__((always_inline)) inline

AVX512 static INLINE float avx512_max_of(const char *row, int bf16, const float *bias, long count) {
    __m512 a = _mm512_set1_ps(-INFINITY), b = a;
    long i = 0;
    for (; i + 32 <= count; i += 32) {
        a = _mm512_max_ps(a, load16b(row, bf16, bias, i));
        b = _mm512_max_ps(b, load16b(row, bf16, bias, i + 16));
    }
    for (; i + 16 <= count; i += 16) a = _mm512_max_ps(a, load16b(row, bf16, bias, i));
    float best = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
    float rest = plain_max(row + i * (bf16 ? 2 : 4), bf16, bias ? bias + i : NULL, count - i);
    return rest > best ? rest : best;
}

/* The loop compiled twice, so that decoding's rows (no bias) test for none only here. */
AVX512 static float avx512_max(const char *row, int bf16, const float *bias, long count) {
    return bias ? avx512_max_of(row, bf16, bias, count) : avx512_max_of(row, bf16, NULL, count);
}

AVX512 static INLINE float avx512_sum_exp_of(const char *row, int bf16, const float *bias,
                                            long count, float shift) {
    __m512 scale = _mm512_set1_ps(LOG2E), offset = _mm512_set1_ps(shift * LOG2E);
    __m512 a = _mm512_setzero_ps(), b = a;
    long i = 0;
    for (; i + 32 <= count; i += 32) {
        a = _mm512_add_ps(a, exp2_nonpositive16(_mm512_fmsub_ps(load16b(row, bf16, bias, i), scale, offset)));
        b = _mm512_add_ps(b, exp2_nonpositive16(_mm512_fmsub_ps(load16b(row, bf16, bias, i + 16), scale, offset)));
    }
    for (; i + 16 <= count; i += 16)
        a = _mm512_add_ps(a, exp2_nonpositive16(_mm512_fmsub_ps(load16b(row, bf16, bias, i), scale, offset)));
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b)) +
           plain_sum_exp(row + i * (bf16 ? 2 : 4), bf16, bias ? bias + i : NULL, count - i, shift);
}

AVX512 static float avx512_sum_exp(const char *row, int bf16, const float *bias, long count,
                                   float shift) {
    return bias ? avx512_sum_exp_of(row, bf16, bias, count, shift)
                : avx512_sum_exp_of(row, bf16, NULL, count, shift);
}

static int avx512_choice = -1; /* -1: ask the CPU */

static int use_avx512(void) {
    if (avx512_choice < 0) {
        __builtin_cpu_init();
        avx512_choice = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return avx512_choice;
}

/* Tests run both paths: 0 = plain C, 1 = AVX-512 (where the CPU has it), -1 = ask the CPU.
 * Returns the path now in use. */
int hred_choose_avx512(int choice) {
    avx512_choice = choice == 1 ? -1 : choice; /* AVX-512 only where the CPU has it */
    return use_avx512();
}
#else
static int use_avx512(void) { return 0; }
int hred_choose_avx512(int choice) { return (void)choice, 0; }
#endif

static float row_max(const char *row, int bf16, const float *bias, long count) {
#ifdef HAVE_AVX512_PATH
    if (use_avx512()) return avx512_max(row, bf16, bias, count);
#endif
    return plain_max(row, bf16, bias, count);
}

static float row_sum_exp(const char *row, int bf16, const float *bias, long count, float shift) {
#ifdef HAVE_AVX512_PATH
    if (use_avx512()) return avx512_sum_exp(row, bf16, bias, count, shift);
#endif
    return plain_sum_exp(row, bf16, bias, count, shift);
}

/* --- exported ------------------------------------------------------------------------ */

/* out[r] = log(sum_i exp(x[r, i])); -inf for a row with no finite value. */
void hred_logsumexp(const void *data, int bf16, long rows, long vocab, long stride, float *out) {
    size_t width = bf16 ? 2 : 4;
    for (long r = 0; r < rows; r++) {
        const char *row = (const char *)data + (size_t)(r * stride) * width;
        float shift = row_max(row, bf16, NULL, vocab);
        out[r] = isfinite(shift) ? shift + logf(row_sum_exp(row, bf16, NULL, vocab, shift)) : shift;
    }
}

/* out[r, b] = max(x[r, b*block .. min(b*block + block, vocab) - 1]) for the
 * ceil(vocab / block) blocks (the last one may be partial). */
void hred_block_max(const void *data, int bf16, long rows, long vocab, long stride, long block,
                    float *out) {
    size_t width = bf16 ? 2 : 4;
    long blocks = (vocab + block - 1) / block;
    for (long r = 0; r < rows; r++) {
        const char *row = (const char *)data + (size_t)(r * stride) * width;
        for (long b = 0; b < blocks; b++) {
            long start = b * block, count = vocab - start < block ? vocab - start : block;
            out[r * blocks + b] = row_max(row + (size_t)start * width, bf16, NULL, count);
        }
    }
}

/* out[r] = the sum of the values of row r above threshold[r] (float32 rows): the mass of
 * the tokens more likely than a drawn one (sampling's nucleus test). */
void hred_mass_above(const float *data, long rows, long vocab, long stride,
                     const float *threshold, float *out) {
    for (long r = 0; r < rows; r++) {
        const float *row = data + r * stride;
        float limit = threshold[r], lane[16] = {0};
        long i = 0;
        for (; i + 16 <= vocab; i += 16)
            for (int j = 0; j < 16; j++) lane[j] += row[i + j] > limit ? row[i + j] : 0.0f;
        float total = 0.0f;
        for (int j = 0; j < 16; j++) total += lane[j];
        for (; i < vocab; i++) total += row[i] > limit ? row[i] : 0.0f;
        out[r] = total;
    }
}

/* --- softmax cross-entropy (training's loss over the output layer's logits) ------------ */

/* The logits are x[r, i] + bias[i] (bias: NULL for none). For every row whose target is not
 * `ignore`: lse[r] = log(sum_i exp(logit[r, i])) and loss[r] = lse[r] - logit[r, target[r]];
 * both 0 for an ignored row. */
void hred_xent_forward(const void *data, int bf16, long rows, long vocab, long stride,
                       const float *bias, const int64_t *targets, int64_t ignore, float *lse,
                       float *loss) {
    size_t width = bf16 ? 2 : 4;
    for (long r = 0; r < rows; r++) {
        lse[r] = loss[r] = 0.0f;
        if (targets[r] == ignore) continue;
        const char *row = (const char *)data + (size_t)(r * stride) * width;
        float shift = row_max(row, bf16, bias, vocab);
        lse[r] = shift + logf(row_sum_exp(row, bf16, bias, vocab, shift));
        loss[r] = lse[r] - biased(row, bf16, bias, targets[r]);
    }
}

/* float -> bfloat16, rounded to nearest even (the values here are finite). */
static inline uint16_t float_to_bf16(float value) {
    word w = {.value = value};
    return (uint16_t)((w.bits + 0x7FFFu + ((w.bits >> 16) & 1u)) >> 16);
}

static inline void store(char *out, int bf16, long i, float value) {
    if (bf16) ((uint16_t *)out)[i] = float_to_bf16(value);
    else ((float *)out)[i] = value;
}

/* out[i] = scale * exp(logit[i] - lse), and bias_grad[i] += it (bias_grad may be NULL); `out`
 * may be the row itself. */
static void plain_xent_row(const char *row, int bf16, const float *bias, long vocab, float lse,
                           float scale, char *out, float *bias_grad) {
    for (long i = 0; i < vocab; i++) {
        float g = scale * exp2_nonpositive((biased(row, bf16, bias, i) - lse) * LOG2E);
        store(out, bf16, i, g);
        if (bias_grad) bias_grad[i] += g;
    }
}

#ifdef HAVE_AVX512_PATH
AVX512 static void avx512_xent_row(const char *row, int bf16, const float *bias, long vocab,
                                   float lse, float scale, char *out, float *bias_grad) {
    __m512 log2e = _mm512_set1_ps(LOG2E), offset = _mm512_set1_ps(lse * LOG2E);
    __m512 factor = _mm512_set1_ps(scale);
    long i = 0;
    for (; i + 16 <= vocab; i += 16) {
        __m512 t = _mm512_fmsub_ps(load16b(row, bf16, bias, i), log2e, offset);
        __m512 g = _mm512_mul_ps(exp2_nonpositive16(t), factor);
        if (bias_grad) _mm512_storeu_ps(bias_grad + i, _mm512_add_ps(_mm512_loadu_ps(bias_grad + i), g));
        store16(out, bf16, i, g);
    }
    size_t width = bf16 ? 2 : 4;
    plain_xent_row(row + i * width, bf16, bias ? bias + i : NULL, vocab - i, lse, scale,
                   out + i * width, bias_grad ? bias_grad + i : NULL);
}
#endif

/* The loss' gradient with respect to the logits, written over them (the same rows, `stride`
 * apart, the same dtype): scale * (softmax(logit[r])[i] - (i == target[r])), zeros in an
 * ignored row. bias_grad (NULL: none) accumulates its column sums, the bias' gradient. */
void hred_xent_backward(void *data, int bf16, long rows, long vocab, long stride,
                        const float *bias, const int64_t *targets, int64_t ignore,
                        const float *lse, float scale, float *bias_grad) {
    size_t width = bf16 ? 2 : 4;
    for (long r = 0; r < rows; r++) {
        char *row = (char *)data + (size_t)(r * stride) * width;
        if (targets[r] == ignore) {
            memset(row, 0, (size_t)vocab * width);
            continue;
        }
        long t = targets[r];
        float target_logit = biased(row, bf16, bias, t); /* read before the row is overwritten */
#ifdef HAVE_AVX512_PATH
        if (use_avx512()) avx512_xent_row(row, bf16, bias, vocab, lse[r], scale, row, bias_grad);
        else
#endif
            plain_xent_row(row, bf16, bias, vocab, lse[r], scale, row, bias_grad);
        store(row, bf16, t, scale * (exp2_nonpositive((target_logit - lse[r]) * LOG2E) - 1.0f));
        if (bias_grad) bias_grad[t] -= scale;
    }
}

/* --- dropout ---------------------------------------------------------------------------- */

/* Element i's uniform 32-bit draw under `seed`: two rounds of MurmurHash3's finalizer over
 * the counter. It depends on (seed, i) only, so a chunk of a tensor can be drawn anywhere,
 * and the backward pass draws the forward pass' mask again instead of storing it. */
static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

static inline uint32_t draw(uint64_t seed, uint32_t i) {
    return mix32(mix32(i + (uint32_t)seed) ^ (uint32_t)(seed >> 32));
}

static void plain_dropout(const char *x, int bf16, long first, long count, uint64_t seed,
                          uint32_t threshold, float scale, char *out) {
    for (long i = 0; i < count; i++) {
        store(out, bf16, i, draw(seed, (uint32_t)(first + i)) >= threshold ? element(x, bf16, i) * scale : 0.0f);
    }
}

#ifdef HAVE_AVX512_PATH
AVX512 static inline __m512i mix32x16(__m512i h) {
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x85EBCA6Bu));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0xC2B2AE35u));
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}

AVX512 static void avx512_dropout(const char *x, int bf16, long first, long count, uint64_t seed,
                                  uint32_t threshold, float scale, char *out) {
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i low = _mm512_set1_epi32((int)(uint32_t)seed), high = _mm512_set1_epi32((int)(uint32_t)(seed >> 32));
    __m512i limit = _mm512_set1_epi32((int)threshold);
    __m512 factor = _mm512_set1_ps(scale);
    long i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i counter = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)(first + i)), lanes);
        __m512i h = mix32x16(_mm512_xor_si512(mix32x16(_mm512_add_epi32(counter, low)), high));
        __mmask16 keep = _mm512_cmpge_epu32_mask(h, limit);
        __m512 v = _mm512_maskz_mul_ps(keep, load16(x, bf16, i), factor);
        store16(out, bf16, i, v);
    }
    size_t width = bf16 ? 2 : 4;
    plain_dropout(x + i * width, bf16, first + i, count - i, seed, threshold, scale, out + i * width);
}
#endif

/* Elements first .. first + count - 1 of a tensor under dropout: out[i] = x[i] * scale where
 * the element's draw is >= threshold (kept with probability 1 - threshold / 2^32), else 0.
 * `x` and `out` point at element `first`; both bf16 or both float32. */
void hred_dropout(const void *x, int bf16, long first, long count, uint64_t seed,
                  uint32_t threshold, float scale, void *out) {
#ifdef HAVE_AVX512_PATH
    if (use_avx512()) {
        avx512_dropout(x, bf16, first, count, seed, threshold, scale, out);
        return;
    }
#endif
    plain_dropout(x, bf16, first, count, seed, threshold, scale, out);
}

/* --- GRU cell (training's recurrences) -------------------------------------------------- */

/* A GRU layer's step for the rows still running: with a = gi + gh + bias (gi = x W_ih^T + b_ih
 * and gh = h W_hh^T, each [rows, 3H] in the order r, z, n),
 *   r = sigmoid(a_r), z = sigmoid(a_z), n = tanh(gi_n + r * (gh_n + bias_n)),
 *   h' = n + z * (h - n).
 * PyTorch runs this as a dozen small ops a step forward and twice as many backward, each a
 * tensor and an autograd node; here it is one pass per step each way. The hidden state and
 * everything saved for the backward pass stay in float32; gi, gh and the products' inputs are
 * bf16 or float32 (the dtype of the products). */

/* sigmoid(x) and tanh(x) from 2^t with t <= 0, so that they cannot overflow. */
static inline float plain_sigmoid(float x) {
    float e = exp2_nonpositive(-fabsf(x) * LOG2E), inverse = 1.0f / (1.0f + e);
    return x >= 0.0f ? inverse : e * inverse;
}

static inline float plain_tanh(float x) {
    float e = exp2_nonpositive(-2.0f * fabsf(x) * LOG2E), t = (1.0f - e) / (1.0f + e);
    return x >= 0.0f ? t : -t;
}

/* Columns first .. size - 1 of a row's forward step (see hred_gru_forward). */
static void plain_gru_forward_row(const char *gi, const char *gh, int bf16, const float *bias,
                                  const float *h, long first, long size, float *out, char *next,
                                  float *saved) {
    for (long j = first; j < size; j++) {
        float r = plain_sigmoid(element(gi, bf16, j) + element(gh, bf16, j) + bias[j]);
        float z = plain_sigmoid(element(gi, bf16, size + j) + element(gh, bf16, size + j) + bias[size + j]);
        float hidden_n = element(gh, bf16, 2 * size + j) + bias[2 * size + j];
        float n = plain_tanh(element(gi, bf16, 2 * size + j) + r * hidden_n);
        float value = n + z * (h[j] - n);
        out[j] = value;
        if (next) store(next, bf16, j, value);
        saved[j] = r, saved[size + j] = z, saved[2 * size + j] = n, saved[3 * size + j] = hidden_n;
    }
}

/* Columns first .. size - 1 of a row's backward step (see hred_gru_backward). */
static void plain_gru_backward_row(const float *saved, const float *h, const float *grad_out,
                                   float *dh, long first, long size, char *dgi, char *dgh,
                                   int bf16) {
    for (long j = first; j < size; j++) {
        float r = saved[j], z = saved[size + j], n = saved[2 * size + j], hidden_n = saved[3 * size + j];
        float g = dh[j] + (grad_out ? grad_out[j] : 0.0f);
        float dn = g * (1.0f - z) * (1.0f - n * n);
        float dz = g * (h[j] - n) * z * (1.0f - z);
        float dr = dn * hidden_n * r * (1.0f - r);
        store(dgi, bf16, j, dr), store(dgi, bf16, size + j, dz), store(dgi, bf16, 2 * size + j, dn);
        store(dgh, bf16, j, dr), store(dgh, bf16, size + j, dz), store(dgh, bf16, 2 * size + j, dn * r);
        dh[j] = g * z;
    }
}

#ifdef HAVE_AVX512_PATH
AVX512 static inline __m512 sigmoid16(__m512 x) {
    __m512 magnitude = _mm512_abs_ps(x);
    __m512 e = exp2_nonpositive16(_mm512_mul_ps(magnitude, _mm512_set1_ps(-LOG2E)));
    __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mul_ps(inverse, negative, e, inverse);
}

AVX512 static inline __m512 tanh16(__m512 x) {
    __m512 magnitude = _mm512_abs_ps(x), one = _mm512_set1_ps(1.0f);
    __m512 e = exp2_nonpositive16(_mm512_mul_ps(magnitude, _mm512_set1_ps(-2.0f * LOG2E)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign));
}

AVX512 static void avx512_gru_forward_row(const char *gi, const char *gh, int bf16,
                                          const float *bias, const float *h, long size,
                                          float *out, char *next, float *saved) {
    size_t width = bf16 ? 2 : 4;
    const char *gi_z = gi + size * width, *gi_n = gi + 2 * size * width;
    const char *gh_z = gh + size * width, *gh_n = gh + 2 * size * width;
    long j = 0;
    for (; j + 16 <= size; j += 16) {
        __m512 r = sigmoid16(_mm512_add_ps(_mm512_add_ps(load16(gi, bf16, j), load16(gh, bf16, j)), _mm512_loadu_ps(bias + j)));
        __m512 z = sigmoid16(_mm512_add_ps(_mm512_add_ps(load16(gi_z, bf16, j), load16(gh_z, bf16, j)), _mm512_loadu_ps(bias + size + j)));
        __m512 hidden_n = _mm512_add_ps(load16(gh_n, bf16, j), _mm512_loadu_ps(bias + 2 * size + j));
        __m512 n = tanh16(_mm512_fmadd_ps(r, hidden_n, load16(gi_n, bf16, j)));
        __m512 value = _mm512_fmadd_ps(z, _mm512_sub_ps(_mm512_loadu_ps(h + j), n), n);
        _mm512_storeu_ps(out + j, value);
        if (next) store16(next, bf16, j, value);
        _mm512_storeu_ps(saved + j, r), _mm512_storeu_ps(saved + size + j, z);
        _mm512_storeu_ps(saved + 2 * size + j, n), _mm512_storeu_ps(saved + 3 * size + j, hidden_n);
    }
    plain_gru_forward_row(gi, gh, bf16, bias, h, j, size, out, next, saved);
}

AVX512 static void avx512_gru_backward_row(const float *saved, const float *h,
                                           const float *grad_out, float *dh, long size,
                                           char *dgi, char *dgh, int bf16) {
    size_t width = bf16 ? 2 : 4;
    __m512 one = _mm512_set1_ps(1.0f);
    long j = 0;
    for (; j + 16 <= size; j += 16) {
        __m512 r = _mm512_loadu_ps(saved + j), z = _mm512_loadu_ps(saved + size + j);
        __m512 n = _mm512_loadu_ps(saved + 2 * size + j), hidden_n = _mm512_loadu_ps(saved + 3 * size + j);
        __m512 g = _mm512_loadu_ps(dh + j);
        if (grad_out) g = _mm512_add_ps(g, _mm512_loadu_ps(grad_out + j));
        __m512 dn = _mm512_mul_ps(_mm512_mul_ps(g, _mm512_sub_ps(one, z)), _mm512_fnmadd_ps(n, n, one));
        __m512 dz = _mm512_mul_ps(_mm512_mul_ps(g, _mm512_sub_ps(_mm512_loadu_ps(h + j), n)),
                                  _mm512_mul_ps(z, _mm512_sub_ps(one, z)));
        __m512 dr = _mm512_mul_ps(_mm512_mul_ps(dn, hidden_n), _mm512_mul_ps(r, _mm512_sub_ps(one, r)));
        store16(dgi, bf16, j, dr), store16(dgi + size * width, bf16, j, dz);
        store16(dgi + 2 * size * width, bf16, j, dn);
        store16(dgh, bf16, j, dr), store16(dgh + size * width, bf16, j, dz);
        store16(dgh + 2 * size * width, bf16, j, _mm512_mul_ps(dn, r));
        _mm512_storeu_ps(dh + j, _mm512_mul_ps(g, z));
    }
    plain_gru_backward_row(saved, h, grad_out, dh, j, size, dgi, dgh, bf16);
}
#endif

/* One forward step of a GRU layer over `rows` rows of hidden size `size`. Row i reads gi at
 * gi + i * gi_stride, gh at gh + i * 3 * size (bf16 or float32, per `bf16`), h (float32) at
 * h + i * h_stride; it writes h' (float32) at out + i * out_stride, r, z, n and gh_n + bias_n
 * (float32) at saved + i * 4 * size for the backward pass, and, for the first `carried` rows
 * (those that run the next step), h' in gi's dtype at next + i * size: the next step's product
 * input. `next` may be NULL when `carried` is 0. */
void hred_gru_forward(const void *gi, long gi_stride, const void *gh, int bf16, const float *bias,
                      const float *h, long h_stride, long rows, long size, float *out,
                      long out_stride, void *next, long carried, float *saved) {
    size_t width = bf16 ? 2 : 4;
    for (long i = 0; i < rows; i++) {
        const char *gi_row = (const char *)gi + (size_t)(i * gi_stride) * width;
        const char *gh_row = (const char *)gh + (size_t)(i * 3 * size) * width;
        char *next_row = i < carried ? (char *)next + (size_t)(i * size) * width : NULL;
#ifdef HAVE_AVX512_PATH
        if (use_avx512()) {
            avx512_gru_forward_row(gi_row, gh_row, bf16, bias, h + i * h_stride, size,
                                   out + i * out_stride, next_row, saved + i * 4 * size);
            continue;
        }
#endif
        plain_gru_forward_row(gi_row, gh_row, bf16, bias, h + i * h_stride, 0, size,
                              out + i * out_stride, next_row, saved + i * 4 * size);
    }
}

/* One backward step of a GRU layer, the forward step's rows in reverse. dh (float32, rows
 * `size` apart) holds the gradient with respect to h' from the steps after this one (or the
 * final state's); grad_out (NULL: none; rows grad_stride apart) adds the output's. Writes the
 * gradients with respect to gi (rows dgi_stride apart) and to gh + bias (rows 3 * size apart),
 * both in the products' dtype, and leaves in dh the part of h's gradient that does not pass
 * through W_hh (dh * z): the caller adds dgh W_hh. h is this step's input state, as forward. */
void hred_gru_backward(const float *saved, const float *h, long h_stride, const float *grad_out,
                       long grad_stride, float *dh, long rows, long size, void *dgi,
                       long dgi_stride, void *dgh, int bf16) {
    size_t width = bf16 ? 2 : 4;
    for (long i = 0; i < rows; i++) {
        const float *grad_row = grad_out ? grad_out + i * grad_stride : NULL;
        char *dgi_row = (char *)dgi + (size_t)(i * dgi_stride) * width;
        char *dgh_row = (char *)dgh + (size_t)(i * 3 * size) * width;
#ifdef HAVE_AVX512_PATH
        if (use_avx512()) {
            avx512_gru_backward_row(saved + i * 4 * size, h + i * h_stride, grad_row,
                                    dh + i * size, size, dgi_row, dgh_row, bf16);
            continue;
        }
#endif
        plain_gru_backward_row(saved + i * 4 * size, h + i * h_stride, grad_row, dh + i * size,
                               0, size, dgi_row, dgh_row, bf16);
    }
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "CPU kernels for decoding and training (see kernels.py).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
