/* smask-c: command-line front end of the C ticket reader.
 *
 *   smask-c info TICKET            tensor table
 *   smask-c weights TICKET OUT     all weights, float32 little-endian, table order
 *   smask-c digest TICKET          "name sha256" of each tensor's float32 little-endian bytes
 *   smask-c verify TICKET          parse and check the fingerprints
 *   smask-c check FILE...          parse + verify each file; one verdict line per file
 *   smask-c run TICKET INPUT       logits of a ticket on float32 inputs (N x input size,
 *                                  little-endian), one row per line, weights made as they are used
 *   smask-c bench [N]              generator and SHA-256 throughput on N elements (default 2^24)
 *   smask-c bench TICKET [RUNS]    streaming inference, batch 1: memory (parse peak, parsed ticket,
 *                                  scratch) and the median time of RUNS inferences, one JSON line
 *   smask-c fuzz [--dump DIR] SEED N TICKET...  N mutations of the tickets' headers, graphs and payloads,
 *                                  re-signed (version 3: re-deflated as stored blocks), each
 *                                  parsed, verified and (small networks) run; counts by verdict
 *                                  (--dump: also every case as DIR/caseNNNNNN and its verdict)
 *   smask-c selftest               known-answer tests of SHA-256, Philox and the codecs
 *
 * Options before the command: --max-weights N, --max-memory BYTES.
 * Exit status: 0 ok, 1 bad ticket, 2 usage or I/O error, 3 (run) a version-3 graph outside the
 * streaming vocabulary. */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 199309L /* clock_gettime, for the timings of `bench TICKET` */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smask.h"
#include "smask_int.h" /* the fuzz mode re-inflates version-3 sections */

static void *cli_alloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static void cli_free(void *ctx, void *p) { (void)ctx; free(p); }

static const char *code_name(int c) {
    switch (c) {
    case SMASK_OK: return "ok";
    case SMASK_ERR_FORMAT: return "format";
    case SMASK_ERR_CHECKSUM: return "checksum";
    case SMASK_ERR_VERSION: return "version";
    case SMASK_ERR_LIMIT: return "limit";
    case SMASK_ERR_VERIFY: return "verify";
    case SMASK_ERR_NOMEM: return "nomem";
    case SMASK_ERR_UNSUPPORTED: return "unsupported";
    default: return "argument";
    }
}

/* at most 2^34 bytes, and never more than size_t can count */
#define READ_MAX ((uint64_t)SIZE_MAX < (UINT64_C(1) << 34) ? (size_t)SIZE_MAX : (size_t)(UINT64_C(1) << 34))

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) return NULL;
    for (;;) {
        size_t got;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            uint8_t *nb;
            if (cap > READ_MAX / 2) { free(buf); fclose(f); return NULL; }
            nb = (uint8_t *)realloc(buf, ncap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
            cap = ncap;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { free(buf); fclose(f); return NULL; }
    fclose(f);
    *len = n;
    if (!buf) buf = (uint8_t *)malloc(1);
    return buf;
}

static void print_name(FILE *o, const smask_ticket *t, size_t i) {
    size_t n;
    const char *s = smask_tensor_name(t, i, &n);
    fwrite(s, 1, n, o);
}

/* malloc for n floats, NULL when n does not fit this machine's size_t */
static float *alloc_floats(uint64_t n) {
    if (n > (uint64_t)(SIZE_MAX / sizeof(float)) - 1) return NULL;
    return (float *)malloc(n ? (size_t)n * sizeof(float) : 1);
}

/* run a small network (at most 2^24 multiply-adds) once on a zero input; 0 or an error code */
static int run_small_once(const smask_ticket *t, smask_error *err) {
    uint64_t ns;
    float *in, *lg, *sc;
    int rc = 0;
    if (!smask_input_size(t) || smask_run_cost(t) > (UINT64_C(1) << 24)) return 0;
    ns = smask_run_scratch(t, 1);
    in = alloc_floats(smask_input_size(t));
    lg = alloc_floats(smask_num_classes(t));
    sc = alloc_floats(ns);
    if (in && lg && sc) {
        memset(in, 0, (size_t)smask_input_size(t) * sizeof(float));
        rc = smask_run(t, in, 1, lg, sc, ns, err);
    }
    free(in); free(lg); free(sc);
    return rc;
}

static int weights_of(const smask_ticket *t, size_t i, float **out, smask_error *err) {
    uint64_t n = smask_tensor_size(t, i);
    float *w = alloc_floats(n);
    if (!w) { fprintf(stderr, "smask-c: out of memory for %llu weights\n", (unsigned long long)n); return SMASK_ERR_NOMEM; }
    if (smask_tensor_weights(t, i, w, n, err)) { free(w); return err->code; }
    *out = w;
    return 0;
}

static void le_bytes(const float *w, uint64_t n, uint8_t *b) {
    uint64_t j;
    for (j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &w[j], 4);
        b[4 * j] = (uint8_t)u; b[4 * j + 1] = (uint8_t)(u >> 8); b[4 * j + 2] = (uint8_t)(u >> 16); b[4 * j + 3] = (uint8_t)(u >> 24);
    }
}

static int cmd_info(const smask_ticket *t) {
    size_t i, k;
    printf("version %d\nseed %llu\ntensors %lu\n", smask_version(t), (unsigned long long)smask_seed(t),
           (unsigned long)smask_tensor_count(t));
    for (i = 0; i < smask_tensor_count(t); i++) {
        const char *codec = smask_tensor_codec(t, i);
        print_name(stdout, t, i);
        printf(" role=%s shape=", smask_role_name(smask_tensor_role(t, i)));
        for (k = 0; k < smask_tensor_ndim(t, i); k++)
            printf("%s%llu", k ? "x" : "", (unsigned long long)smask_tensor_dims(t, i)[k]);
        if (smask_tensor_ndim(t, i) == 0) printf("scalar");
        printf(" size=%llu kept=%llu", (unsigned long long)smask_tensor_size(t, i), (unsigned long long)smask_tensor_kept(t, i));
        if (codec) printf(" codec=%s bytes=%llu", codec, (unsigned long long)smask_tensor_payload_bytes(t, i));
        if (smask_tensor_distribution(t, i)) printf(" scale=%a", (double)smask_tensor_scale(t, i));
        if (smask_tensor_multiplier(t, i) != 1.0f) printf(" multiplier=%a", (double)smask_tensor_multiplier(t, i));
        printf("\n");
    }
    return 0;
}

static int cmd_digest(const smask_ticket *t, smask_error *err) {
    size_t i;
    for (i = 0; i < smask_tensor_count(t); i++) {
        float *w;
        uint64_t n = smask_tensor_size(t, i);
        uint8_t *b, d[32];
        int k;
        if (weights_of(t, i, &w, err)) return 1;
        b = (uint8_t *)alloc_floats(n);
        if (!b) { free(w); return 1; }
        le_bytes(w, n, b);
        smask_sha256(b, (size_t)n * 4, d);
        print_name(stdout, t, i);
        printf(" ");
        for (k = 0; k < 32; k++) printf("%02x", d[k]);
        printf("\n");
        free(w);
        free(b);
    }
    return 0;
}

static int cmd_weights(const smask_ticket *t, const char *path, smask_error *err) {
    FILE *o = fopen(path, "wb");
    size_t i;
    if (!o) { fprintf(stderr, "smask-c: cannot write %s\n", path); return 2; }
    for (i = 0; i < smask_tensor_count(t); i++) {
        float *w;
        uint64_t n = smask_tensor_size(t, i);
        uint8_t *b;
        if (weights_of(t, i, &w, err)) { fclose(o); return 1; }
        b = (uint8_t *)alloc_floats(n);
        if (!b) { free(w); fclose(o); return 1; }
        le_bytes(w, n, b);
        if (fwrite(b, 1, (size_t)n * 4, o) != (size_t)n * 4) { free(w); free(b); fclose(o); return 2; }
        free(w);
        free(b);
    }
    if (fclose(o)) return 2;
    return 0;
}

static int cmd_run(const smask_ticket *t, const char *path, smask_error *err) {
    size_t len, k;
    uint8_t *raw = read_file(path, &len);
    uint64_t per = smask_input_size(t), batch, j, scratch_n, classes = smask_num_classes(t);
    float *in, *logits, *scratch;
    int rc;
    if (!per) { /* a version-3 graph outside the streaming vocabulary: smask_run says why */
        rc = smask_run(t, NULL, 0, NULL, NULL, 0, err);
        fprintf(stderr, "smask-c: %s\n", rc ? err->message : "nothing to run");
        free(raw);
        return rc == SMASK_ERR_UNSUPPORTED ? 3 : 1;
    }
    if (!raw) { fprintf(stderr, "smask-c: cannot read %s\n", path); return 2; }
    if (len == 0 || len % (4 * per)) {
        fprintf(stderr, "smask-c: %s holds %lu bytes, not a whole number of inputs of %llu float32 values\n", path,
                (unsigned long)len, (unsigned long long)per);
        free(raw);
        return 2;
    }
    batch = len / (4 * per);
    in = alloc_floats(len / 4);
    logits = alloc_floats(batch * classes);
    scratch_n = smask_run_scratch(t, batch);
    scratch = alloc_floats(scratch_n);
    if (!in || !logits || !scratch) { free(raw); free(in); free(logits); free(scratch); return 2; }
    for (k = 0; k < len / 4; k++) {
        uint32_t u = (uint32_t)raw[4 * k] | ((uint32_t)raw[4 * k + 1] << 8) | ((uint32_t)raw[4 * k + 2] << 16) |
                     ((uint32_t)raw[4 * k + 3] << 24);
        memcpy(&in[k], &u, 4);
    }
    rc = smask_run(t, in, batch, logits, scratch, scratch_n, err);
    if (!rc)
        for (j = 0; j < batch; j++) {
            for (k = 0; k < classes; k++) printf("%s%a", k ? " " : "", (double)logits[j * classes + k]);
            printf("\n");
        }
    else
        fprintf(stderr, "smask-c: %s\n", err->message);
    free(raw); free(in); free(logits); free(scratch);
    return rc ? 1 : 0;
}

static double seconds(clock_t a, clock_t b) { return (double)(b - a) / CLOCKS_PER_SEC; }

static int bench(uint64_t n) {
    static const char *const names[] = {"", "uniform", "normal", "signed_constant"};
    float *buf = alloc_floats(n);
    uint8_t d[32];
    int dist;
    clock_t a, b;
    double sum = 0;
    uint64_t j;
    if (!buf) return 2;
    for (dist = 1; dist <= 3; dist++) {
        a = clock();
        smask_generate(7, "fc1.weight", 10, dist, 0.05f, 0, buf, n);
        b = clock();
        for (j = 0; j < n; j += 4099) sum += buf[j];
        printf("generate %-15s %12.1f M elements/s\n", names[dist], (double)n / seconds(a, b) / 1e6);
    }
    a = clock();
    smask_sha256((const uint8_t *)buf, (size_t)n * 4, d);
    b = clock();
    printf("sha256                   %12.1f MB/s\n", (double)n * 4 / seconds(a, b) / 1e6);
    printf("(checksum %g %02x)\n", sum, d[0]);
    free(buf);
    return 0;
}

/* ---- bench TICKET: memory and time of streaming inference, batch 1 ---- */

typedef struct { uint64_t now, peak, blocks; } counting;

static void *count_alloc(void *ctx, size_t n) {
    counting *c = (counting *)ctx;
    unsigned char *p;
    if (n > SIZE_MAX - 16) return NULL;
    p = (unsigned char *)malloc(n + 16);
    if (!p) return NULL;
    memcpy(p, &n, sizeof n);
    c->now += n;
    c->blocks++;
    if (c->now > c->peak) c->peak = c->now;
    return p + 16;
}
static void count_free(void *ctx, void *q) {
    counting *c = (counting *)ctx;
    unsigned char *p = (unsigned char *)q - 16;
    size_t n;
    memcpy(&n, p, sizeof n);
    c->now -= n;
    c->blocks--;
    free(p);
}

static double now_s(void) {
#if defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 199309L
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One JSON line: ticket bytes; the allocator's peak during smask_parse and what the parsed
   ticket keeps (bytes asked for, without the allocator's own overhead); the scratch of batch 1;
   the median, minimum and mean wall time of `runs` inferences of one input (after one warm-up). */
static int bench_ticket(const char *path, uint64_t runs, const smask_options *base) {
    size_t len;
    uint8_t *buf = read_file(path, &len);
    smask_options o = *base;
    counting c = {0, 0, 0};
    smask_ticket *t = NULL;
    smask_error err;
    uint64_t held, held_blocks, ns, per, k, classes;
    float *in, *lg, *sc;
    double *times, sum = 0;
    if (!buf) { fprintf(stderr, "smask-c: cannot read %s\n", path); return 2; }
    if (runs < 1) runs = 1;
    o.alloc = count_alloc;
    o.free = count_free;
    o.ctx = &c;
    if (smask_parse(buf, len, &o, &t, &err) || smask_verify(t, &err)) {
        fprintf(stderr, "smask-c: %s: %s\n", path, err.message);
        smask_free(t);
        free(buf);
        return 1;
    }
    held = c.now;
    held_blocks = c.blocks;
    per = smask_input_size(t);
    classes = smask_num_classes(t);
    if (!per) {
        smask_run(t, NULL, 0, NULL, NULL, 0, &err);
        fprintf(stderr, "smask-c: %s\n", err.message);
        smask_free(t);
        free(buf);
        return 3;
    }
    ns = smask_run_scratch(t, 1);
    in = alloc_floats(per);
    lg = alloc_floats(classes);
    sc = alloc_floats(ns);
    times = (double *)malloc((size_t)runs * sizeof(double));
    if (!in || !lg || !sc || !times) { free(in); free(lg); free(sc); free(times); smask_free(t); free(buf); return 2; }
    for (k = 0; k < per; k++) in[k] = (float)((k * 37) % 256);
    if (smask_run(t, in, 1, lg, sc, ns, &err)) { fprintf(stderr, "smask-c: %s\n", err.message); return 1; }
    for (k = 0; k < runs; k++) {
        double a = now_s();
        smask_run(t, in, 1, lg, sc, ns, &err);
        times[k] = now_s() - a;
        sum += times[k];
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    printf("{\"ticket_bytes\": %lu, \"parse_peak_bytes\": %llu, \"ticket_struct_bytes\": %llu, \"ticket_struct_blocks\": %llu, "
           "\"scratch_floats\": %llu, \"scratch_bytes\": %llu, \"multiply_adds\": %llu, \"runs\": %llu, "
           "\"median_us\": %.3f, \"min_us\": %.3f, \"mean_us\": %.3f, \"logit0\": \"%a\"}\n",
           (unsigned long)len, (unsigned long long)c.peak, (unsigned long long)held, (unsigned long long)held_blocks,
           (unsigned long long)ns, (unsigned long long)(4 * ns), (unsigned long long)smask_run_cost(t),
           (unsigned long long)runs, 1e6 * times[runs / 2], 1e6 * times[0], 1e6 * sum / (double)runs, (double)lg[0]);
    free(in); free(lg); free(sc); free(times);
    smask_free(t);
    free(buf);
    return 0;
}

/* ---- the fuzz mode: a small deterministic mutator (xorshift64*) ---- */

static uint64_t fz_state;
static uint64_t fz_next(void) {
    fz_state ^= fz_state >> 12;
    fz_state ^= fz_state << 25;
    fz_state ^= fz_state >> 27;
    return fz_state * UINT64_C(2685821657736338717);
}
static size_t fz_below(size_t n) { return n ? (size_t)(fz_next() % n) : 0; }

/* Mutate buf[lo, hi) in place (length may change); returns the new length of the whole buffer. */
static size_t fz_mutate(uint8_t *buf, size_t len, size_t cap, size_t lo, size_t *hi) {
    static const char interesting[] = "0123456789\"{}[],:-+eE.tfn\\u \x00\xff\x80";
    size_t span = *hi - lo, k = fz_below(4), i, a, b, n;
    int rounds = 1 + (int)fz_below(3);
    while (rounds--) {
        span = *hi - lo;
        if (!span) return len;
        switch (k = fz_below(5)) {
        case 0: i = lo + fz_below(span); buf[i] ^= (uint8_t)(1u << fz_below(8)); break;
        case 1: i = lo + fz_below(span); buf[i] = (uint8_t)interesting[fz_below(sizeof interesting - 1)]; break;
        case 2: /* delete [a, b) */
            a = lo + fz_below(span); b = a + 1 + fz_below(span - (a - lo) < 16 ? span - (a - lo) : 16);
            if (b > *hi) b = *hi;
            memmove(buf + a, buf + b, len - b);
            len -= b - a; *hi -= b - a;
            break;
        case 3: /* duplicate [a, a + n) */
            a = lo + fz_below(span); n = 1 + fz_below(16);
            if (a + n > *hi) n = *hi - a;
            if (len + n > cap) break;
            memmove(buf + a + n, buf + a, len - a);
            len += n; *hi += n;
            break;
        default: /* a digit becomes another */
            for (i = 0; i < 8; i++) {
                size_t j = lo + fz_below(span);
                if (buf[j] >= '0' && buf[j] <= '9') { buf[j] = (uint8_t)('0' + fz_below(10)); break; }
            }
        }
    }
    return len;
}

static void fz_put32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }

static int fuzz(uint64_t seed, uint64_t cases, int nfiles, char **files, smask_options *o, const char *dump) {
    uint64_t counts[8] = {0}, c;
    uint8_t *work = NULL, *out = NULL;
    size_t cap = 0;
    fz_state = seed * 2 + 1;
    for (c = 0; c < cases; c++) {
        size_t len, wl, ol = 0;
        uint8_t *orig = read_file(files[c % (uint64_t)nfiles], &len);
        uint32_t hlen;
        smask_ticket *t = NULL;
        smask_error err;
        int rc;
        if (!orig || len < 48) { free(orig); free(work); free(out); return 2; }
        hlen = (uint32_t)orig[12] | ((uint32_t)orig[13] << 8) | ((uint32_t)orig[14] << 16) | ((uint32_t)orig[15] << 24);
        if (orig[8] == 3) {
            /* inflate the section, mutate it, store it again as stored DEFLATE blocks */
            smask_pool pool;
            uint8_t *raw;
            size_t rawlen, hi, i, nb, pl = len - 48 - hlen;
            smask_error e2;
            pool.alloc = o->alloc; pool.free = o->free; pool.ctx = NULL; pool.head = NULL;
            if (smask_inflate(orig + 16, hlen, (size_t)8 << 20, &pool, &raw, &rawlen, &e2)) { smask_pool_release(&pool); free(orig); continue; }
            cap = rawlen * 2 + 1024;
            {
                uint8_t *nw = (uint8_t *)realloc(work, cap);
                if (!nw) { smask_pool_release(&pool); free(orig); free(work); free(out); return 2; }
                work = nw;
            }
            memcpy(work, raw, rawlen);
            smask_pool_release(&pool);
            wl = rawlen;
            {
                size_t J = (size_t)work[0] | ((size_t)work[1] << 8) | ((size_t)work[2] << 16) | ((size_t)work[3] << 24), lo;
                if (fz_below(2) && 4 + J < wl) { lo = 4; hi = 4 + J; }   /* the header */
                else { lo = 4 + J < wl ? 4 + J : 4; hi = wl; }           /* the graph */
                if (fz_below(20) == 0) { lo = 0; hi = 4; }             /* the length itself */
                i = hi;
                wl = fz_mutate(work, wl, cap, lo, &hi);
                if (lo == 4 && i != hi && fz_below(4)) fz_put32(work, (uint32_t)(J + hi - i)); /* keep J right */
            }
            nb = wl / 65535 + 1;
            {
                uint8_t *no = (uint8_t *)realloc(out, 16 + wl + 5 * nb + pl + 32);
                if (!no) { free(orig); free(work); free(out); return 2; }
                out = no;
            }
            memcpy(out, orig, 16);
            ol = 16;
            for (i = 0; i < nb; i++) {
                size_t n = i + 1 == nb ? wl - i * 65535 : 65535;
                out[ol++] = (uint8_t)(i + 1 == nb);
                out[ol++] = (uint8_t)n; out[ol++] = (uint8_t)(n >> 8);
                out[ol++] = (uint8_t)~n; out[ol++] = (uint8_t)(~n >> 8);
                memcpy(out + ol, work + i * 65535, n);
                ol += n;
            }
            fz_put32(out + 12, (uint32_t)(ol - 16));
            memcpy(out + ol, orig + 16 + hlen, pl);
            ol += pl;
        } else {
            size_t hi = 16 + (size_t)hlen, lo = 16, i;
            cap = len * 2 + 1024;
            {
                uint8_t *no = (uint8_t *)realloc(out, cap);
                if (!no) { free(orig); free(work); free(out); return 2; }
                out = no;
            }
            memcpy(out, orig, len - 32);
            ol = len - 32;
            if (fz_below(5) == 0) { lo = 16 + hlen; hi = len - 32; }      /* the payloads */
            i = hi;
            ol = fz_mutate(out, ol, cap - 32, lo, &hi);
            if (lo == 16 && fz_below(8)) fz_put32(out + 12, (uint32_t)(hlen + hi - i));
        }
        smask_sha256(out, ol, out + ol);
        ol += 32;
        rc = smask_parse(out, ol, o, &t, &err);
        if (!rc) rc = smask_verify(t, &err);
        if (!rc) rc = run_small_once(t, &err);
        counts[rc < 8 ? rc : 7]++;
        if (dump) { /* keep the case and its verdict, for comparison with another reader */
            char path[4096];
            FILE *f;
            snprintf(path, sizeof path, "%s/case%06llu", dump, (unsigned long long)c);
            f = fopen(path, "wb");
            if (f) { fwrite(out, 1, ol, f); fclose(f); }
            printf("case%06llu %s\n", (unsigned long long)c, code_name(rc));
        }
        smask_free(t);
        free(orig);
    }
    free(work);
    free(out);
    printf("fuzz cases %llu:", (unsigned long long)cases);
    for (c = 0; c < 8; c++)
        if (counts[c]) printf(" %s %llu", code_name((int)c), (unsigned long long)counts[c]);
    printf("\n");
    return 0;
}

static int selftest(void) {
    static const uint64_t zero[4] = {0, 0, 0, 0}, zk[2] = {0, 0};
    static const uint64_t want0[4] = {UINT64_C(0x16554d9eca36314c), UINT64_C(0xdb20fe9d672d0fdc),
                                      UINT64_C(0xd7e772cee186176b), UINT64_C(0x7e68b68aec7ba23b)};
    static const uint64_t pc[4] = {UINT64_C(0x243f6a8885a308d3), UINT64_C(0x13198a2e03707344),
                                   UINT64_C(0xa4093822299f31d0), UINT64_C(0x082efa98ec4e6c89)};
    static const uint64_t pk[2] = {UINT64_C(0x452821e638d01377), UINT64_C(0xbe5466cf34e90c6c)};
    static const uint64_t wantp[4] = {UINT64_C(0xa528f45403e61d95), UINT64_C(0x38c72dbd566e9788),
                                      UINT64_C(0xa5a1610e72fd18b5), UINT64_C(0x57bd43b5e52b7fe6)};
    static const uint64_t ones[4] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX}, ok2[2] = {UINT64_MAX, UINT64_MAX};
    static const uint64_t want1[4] = {UINT64_C(0x87b092c3013fe90b), UINT64_C(0x438c3c67be8d0224),
                                      UINT64_C(0x9cc7d7c69cd777b6), UINT64_C(0xa09caebf594f0ba0)};
    uint64_t out[4];
    uint8_t d[32];
    int fails = 0;
    smask_philox4x64_10(zero, zk, out);
    fails += memcmp(out, want0, sizeof out) != 0;
    smask_philox4x64_10(ones, ok2, out);
    fails += memcmp(out, want1, sizeof out) != 0;
    smask_philox4x64_10(pc, pk, out);
    fails += memcmp(out, wantp, sizeof out) != 0;
    fails += smask_tensor_key("fc1.weight", 10) != UINT64_C(0x73b3804b904ccc6d);
    fails += smask_tensor_key("conv1.weight", 12) != UINT64_C(0xd9fd1b7557b662d1);
    smask_sha256((const uint8_t *)"abc", 3, d);
    fails += d[0] != 0xba || d[31] != 0xad;
    {
        float w[8];
        static const float want[8] = {0x1.d73370p-7f, 0x1.09c848p-6f, -0x1.ae78a8p-7f, -0x1.a85078p-5f,
                                      0x1.9e0b0cp-5f, -0x1.8946ccp-7f, 0x1.214946p-4f, -0x1.6823c6p-7f};
        smask_generate(0, "fc1.weight", 10, SMASK_DIST_UNIFORM, 0x1.66534ap-4f, 0, w, 8);
        fails += memcmp(w, want, sizeof w) != 0;
        smask_generate(0, "fc1.weight", 10, SMASK_DIST_UNIFORM, 0x1.66534ap-4f, 3, w, 2);
        fails += w[0] != want[3] || w[1] != want[4];
    }
    printf("selftest %s (%d failures)\n", fails ? "FAILED" : "ok", fails);
    return fails ? 1 : 0;
}

int main(int argc, char **argv) {
    smask_options o;
    int a = 1;
    const char *cmd;
    smask_options_init(&o);
    o.alloc = cli_alloc;
    o.free = cli_free;
    while (a + 1 < argc && strncmp(argv[a], "--", 2) == 0) {
        if (strcmp(argv[a], "--max-weights") == 0) o.max_weights = strtoull(argv[a + 1], NULL, 10);
        else if (strcmp(argv[a], "--max-memory") == 0) o.max_memory = strtoull(argv[a + 1], NULL, 10);
        else { fprintf(stderr, "smask-c: unknown option %s\n", argv[a]); return 2; }
        a += 2;
    }
    if (a >= argc) {
        fprintf(stderr, "usage: smask-c [--max-weights N] [--max-memory BYTES] info|weights|digest|verify|check|selftest ...\n");
        return 2;
    }
    cmd = argv[a++];
    if (strcmp(cmd, "selftest") == 0) return selftest();
    if (strcmp(cmd, "fuzz") == 0) {
        const char *dump = NULL;
        if (a + 1 < argc && strcmp(argv[a], "--dump") == 0) { dump = argv[a + 1]; a += 2; }
        if (argc - a < 3) { fprintf(stderr, "usage: smask-c fuzz [--dump DIR] SEED N TICKET...\n"); return 2; }
        return fuzz(strtoull(argv[a], NULL, 10), strtoull(argv[a + 1], NULL, 10), argc - a - 2, argv + a + 2, &o, dump);
    }
    if (strcmp(cmd, "bench") == 0) {
        if (a < argc && strspn(argv[a], "0123456789") != strlen(argv[a]))
            return bench_ticket(argv[a], a + 1 < argc ? strtoull(argv[a + 1], NULL, 10) : 1000, &o);
        return bench(a < argc ? strtoull(argv[a], NULL, 10) : (UINT64_C(1) << 24));
    }
    if (strcmp(cmd, "check") == 0) {
        /* one verdict per file: "ok PATH" or "reject CODE PATH: message"; with --run, version 1
           and 2 tickets of at most 2^24 multiply-adds also run on one all-zero input */
        int bad = 0, also_run = 0;
        if (a < argc && strcmp(argv[a], "--run") == 0) { also_run = 1; a++; }
        for (; a < argc; a++) {
            size_t len;
            uint8_t *buf = read_file(argv[a], &len);
            smask_ticket *t = NULL;
            smask_error err;
            int rc;
            if (!buf) { printf("error io %s\n", argv[a]); bad = 1; continue; }
            rc = smask_parse(buf, len, &o, &t, &err);
            if (!rc) rc = smask_verify(t, &err);
            if (!rc && also_run) rc = run_small_once(t, &err);
            if (rc) printf("reject %s %s: %s\n", code_name(rc), argv[a], err.message);
            else printf("ok %s\n", argv[a]);
            fflush(stdout);
            smask_free(t);
            free(buf);
        }
        return bad ? 2 : 0;
    }
    if (strcmp(cmd, "info") && strcmp(cmd, "weights") && strcmp(cmd, "digest") && strcmp(cmd, "verify") && strcmp(cmd, "run")) {
        fprintf(stderr, "smask-c: unknown command %s\n", cmd);
        return 2;
    }
    if (a >= argc || ((strcmp(cmd, "weights") == 0 || strcmp(cmd, "run") == 0) && a + 1 >= argc)) {
        fprintf(stderr, "smask-c: %s needs a ticket%s\n", cmd, strcmp(cmd, "weights") == 0 ? " and an output file" :
                strcmp(cmd, "run") == 0 ? " and an input file" : "");
        return 2;
    }
    {
        size_t len;
        uint8_t *buf = read_file(argv[a], &len);
        smask_ticket *t = NULL;
        smask_error err;
        int rc;
        if (!buf) { fprintf(stderr, "smask-c: cannot read %s\n", argv[a]); return 2; }
        rc = smask_parse(buf, len, &o, &t, &err);
        if (!rc && strcmp(cmd, "info") != 0) rc = smask_verify(t, &err);
        if (!rc) {
            if (strcmp(cmd, "info") == 0) rc = cmd_info(t);
            else if (strcmp(cmd, "digest") == 0) rc = cmd_digest(t, &err) ? 1 : 0;
            else if (strcmp(cmd, "weights") == 0) rc = cmd_weights(t, argv[a + 1], &err);
            else if (strcmp(cmd, "run") == 0) rc = cmd_run(t, argv[a + 1], &err);
            else printf("ok\n");
        } else {
            fprintf(stderr, "smask-c: %s: %s error: %s\n", argv[a], code_name(rc), err.message);
            rc = 1;
        }
        smask_free(t);
        free(buf);
        return rc;
    }
}
