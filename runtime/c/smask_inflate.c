/* Raw DEFLATE (RFC 1951) decoder with the preset dictionary of docs/format.md 7.4.
 *
 * Canonical Huffman codes are decoded one bit at a time from per-length counts; the rules
 * on code sets follow zlib's (over-subscribed sets are refused, incomplete ones too except a
 * single code of one bit for literal/length and distance codes, or no distance codes). */
#include <string.h>

#include "smask_int.h"

const char smask_dictionary[] =
    "supermask:tensorlocation.weight.biasrunning_meanrunning_varGemmReluConvBatchNormalizationFlatten"
    "MaxPoolGlobalAveragePoolAddMulSubDivReshapeConstantlogitsinput{\"classes\":[\"criterion\":\"large_final_same_sign\","
    "\"edge-popup\",\"bernoulli\",\"fingerprint\":\"init\":{\"gain_sq\":\"scheme\":\"kaiming_uniform\",\"signed_kaiming_constant\"},"
    "\"keep\":\"metadata\":{\"accuracy\":\"dataset\":\"method\":\"model\":\"test_examples\":},\"seed\":\"tensors\":[{\"codec\":\"entropy\","
    "\"kept\":\"length\":\"name\":\"role\":\"masked\"},{\"name\":\"role\":\"zero\"},{\"name\":\"role\":\"one\"},{\"name\":\"role\":\"stored\"},"
    "{\"codec\":\"bitpack\",\"kept\":";

typedef struct {
    const uint8_t *in;
    size_t in_len, pos;   /* next byte */
    uint32_t bitbuf;
    int bitcnt;
    uint8_t *out;         /* dictionary followed by the output */
    size_t out_pos, out_cap; /* out_cap: the buffer's size */
    size_t limit;            /* dictionary + cap */
    smask_pool *pool;
    int nomem;
} inf_state;

/* Make room for `need` more bytes: -3 past the cap, -4 out of memory. The buffer grows by
   doubling (old buffers stay in the pool until the parse ends). */
static int room(inf_state *s, size_t need) {
    size_t ncap;
    uint8_t *nb;
    if (need > s->limit - s->out_pos) return -3;
    if (s->out_pos + need <= s->out_cap) return 0;
    ncap = s->out_cap * 2;
    while (ncap < s->out_pos + need) ncap *= 2;
    if (ncap > s->limit) ncap = s->limit;
    nb = (uint8_t *)smask_pool_get(s->pool, ncap);
    if (!nb) { s->nomem = 1; return -4; }
    memcpy(nb, s->out, s->out_pos);
    smask_pool_drop(s->pool, s->out);
    s->out = nb;
    s->out_cap = ncap;
    return 0;
}

typedef struct {
    uint16_t count[16];
    uint16_t symbol[320];
} huff;

static int getbits(inf_state *s, int need, uint32_t *v) {
    uint32_t val = s->bitbuf;
    while (s->bitcnt < need) {
        if (s->pos >= s->in_len) {
            return -1;
        }
        val |= (uint32_t)s->in[s->pos++] << s->bitcnt;
        s->bitcnt += 8;
    }
    s->bitbuf = val >> need;
    s->bitcnt -= need;
    *v = need ? (val & ((1u << need) - 1)) : 0;
    return 0;
}

/* Build a code from lengths; returns 0 if complete, > 0 if incomplete, < 0 if over-subscribed.
 * *maxlen receives the longest length used. */
static int build(huff *h, const uint8_t *len, int n, int *maxlen) {
    uint16_t offs[16];
    int i, left = 1;
    memset(h->count, 0, sizeof h->count);
    for (i = 0; i < n; i++) h->count[len[i]]++;
    *maxlen = 0;
    for (i = 1; i < 16; i++)
        if (h->count[i]) *maxlen = i;
    if (h->count[0] == n) return 0; /* no codes */
    for (i = 1; i < 16; i++) {
        left <<= 1;
        left -= h->count[i];
        if (left < 0) return left;
    }
    offs[1] = 0;
    for (i = 1; i < 15; i++) offs[i + 1] = (uint16_t)(offs[i] + h->count[i]);
    for (i = 0; i < n; i++)
        if (len[i]) h->symbol[offs[len[i]]++] = (uint16_t)i;
    return left;
}

/* Decode one symbol; -1 on truncation, -2 on an unused code. */
static int decode(inf_state *s, const huff *h) {
    int code = 0, first = 0, index = 0, l;
    for (l = 1; l < 16; l++) {
        uint32_t b;
        int count;
        if (getbits(s, 1, &b)) return -1;
        code |= (int)b;
        count = h->count[l];
        if (code - count < first) return h->symbol[index + (code - first)];
        index += count;
        first += count;
        first <<= 1;
        code <<= 1;
    }
    return -2;
}

static const uint16_t len_base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                      35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                      3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t dist_base[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
                                       257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
                                       8193, 12289, 16385, 24577};
static const uint8_t dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                       7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

/* 0 ok; -1 truncated; -3 output cap; -2 invalid (message in *why) */
static int codes(inf_state *s, const huff *lc, const huff *dc, const char **why) {
    for (;;) {
        int sym = decode(s, lc);
        if (sym == -1) return -1;
        if (sym < 0) { *why = "invalid literal/length code"; return -2; }
        if (sym < 256) {
            int r = room(s, 1);
            if (r) return r;
            s->out[s->out_pos++] = (uint8_t)sym;
        } else if (sym == 256) {
            return 0;
        } else {
            uint32_t e;
            size_t length, dist, i;
            int ds;
            sym -= 257;
            if (sym >= 29) { *why = "invalid literal/length code"; return -2; }
            if (getbits(s, len_extra[sym], &e)) return -1;
            length = len_base[sym] + e;
            ds = decode(s, dc);
            if (ds == -1) return -1;
            if (ds < 0 || ds >= 30) { *why = "invalid distance code"; return -2; }
            if (getbits(s, dist_extra[ds], &e)) return -1;
            dist = dist_base[ds] + e;
            if (dist > s->out_pos || dist > 32768) { *why = "invalid distance too far back"; return -2; }
            for (i = 0; i < length; i++) {
                if (s->out_pos >= s->out_cap) {
                    int r = room(s, length - i);
                    if (r == -3) r = room(s, 1); /* copy up to the cap, as zlib does */
                    if (r) return r;
                }
                s->out[s->out_pos] = s->out[s->out_pos - dist];
                s->out_pos++;
            }
        }
    }
}

static int fixed_tables(huff *lc, huff *dc) {
    uint8_t l[320];
    int i, m;
    for (i = 0; i < 144; i++) l[i] = 8;
    for (; i < 256; i++) l[i] = 9;
    for (; i < 280; i++) l[i] = 7;
    for (; i < 288; i++) l[i] = 8;
    build(lc, l, 288, &m);
    for (i = 0; i < 30; i++) l[i] = 5;
    build(dc, l, 30, &m);
    return 0;
}

static int dynamic_tables(inf_state *s, huff *lc, huff *dc, const char **why) {
    static const uint8_t order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t lengths[320];
    uint32_t v;
    int nlen, ndist, ncode, i, err, m;
    huff cl;
    if (getbits(s, 5, &v)) return -1;
    nlen = (int)v + 257;
    if (getbits(s, 5, &v)) return -1;
    ndist = (int)v + 1;
    if (getbits(s, 4, &v)) return -1;
    ncode = (int)v + 4;
    if (nlen > 286 || ndist > 30) { *why = "too many length or distance symbols"; return -2; }
    memset(lengths, 0, sizeof lengths);
    for (i = 0; i < ncode; i++) {
        if (getbits(s, 3, &v)) return -1;
        lengths[order[i]] = (uint8_t)v;
    }
    err = build(&cl, lengths, 19, &m);
    if (err != 0 && m != 0) { *why = "invalid code lengths set"; return -2; }
    i = 0;
    while (i < nlen + ndist) {
        int sym, rep;
        uint8_t val = 0;
        if (m == 0) {
            /* no code-length codes at all: every length reads as 0, one bit each */
            if (getbits(s, 1, &v)) return -1;
            lengths[i++] = 0;
            continue;
        }
        sym = decode(s, &cl);
        if (sym == -1) return -1;
        if (sym < 0) { *why = "invalid code lengths set"; return -2; }
        if (sym < 16) {
            lengths[i++] = (uint8_t)sym;
            continue;
        }
        if (sym == 16) {
            if (i == 0) { *why = "invalid bit length repeat"; return -2; }
            val = lengths[i - 1];
            if (getbits(s, 2, &v)) return -1;
            rep = 3 + (int)v;
        } else if (sym == 17) {
            if (getbits(s, 3, &v)) return -1;
            rep = 3 + (int)v;
        } else {
            if (getbits(s, 7, &v)) return -1;
            rep = 11 + (int)v;
        }
        if (i + rep > nlen + ndist) { *why = "invalid bit length repeat"; return -2; }
        while (rep--) lengths[i++] = val;
    }
    if (lengths[256] == 0) { *why = "invalid code -- missing end-of-block"; return -2; }
    err = build(lc, lengths, nlen, &m);
    if (err < 0 || (err > 0 && m != 1)) { *why = "invalid literal/lengths set"; return -2; }
    err = build(dc, lengths + nlen, ndist, &m);
    if (err < 0 || (err > 0 && m != 1)) { *why = "invalid distances set"; return -2; }
    return 0;
}

int smask_inflate(const uint8_t *in, size_t in_len, size_t cap, smask_pool *pool,
                  uint8_t **out, size_t *out_len, smask_error *err) {
    inf_state s;
    huff lc, dc;
    int last = 0, rc = 0;
    const char *why = "invalid data";
    memset(&s, 0, sizeof s);
    s.in = in;
    s.in_len = in_len;
    s.limit = SMASK_DICT_LEN + cap;
    s.pool = pool;
    s.out_cap = SMASK_DICT_LEN + (in_len < 16384 ? 65536 : 4 * in_len);
    if (s.out_cap > s.limit) s.out_cap = s.limit;
    s.out = (uint8_t *)smask_pool_get(pool, s.out_cap);
    if (!s.out) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory inflating the header section");
    memcpy(s.out, smask_dictionary, SMASK_DICT_LEN);
    s.out_pos = SMASK_DICT_LEN;
    while (!last) {
        uint32_t v;
        if (getbits(&s, 1, &v)) { rc = -1; break; }
        last = (int)v;
        if (getbits(&s, 2, &v)) { rc = -1; break; }
        if (v == 0) {
            size_t n;
            s.bitbuf = 0;
            s.bitcnt = 0; /* drop to a byte boundary */
            if (s.pos + 4 > s.in_len) { rc = -1; break; }
            n = (size_t)s.in[s.pos] | ((size_t)s.in[s.pos + 1] << 8);
            if ((n ^ 0xffffu) != ((size_t)s.in[s.pos + 2] | ((size_t)s.in[s.pos + 3] << 8))) {
                why = "invalid stored block lengths";
                rc = -2;
                break;
            }
            s.pos += 4;
            if (n > s.in_len - s.pos) {
                /* what there is would be copied first: the cap, else truncation */
                size_t have = s.in_len - s.pos;
                if (have > s.limit - s.out_pos) { rc = -3; break; }
                rc = -1;
                break;
            }
            rc = room(&s, n);
            if (rc) break;
            memcpy(s.out + s.out_pos, s.in + s.pos, n);
            s.out_pos += n;
            s.pos += n;
        } else if (v == 1) {
            fixed_tables(&lc, &dc);
            rc = codes(&s, &lc, &dc, &why);
        } else if (v == 2) {
            rc = dynamic_tables(&s, &lc, &dc, &why);
            if (rc == 0) rc = codes(&s, &lc, &dc, &why);
        } else {
            why = "invalid block type";
            rc = -2;
        }
        if (rc) break;
    }
    if (rc == -4) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory inflating the header section");
    if (rc == -3)
        return smask_fail(err, SMASK_ERR_FORMAT, "the header section decompresses to more than %lu bytes",
                          (unsigned long)cap);
    if (rc == -2)
        return smask_fail(err, SMASK_ERR_FORMAT, "the header section is not valid DEFLATE data (%s)", why);
    if (rc == -1)
        return smask_fail(err, SMASK_ERR_FORMAT,
                          "the header section is truncated (its DEFLATE stream does not end)");
    if (s.pos != s.in_len)
        return smask_fail(err, SMASK_ERR_FORMAT, "the header section has %lu bytes after its DEFLATE stream",
                          (unsigned long)(s.in_len - s.pos));
    *out = s.out + SMASK_DICT_LEN;
    *out_len = s.out_pos - SMASK_DICT_LEN;
    return SMASK_OK;
}
