/* A strict JSON parser (RFC 8259) for ticket headers, with the reference reader's rules: UTF-8
 * only, no duplicate keys (compared after unescaping), no NaN or Infinity, integers of at most
 * 4300 digits, nesting at most 512 deep. Strings are unescaped into one buffer; lone UTF-16
 * surrogates from \u escapes are kept as 3-byte sequences so that code points stay distinct. */
#include <stdlib.h>
#include <string.h>

#include "smask_json.h"

typedef struct {
    const uint8_t *s;
    size_t n, pos;
    smask_pool *pool;
    smask_error *err;
    jdoc *doc;
    size_t cap;
    void *keys;           /* scratch for duplicate detection, reused by every object */
    size_t keycap;
} jparser;

static int jfail(jparser *p, const char *what) {
    return smask_fail(p->err, SMASK_ERR_FORMAT, "header is not valid UTF-8 JSON: %s at byte %lu", what,
                      (unsigned long)p->pos);
}

int smask_utf8_valid(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            uint8_t lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (i + 2 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80) return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            uint8_t lo = 0x80, hi = 0xBF;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            if (i + 3 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80 ||
                (p[i + 3] & 0xC0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int new_node(jparser *p, uint32_t *idx) {
    jdoc *d = p->doc;
    if (d->count == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        jnode *nn;
        if (ncap > 0xFFFFFFF0u / sizeof(jnode)) ncap = 0xFFFFFFF0u / sizeof(jnode);
        if (ncap <= d->count) return smask_fail(p->err, SMASK_ERR_NOMEM, "header has too many values");
        nn = (jnode *)smask_pool_get(p->pool, ncap * sizeof(jnode));
        if (!nn) return smask_fail(p->err, SMASK_ERR_NOMEM, "out of memory parsing the header");
        if (d->count) memcpy(nn, d->nodes, d->count * sizeof(jnode));
        smask_pool_drop(p->pool, d->nodes);
        d->nodes = nn;
        p->cap = ncap;
    }
    *idx = (uint32_t)d->count++;
    memset(&d->nodes[*idx], 0, sizeof(jnode));
    return 0;
}

static void skip_ws(jparser *p) {
    while (p->pos < p->n) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int hex4(jparser *p, uint32_t *v) {
    int i;
    *v = 0;
    if (p->pos + 4 > p->n) return jfail(p, "truncated \\u escape");
    for (i = 0; i < 4; i++) {
        uint8_t c = p->s[p->pos + i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 :
                (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return jfail(p, "invalid \\u escape");
        *v = (*v << 4) | (uint32_t)d;
    }
    p->pos += 4;
    return 0;
}

static void put_cp(jdoc *d, uint32_t cp) {
    uint8_t *o = d->strbuf + d->strlen;
    if (cp < 0x80) { o[0] = (uint8_t)cp; d->strlen += 1; }
    else if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); d->strlen += 2; }
    else if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12)); o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F)); d->strlen += 3;
    } else {
        o[0] = (uint8_t)(0xF0 | (cp >> 18)); o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (uint8_t)(0x80 | (cp & 0x3F)); d->strlen += 4;
    }
}

/* Parse a string at p->pos (at the opening quote); output offset/length/code points. */
static int parse_string(jparser *p, uint32_t *off, uint32_t *len, uint32_t *cps) {
    jdoc *d = p->doc;
    uint32_t count = 0;
    *off = (uint32_t)d->strlen;
    p->pos++; /* opening quote */
    for (;;) {
        uint8_t c;
        if (p->pos >= p->n) return jfail(p, "unterminated string");
        c = p->s[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) return jfail(p, "control character in string");
        if (c == '\\') {
            uint8_t e;
            if (p->pos + 1 >= p->n) return jfail(p, "unterminated string");
            e = p->s[p->pos + 1];
            p->pos += 2;
            switch (e) {
            case '"': put_cp(d, '"'); break;
            case '\\': put_cp(d, '\\'); break;
            case '/': put_cp(d, '/'); break;
            case 'b': put_cp(d, 8); break;
            case 'f': put_cp(d, 12); break;
            case 'n': put_cp(d, 10); break;
            case 'r': put_cp(d, 13); break;
            case 't': put_cp(d, 9); break;
            case 'u': {
                uint32_t v, lo;
                if (hex4(p, &v)) return -1;
                if (v >= 0xD800 && v <= 0xDBFF && p->pos + 6 <= p->n && p->s[p->pos] == '\\' &&
                    p->s[p->pos + 1] == 'u') {
                    size_t save = p->pos;
                    p->pos += 2;
                    if (hex4(p, &lo)) return -1;
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                    } else {
                        p->pos = save; /* a lone high surrogate; the next escape stands alone */
                    }
                }
                put_cp(d, v);
                break;
            }
            default:
                return jfail(p, "invalid escape");
            }
            count++;
            continue;
        }
        /* raw UTF-8 (already validated): copy one code point */
        {
            size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            memcpy(d->strbuf + d->strlen, p->s + p->pos, k);
            d->strlen += k;
            p->pos += k;
            count++;
        }
    }
    *len = (uint32_t)(d->strlen - *off);
    *cps = count;
    return 0;
}

static int parse_number(jparser *p, jnode *nd) {
    size_t start = p->pos, digits = 0;
    int isint = 1;
    uint64_t mag = 0;
    int fits = 1;
    if (p->s[p->pos] == '-') { nd->neg = 1; p->pos++; }
    if (p->pos >= p->n) return jfail(p, "bad number");
    if (p->s[p->pos] == '0') {
        p->pos++;
        digits = 1;
    } else if (p->s[p->pos] >= '1' && p->s[p->pos] <= '9') {
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            unsigned dgt = (unsigned)(p->s[p->pos] - '0');
            if (mag > (UINT64_MAX - dgt) / 10) fits = 0;
            else mag = mag * 10 + dgt;
            p->pos++;
            digits++;
        }
    } else {
        return jfail(p, "bad value");
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        size_t f = 0;
        p->pos++;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') { p->pos++; f++; }
        if (!f) return jfail(p, "bad number");
        isint = 0;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        size_t f = 0;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') { p->pos++; f++; }
        if (!f) return jfail(p, "bad number");
        isint = 0;
    }
    if (isint && digits > 4300) return jfail(p, "integer of more than 4300 digits");
    nd->type = J_NUM;
    nd->isint = (uint8_t)isint;
    nd->fits = (uint8_t)(isint && fits);
    nd->mag = isint && fits ? mag : 0;
    nd->off = (uint32_t)start;
    nd->len = (uint32_t)(p->pos - start);
    return 0;
}

typedef struct { const uint8_t *p; uint32_t n; } kref;

static int cmp_kref(const void *a, const void *b) {
    const kref *x = (const kref *)a, *y = (const kref *)b;
    uint32_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static int parse_value(jparser *p, uint32_t *out, int depth) {
    uint32_t idx = 0;
    uint8_t c;
    skip_ws(p);
    if (p->pos >= p->n) return jfail(p, "expecting a value");
    if (depth > 512) return jfail(p, "nested too deeply");
    if (new_node(p, &idx)) return -1;
    *out = idx;
    c = p->s[p->pos];
    if (c == '{' || c == '[') {
        int obj = c == '{';
        uint32_t last = 0, count = 0;
        p->doc->nodes[idx].type = obj ? J_OBJ : J_ARR;
        p->pos++;
        skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == (obj ? '}' : ']')) {
            p->pos++;
            return 0;
        }
        for (;;) {
            uint32_t child, koff = 0, klen = 0, kcps = 0;
            skip_ws(p);
            if (obj) {
                if (p->pos >= p->n || p->s[p->pos] != '"') return jfail(p, "expecting a property name");
                if (parse_string(p, &koff, &klen, &kcps)) return -1;
                skip_ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':') return jfail(p, "expecting ':'");
                p->pos++;
            }
            if (parse_value(p, &child, depth + 1)) return -1;
            {
                jnode *ch = &p->doc->nodes[child];
                ch->key_off = koff;
                ch->key_len = klen;
                ch->key_cps = kcps;
            }
            if (count == 0) p->doc->nodes[idx].child = child + 1;
            else p->doc->nodes[last].next = child + 1;
            last = child;
            count++;
            skip_ws(p);
            if (p->pos >= p->n) return jfail(p, "unterminated container");
            if (p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->s[p->pos] == (obj ? '}' : ']')) { p->pos++; break; }
            return jfail(p, "expecting ',' or a closing bracket");
        }
        p->doc->nodes[idx].count = count;
        if (obj && count > 1) {
            /* duplicate keys: sort the keys and compare neighbours */
            kref *keys;
            uint32_t i, ch;
            if (count > p->keycap) {
                smask_pool_drop(p->pool, p->keys);
                p->keys = smask_pool_get(p->pool, (size_t)count * 2 * sizeof(kref));
                p->keycap = p->keys ? (size_t)count * 2 : 0;
                if (!p->keys) return smask_fail(p->err, SMASK_ERR_NOMEM, "out of memory parsing the header");
            }
            keys = (kref *)p->keys;
            for (i = 0, ch = p->doc->nodes[idx].child; ch; ch = p->doc->nodes[ch - 1].next, i++) {
                keys[i].p = p->doc->strbuf + p->doc->nodes[ch - 1].key_off;
                keys[i].n = p->doc->nodes[ch - 1].key_len;
            }
            qsort(keys, count, sizeof(kref), cmp_kref);
            for (i = 1; i < count; i++)
                if (cmp_kref(&keys[i - 1], &keys[i]) == 0)
                    return smask_fail(p->err, SMASK_ERR_FORMAT, "header has a duplicate key");
        }
        return 0;
    }
    if (c == '"') {
        jnode *nd;
        uint32_t off, len, cps;
        if (parse_string(p, &off, &len, &cps)) return -1;
        nd = &p->doc->nodes[idx];
        nd->type = J_STR;
        nd->off = off;
        nd->len = len;
        nd->cps = cps;
        return 0;
    }
    if (c == 't' && p->n - p->pos >= 4 && memcmp(p->s + p->pos, "true", 4) == 0) {
        p->doc->nodes[idx].type = J_TRUE;
        p->pos += 4;
        return 0;
    }
    if (c == 'f' && p->n - p->pos >= 5 && memcmp(p->s + p->pos, "false", 5) == 0) {
        p->doc->nodes[idx].type = J_FALSE;
        p->pos += 5;
        return 0;
    }
    if (c == 'n' && p->n - p->pos >= 4 && memcmp(p->s + p->pos, "null", 4) == 0) {
        p->doc->nodes[idx].type = J_NULL;
        p->pos += 4;
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, &p->doc->nodes[idx]);
    return jfail(p, "expecting a value");
}

int smask_json_parse(const uint8_t *s, size_t n, smask_pool *pool, jdoc *doc, smask_error *err) {
    jparser p;
    uint32_t root;
    memset(&p, 0, sizeof p);
    memset(doc, 0, sizeof *doc);
    p.s = s;
    p.n = n;
    p.pool = pool;
    p.err = err;
    p.doc = doc;
    doc->src = s;
    doc->pool = pool;
    if (!smask_utf8_valid(s, n))
        return smask_fail(err, SMASK_ERR_FORMAT, "header is not valid UTF-8 JSON: invalid UTF-8");
    doc->strbuf = (uint8_t *)smask_pool_get(pool, n + 1);
    if (!doc->strbuf) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory parsing the header");
    {
        /* an upper bound of the number of values, so the node array is allocated once: every
           value but the first follows a ',' '[' or ':' outside strings */
        size_t i, bound = 1;
        int in_str = 0;
        for (i = 0; i < n; i++) {
            uint8_t c = s[i];
            if (in_str) {
                if (c == '\\') i++;
                else if (c == '"') in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == ',' || c == '[' || c == ':') {
                bound++;
            }
        }
        if (bound > 0xFFFFFFF0u / sizeof(jnode)) bound = 0xFFFFFFF0u / sizeof(jnode);
        doc->nodes = (jnode *)smask_pool_get(pool, bound * sizeof(jnode));
        if (!doc->nodes) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory parsing the header");
        p.cap = bound;
    }
    if (parse_value(&p, &root, 0)) return err ? err->code : SMASK_ERR_FORMAT;
    skip_ws(&p);
    if (p.pos != n) return jfail(&p, "extra data");
    doc->root = root;
    return 0;
}

/* ---- queries ---- */

int smask_json_get(const jdoc *d, uint32_t obj, const char *key) {
    const jnode *o = &d->nodes[obj];
    uint32_t ch;
    size_t kl = strlen(key);
    if (o->type != J_OBJ) return -1;
    for (ch = o->child; ch; ch = d->nodes[ch - 1].next) {
        const jnode *c = &d->nodes[ch - 1];
        if (c->key_len == kl && memcmp(d->strbuf + c->key_off, key, kl) == 0) return (int)(ch - 1);
    }
    return -1;
}

int smask_json_has_exactly(const jdoc *d, uint32_t obj, const char *const *keys) {
    size_t n = 0;
    if (d->nodes[obj].type != J_OBJ) return 0;
    for (; keys[n]; n++)
        if (smask_json_get(d, obj, keys[n]) < 0) return 0;
    return d->nodes[obj].count == n;
}

int smask_json_str_eq(const jdoc *d, uint32_t i, const char *lit) {
    const jnode *nd = &d->nodes[i];
    size_t n = strlen(lit);
    return nd->type == J_STR && nd->len == n && memcmp(d->strbuf + nd->off, lit, n) == 0;
}

double smask_json_double(const jdoc *d, uint32_t i) {
    const jnode *nd = &d->nodes[i];
    char buf[512];
    if (nd->type != J_NUM) return 0.0;
    if (nd->len < sizeof buf) {
        memcpy(buf, d->src + nd->off, nd->len);
        buf[nd->len] = 0;
        return strtod(buf, NULL);
    } else {
        /* a long literal: converted from a copy in the pool (kept until the parse ends) */
        char *big = (char *)smask_pool_get(d->pool, (size_t)nd->len + 1);
        if (!big) return 0.0;
        memcpy(big, d->src + nd->off, nd->len);
        big[nd->len] = 0;
        return strtod(big, NULL);
    }
}

