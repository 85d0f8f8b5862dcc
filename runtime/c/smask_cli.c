/* smask-c: command-line front end of the C ticket reader.
 *
 *   smask-c info TICKET            tensor table
 *   smask-c weights TICKET OUT     all weights, float32 little-endian, table order
 *   smask-c digest TICKET          "name sha256" of each tensor's float32 little-endian bytes
 *   smask-c verify TICKET          parse and check the fingerprints
 *   smask-c check FILE...          parse + verify each file; one verdict line per file
 *   smask-c run TICKET INPUT       logits of a version-1/2 ticket on float32 inputs (N x input size,
 *                                  little-endian), one row per line, weights made as they are used
 *   smask-c bench [N]              generator and SHA-256 throughput on N elements (default 2^24)
 *   smask-c selftest               known-answer tests of SHA-256, Philox and the codecs
 *
 * Options before the command: --max-weights N, --max-memory BYTES.
 * Exit status: 0 ok, 1 bad ticket, 2 usage or I/O error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smask.h"

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
    default: return "argument";
    }
}

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
            if (ncap > ((size_t)1 << 34)) { free(buf); fclose(f); return NULL; }
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
    if (!per) { fprintf(stderr, "smask-c: run needs a version 1 or 2 ticket\n"); free(raw); return 1; }
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
    if (strcmp(cmd, "bench") == 0) return bench(a < argc ? strtoull(argv[a], NULL, 10) : (UINT64_C(1) << 24));
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
            if (!rc && also_run && smask_input_size(t) && smask_run_cost(t) <= (UINT64_C(1) << 24)) {
                uint64_t ns = smask_run_scratch(t, 1);
                float *in = alloc_floats(smask_input_size(t)), *lg = alloc_floats(smask_num_classes(t)), *sc = alloc_floats(ns);
                if (in && lg && sc) {
                    memset(in, 0, (size_t)smask_input_size(t) * sizeof(float));
                    rc = smask_run(t, in, 1, lg, sc, ns, &err);
                }
                free(in); free(lg); free(sc);
            }
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
