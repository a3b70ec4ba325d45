/* CRC-32 (the ZIP / zlib polynomial) of checkpoint payloads. zlib's table-driven crc32 runs at
 * ~2.5 GB/s, which made CRC checking dominate read_checkpoint; on x86-64 CPUs with PCLMULQDQ we
 * fold 64-byte blocks with carry-less multiplication (Gopal et al., "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ Instruction", Intel 2009; same constants as Linux's
 * crc32-pclmul and Chromium's zlib) and finish the tail with zlib. Results are identical to
 * zlib's crc32 (tested on random lengths and offsets). */
#include "nnunet_export.h"

#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC_HAVE_CLMUL 1
#include <immintrin.h>

/* Requires len >= 64 and len % 16 == 0; crc is the pre-inverted running value. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_clmul(const uint8_t *buf, size_t len,
                                                                   uint32_t crc)
{
    _Alignas(16) static const uint64_t k1k2[] = {0x0154442bd4, 0x01c6e41596};
    _Alignas(16) static const uint64_t k3k4[] = {0x01751997d0, 0x00ccaa009e};
    _Alignas(16) static const uint64_t k5k0[] = {0x0163cd6124, 0x0000000000};
    _Alignas(16) static const uint64_t poly[] = {0x01db710641, 0x01f7011641};
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = _mm_load_si128((const __m128i *)k1k2);
    buf += 64;
    len -= 64;
    /* four independent 128-bit lanes, 64 bytes per iteration */
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }
    /* fold the four lanes into one */
    x0 = _mm_load_si128((const __m128i *)k3k4);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    /* 128 -> 64 bits, then Barrett reduction to 32 bits */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_load_si128((const __m128i *)poly);
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

/* Same folding with 256-bit VPCLMULQDQ (two 128-bit lanes per register, 128 bytes per iteration):
 * the fold distance is 1024 bits, so k = x^(1024+32), x^(1024-32) mod P (bit-reflected, << 1).
 * Requires len >= 128 and len % 128 == 0. The 128-byte remainder it leaves is congruent to the
 * input, so its CRC (crc_clmul with initial 0) is the CRC of everything processed. */
__attribute__((target("vpclmulqdq,avx2,pclmul,sse4.1"))) static uint32_t crc_vclmul(const uint8_t *buf,
                                                                                   size_t len, uint32_t crc)
{
    _Alignas(32) uint8_t rest[128];
    const __m256i k = _mm256_set_epi64x(0x014a7fe880, 0x01e88ef372, 0x014a7fe880, 0x01e88ef372);
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(buf + 0x00));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(buf + 0x20));
    __m256i x3 = _mm256_loadu_si256((const __m256i *)(buf + 0x40));
    __m256i x4 = _mm256_loadu_si256((const __m256i *)(buf + 0x60));
    x1 = _mm256_xor_si256(x1, _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, (int)crc));
    buf += 128;
    len -= 128;
    while (len >= 128) {
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(buf + 0x00));
        __m256i y2 = _mm256_loadu_si256((const __m256i *)(buf + 0x20));
        __m256i y3 = _mm256_loadu_si256((const __m256i *)(buf + 0x40));
        __m256i y4 = _mm256_loadu_si256((const __m256i *)(buf + 0x60));
        x1 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x1, k, 0x00),
                                               _mm256_clmulepi64_epi128(x1, k, 0x11)), y1);
        x2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x2, k, 0x00),
                                               _mm256_clmulepi64_epi128(x2, k, 0x11)), y2);
        x3 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x3, k, 0x00),
                                               _mm256_clmulepi64_epi128(x3, k, 0x11)), y3);
        x4 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x4, k, 0x00),
                                               _mm256_clmulepi64_epi128(x4, k, 0x11)), y4);
        buf += 128;
        len -= 128;
    }
    _mm256_store_si256((__m256i *)(rest + 0x00), x1);
    _mm256_store_si256((__m256i *)(rest + 0x20), x2);
    _mm256_store_si256((__m256i *)(rest + 0x40), x3);
    _mm256_store_si256((__m256i *)(rest + 0x60), x4);
    return crc_clmul(rest, sizeof rest, 0);
}
#endif

/* zlib's crc32 takes uInt lengths: feed it at most 1 GiB at a time. */
static uint32_t crc_zlib(uint32_t crc, const uint8_t *p, uint64_t len)
{
    uLong c = crc;
    while (len > 0) {
        uInt chunk = len > (1u << 30) ? (1u << 30) : (uInt)len;
        c = crc32(c, p, chunk);
        p += chunk;
        len -= chunk;
    }
    return (uint32_t)c;
}

uint32_t nx_crc32(uint32_t crc, const uint8_t *p, uint64_t len)
{
#ifdef CRC_HAVE_CLMUL
    static int has_clmul = -1, has_vclmul = -1; /* benign race: every thread computes the same */
    if (has_clmul < 0) {
        __builtin_cpu_init();
        has_vclmul = __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx2") &&
                     __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
        has_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    if (has_vclmul && len >= 256) {
        uint64_t bulk = len & ~(uint64_t)127;
        crc = ~crc_vclmul(p, (size_t)bulk, ~crc);
        p += bulk;
        len -= bulk;
    }
    if (has_clmul && len >= 64) {
        uint64_t bulk = len & ~(uint64_t)15;
        crc = ~crc_clmul(p, (size_t)bulk, ~crc);
        p += bulk;
        len -= bulk;
    }
#endif
    return crc_zlib(crc, p, len);
}

static PyObject *py_crc32(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned int start = 0;
    uint32_t crc;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*|I:_crc32", &view, &start)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    crc = nx_crc32(start, view.buf, (uint64_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef crc_methods[] = {
    {"_crc32", py_crc32, METH_VARARGS, "_crc32(data, value=0) -> int: CRC-32 like zlib.crc32 (internal, for tests)."},
    {NULL, NULL, 0, NULL},
};

int nx_crc32_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, crc_methods);
}
