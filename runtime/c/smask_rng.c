/* SHA-256 (FIPS 180-4), Philox4x64-10 and the element values of docs/format.md section 3. */
#include <math.h>
#include <string.h>

#include "smask_int.h"

static const uint32_t sha_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) | ((uint32_t)p[4 * i + 2] << 8) |
               (uint32_t)p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

void smask_sha_init(smask_sha_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(c->h, iv, sizeof iv);
    c->total = 0;
    c->fill = 0;
}

void smask_sha_update(smask_sha_ctx *c, const uint8_t *p, size_t n) {
    c->total += n;
    if (c->fill) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->block + c->fill, p, take);
        c->fill += take;
        p += take;
        n -= take;
        if (c->fill < 64) return;
        sha_block(c->h, c->block);
        c->fill = 0;
    }
    while (n >= 64) {
        sha_block(c->h, p);
        p += 64;
        n -= 64;
    }
    if (n) {
        memcpy(c->block, p, n);
        c->fill = n;
    }
}

void smask_sha_final(smask_sha_ctx *c, uint8_t out[32]) {
    uint64_t bits = c->total * 8;
    uint8_t pad[72];
    size_t padlen = (c->fill < 56 ? 56 : 120) - c->fill;
    int i;
    memset(pad, 0, sizeof pad);
    pad[0] = 0x80;
    for (i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    smask_sha_update(c, pad, padlen + 8);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
}

void smask_sha256(const uint8_t *data, size_t len, uint8_t out[32]) {
    smask_sha_ctx c;
    smask_sha_init(&c);
    smask_sha_update(&c, data, len);
    smask_sha_final(&c, out);
}

/* 64 x 64 -> 128-bit product. */
#if defined(__SIZEOF_INT128__) && !defined(SMASK_NO_INT128)
__extension__ typedef unsigned __int128 smask_u128;
static void mul128(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
    smask_u128 p = (smask_u128)a * b;
    *hi = (uint64_t)(p >> 64);
    *lo = (uint64_t)p;
}
#else
static void mul128(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
    uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    *lo = (mid << 32) | (p00 & 0xffffffffu);
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}
#endif

void smask_philox4x64_10(const uint64_t ctr[4], const uint64_t key[2], uint64_t out[4]) {
    uint64_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    int r;
    for (r = 0; r < 10; r++) {
        uint64_t hi0, lo0, hi1, lo1;
        if (r) {
            k0 += UINT64_C(0x9E3779B97F4A7C15);
            k1 += UINT64_C(0xBB67AE8584CAA73B);
        }
        mul128(UINT64_C(0xD2E7470EE14C6C93), c0, &hi0, &lo0);
        mul128(UINT64_C(0xCA5A826395121157), c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static uint64_t key_of(const char *name, size_t name_len, int aux);

uint64_t smask_tensor_key(const char *name, size_t len) { return key_of(name, len, 0); }

/* The 32-bit value h_j of element j, from a stream keyed (seed, key1); blocks are cached. */
typedef struct {
    uint64_t key[2];
    uint64_t block;   /* index of the cached block + 1; 0: none */
    uint64_t words[4];
} stream;

static uint32_t stream_half(stream *s, uint64_t j) {
    uint64_t word = j >> 1, b = word >> 2;
    if (s->block != b + 1) {
        uint64_t ctr[4];
        ctr[0] = b + 1; ctr[1] = 0; ctr[2] = 0; ctr[3] = 0;
        smask_philox4x64_10(ctr, s->key, s->words);
        s->block = b + 1;
    }
    return (uint32_t)(s->words[word & 3] >> (32 * (j & 1)));
}

/* The value of one element from its 32-bit word half h (and g, the auxiliary stream's, for
   normal inits); arg is b * 2^-24 for uniform, the scale otherwise. */
static float element(int dist, uint32_t h, uint32_t g, float arg) {
    if (dist == SMASK_DIST_UNIFORM) {
        /* s >> 8 as an arithmetic shift, written without relying on signed shifts */
        int32_t q = (h & 0x80000000u) ? -(int32_t)(((~h) >> 8) + 1) : (int32_t)(h >> 8);
        float t = (float)(2 * q + 1);
        float w = t * arg;
        return w;
    }
    if (dist == SMASK_DIST_SIGNED_CONSTANT) return (h & 0x80000000u) ? -arg : arg;
    if (dist == SMASK_DIST_NORMAL) {
        const double half_pi = 3.141592653589793 / 2.0;
        double u1 = ((double)(h & 0x7FFFFFFFu) + 1.0) * 4.656612873077393e-10; /* 2^-31 */
        double u2 = (double)g * 2.3283064365386963e-10;                       /* 2^-32 */
        double m = sqrt(-2.0 * log(u1)) * cos(half_pi * u2);
        m *= (double)arg;
        if (h & 0x80000000u) m = -m;
        return (float)m;
    }
    return 0.0f;
}

static uint64_t key_of(const char *name, size_t name_len, int aux) {
    smask_sha_ctx c;
    uint8_t d[32];
    uint64_t k = 0;
    int i;
    smask_sha_init(&c);
    smask_sha_update(&c, (const uint8_t *)"supermask:", 10);
    smask_sha_update(&c, (const uint8_t *)name, name_len);
    if (aux) smask_sha_update(&c, (const uint8_t *)"\0normal", 7);
    smask_sha_final(&c, d);
    for (i = 7; i >= 0; i--) k = (k << 8) | d[i];
    return k;
}

uint64_t smask_aux_key(const char *name, size_t len) { return key_of(name, len, 1); }

void smask_generate(uint64_t seed, const char *name, size_t name_len, int dist, float scale,
                    uint64_t start, float *dst, uint64_t n) {
    smask_generate_keyed(seed, key_of(name, name_len, 0), dist == SMASK_DIST_NORMAL ? key_of(name, name_len, 1) : 0,
                         dist, scale, start, dst, n);
}

void smask_generate_keyed(uint64_t seed, uint64_t key, uint64_t aux_key, int dist, float scale, uint64_t start,
                          float *dst, uint64_t n) {
    stream s, aux;
    uint64_t j = 0;
    float arg = dist == SMASK_DIST_UNIFORM ? scale * 5.9604644775390625e-08f : scale; /* b * 2^-24 is exact */
    int normal = dist == SMASK_DIST_NORMAL;
    s.key[0] = seed;
    s.key[1] = key;
    s.block = 0;
    aux.key[0] = seed;
    aux.key[1] = normal ? aux_key : 0;
    aux.block = 0;
    while (j < n) {
        uint64_t e = start + j;
        if ((e & 7) == 0 && n - j >= 8) {
            /* a whole block: eight elements from four words (and four auxiliary words) */
            uint64_t ctr[4], w[4], a[4];
            int k;
            ctr[0] = (e >> 3) + 1; ctr[1] = 0; ctr[2] = 0; ctr[3] = 0;
            smask_philox4x64_10(ctr, s.key, w);
            if (normal) smask_philox4x64_10(ctr, aux.key, a);
            else a[0] = a[1] = a[2] = a[3] = 0;
            for (k = 0; k < 8; k++)
                dst[j + (uint64_t)k] = element(dist, (uint32_t)(w[k >> 1] >> (32 * (k & 1))),
                                               (uint32_t)(a[k >> 1] >> (32 * (k & 1))), arg);
            j += 8;
        } else {
            dst[j] = element(dist, stream_half(&s, e), normal ? stream_half(&aux, e) : 0, arg);
            j++;
        }
    }
}

void smask_sign_bits(uint64_t seed, const char *name, size_t name_len, uint64_t start, uint8_t *bits, uint64_t n) {
    stream s;
    uint64_t j = 0;
    s.key[0] = seed;
    s.key[1] = smask_tensor_key(name, name_len);
    s.block = 0;
    memset(bits, 0, (size_t)((n + 7) / 8));
    while (j < n) {
        uint64_t e = start + j;
        if ((e & 7) == 0 && (j & 7) == 0 && n - j >= 8) {
            /* a whole block: eight sign bits from the four words' two halves */
            uint64_t ctr[4], w[4];
            uint8_t byte = 0;
            int k;
            ctr[0] = (e >> 3) + 1; ctr[1] = 0; ctr[2] = 0; ctr[3] = 0;
            smask_philox4x64_10(ctr, s.key, w);
            for (k = 0; k < 4; k++)
                byte |= (uint8_t)((((w[k] >> 31) & 1) << (2 * k)) | (((w[k] >> 63) & 1) << (2 * k + 1)));
            bits[j >> 3] = byte;
            j += 8;
        } else {
            if (stream_half(&s, e) >> 31) bits[j >> 3] |= (uint8_t)(1u << (j & 7));
            j++;
        }
    }
}
