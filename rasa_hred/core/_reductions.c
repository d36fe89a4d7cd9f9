/* Row reductions over a decoder step's logits, for beam search on the CPU.
 *
 * Beam search needs, for each row of [rows, vocabulary] logits, the log of its softmax's
 * denominator (logsumexp) and the largest logit of each block of tokens. PyTorch computes
 * them in passes that each write a [rows, vocabulary] tensor (the bfloat16 -> float cast,
 * log_softmax, then the block amax); these read the row where it is and write only the
 * results. Rows are bfloat16 or float32, `stride` elements apart.
 *
 * Called through ctypes (rasa_hred/core/reductions.py), which releases the GIL. The module
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

static float plain_max(const char *row, int bf16, long count) {
    float best = -INFINITY;
    for (long i = 0; i < count; i++) {
        float x = element(row, bf16, i);
        best = x > best ? x : best;
    }
    return best;
}

static float plain_sum_exp(const char *row, int bf16, long count, float shift) {
    float total = 0.0f;
    for (long i = 0; i < count; i++) total += exp2_nonpositive((element(row, bf16, i) - shift) * LOG2E);
    return total;
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

AVX512 static inline __m512 exp2_nonpositive16(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-127.0f));
    __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, whole);
    __m512 p = _mm512_set1_ps(EXP2_POLY[0]);
    for (int k = 1; k < 6; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[k]));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(whole), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

AVX512 static float avx512_max(const char *row, int bf16, long count) {
    __m512 a = _mm512_set1_ps(-INFINITY), b = a;
    long i = 0;
    for (; i + 32 <= count; i += 32) {
        a = _mm512_max_ps(a, load16(row, bf16, i));
        b = _mm512_max_ps(b, load16(row, bf16, i + 16));
    }
    for (; i + 16 <= count; i += 16) a = _mm512_max_ps(a, load16(row, bf16, i));
    float best = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
    float rest = plain_max(row + i * (bf16 ? 2 : 4), bf16, count - i);
    return rest > best ? rest : best;
}

AVX512 static float avx512_sum_exp(const char *row, int bf16, long count, float shift) {
    __m512 scale = _mm512_set1_ps(LOG2E), offset = _mm512_set1_ps(shift * LOG2E);
    __m512 a = _mm512_setzero_ps(), b = a;
    long i = 0;
    for (; i + 32 <= count; i += 32) {
        a = _mm512_add_ps(a, exp2_nonpositive16(_mm512_fmsub_ps(load16(row, bf16, i), scale, offset)));
        b = _mm512_add_ps(b, exp2_nonpositive16(_mm512_fmsub_ps(load16(row, bf16, i + 16), scale, offset)));
    }
    for (; i + 16 <= count; i += 16)
        a = _mm512_add_ps(a, exp2_nonpositive16(_mm512_fmsub_ps(load16(row, bf16, i), scale, offset)));
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b)) +
           plain_sum_exp(row + i * (bf16 ? 2 : 4), bf16, count - i, shift);
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

static float row_max(const char *row, int bf16, long count) {
#ifdef HAVE_AVX512_PATH
    if (use_avx512()) return avx512_max(row, bf16, count);
#endif
    return plain_max(row, bf16, count);
}

static float row_sum_exp(const char *row, int bf16, long count, float shift) {
#ifdef HAVE_AVX512_PATH
    if (use_avx512()) return avx512_sum_exp(row, bf16, count, shift);
#endif
    return plain_sum_exp(row, bf16, count, shift);
}

/* --- exported ------------------------------------------------------------------------ */

/* out[r] = log(sum_i exp(x[r, i])); -inf for a row with no finite value. */
void hred_logsumexp(const void *data, int bf16, long rows, long vocab, long stride, float *out) {
    size_t width = bf16 ? 2 : 4;
    for (long r = 0; r < rows; r++) {
        const char *row = (const char *)data + (size_t)(r * stride) * width;
        float shift = row_max(row, bf16, vocab);
        out[r] = isfinite(shift) ? shift + logf(row_sum_exp(row, bf16, vocab, shift)) : shift;
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
            out[r * blocks + b] = row_max(row + (size_t)start * width, bf16, count);
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_reductions", "Row reductions for beam search (see reductions.py).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__reductions(void) { return PyModule_Create(&module); }
