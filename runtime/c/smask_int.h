/* Internal declarations shared by the reader's source files. Not part of the API. */
#ifndef SMASK_INT_H
#define SMASK_INT_H

#include "smask.h"

/* SHA-256, incremental. */
typedef struct {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t fill;
} smask_sha_ctx;
void smask_sha_init(smask_sha_ctx *c);
void smask_sha_update(smask_sha_ctx *c, const uint8_t *p, size_t n);
void smask_sha_final(smask_sha_ctx *c, uint8_t out[32]);

/* A list of blocks obtained from the caller's allocator, freed all at once. */
typedef struct smask_pool {
    smask_alloc_fn alloc;
    smask_free_fn free;
    void *ctx;
    void *head; /* each block starts with a pointer to the next */
} smask_pool;
void *smask_pool_get(smask_pool *p, size_t n); /* NULL on failure or overflow; zeroed */
void smask_pool_release(smask_pool *p);
void smask_pool_drop(smask_pool *p, void *ptr); /* give one block back early (NULL: nothing) */

/* Raw DEFLATE with the format's preset dictionary. Writes at most cap bytes into *out
 * (allocated from pool). Returns 0 or fills err. */
int smask_inflate(const uint8_t *in, size_t in_len, size_t cap, smask_pool *pool,
                  uint8_t **out, size_t *out_len, smask_error *err);
extern const char smask_dictionary[];
#define SMASK_DICT_LEN 565

/* Vetting of a version-3 ONNX graph (docs/format.md 7.3). */
typedef struct {
    const uint8_t *name;
    size_t name_len;
    uint64_t dims[SMASK_MAX_DIMS];
    size_t ndim;
    uint64_t size;
} smask_placeholder;

typedef struct {
    smask_placeholder *ph;   /* placeholders, graph order */
    size_t nph;
    uint64_t input_dims[3];  /* input shape without the batch dimension */
    size_t input_ndim;
    int has_classes;         /* the output's second dimension is a number */
    int64_t classes;
} smask_graph_info;

int smask_vet_graph(const uint8_t *g, size_t len, smask_pool *pool, smask_graph_info *info,
                    smask_error *err);

/* The nodes of a vetted version-3 graph, for streaming inference: operator, inputs, outputs
 * and attributes as byte ranges of the graph (valid while the graph bytes are). */
typedef struct { const uint8_t *p; size_t n; } smask_bytes;
#define SMASK_NODE_IO 6
#define SMASK_NODE_ATTRS 10
#define SMASK_ATTR_INTS 8
typedef struct {
    smask_bytes name, t;      /* t: an embedded TensorProto (n 0 if none) */
    int has_f, has_i, has_s, has_other;
    float f;
    int64_t i;
    smask_bytes s;
    int64_t ints[SMASK_ATTR_INTS];
    size_t nints;             /* may exceed SMASK_ATTR_INTS: only the first ones are kept */
} smask_gattr;
typedef struct {
    smask_bytes op, in[SMASK_NODE_IO], out[SMASK_NODE_IO];
    size_t nin, nout, nattr;  /* may exceed the array sizes: such nodes are not streamed */
    smask_gattr attr[SMASK_NODE_ATTRS];
} smask_gnode;
/* A TensorProto's type, dims and data (raw_data or float_data). */
typedef struct {
    int64_t data_type;
    uint64_t dims[8];
    size_t ndim;              /* may exceed 8 */
    smask_bytes raw, floats;  /* floats: packed fixed32 runs are concatenated only when single */
    size_t nfloat_fields;
    int other_data;           /* int/double/string data or external data present */
} smask_gtensor;
/* The main graph's nodes, at most max_nodes (SMASK_ERR_LIMIT when there are more). */
int smask_graph_nodes(const uint8_t *g, size_t len, smask_pool *pool, size_t max_nodes, smask_gnode **nodes,
                      size_t *count, smask_error *err);
int smask_graph_tensor(smask_bytes t, smask_gtensor *out);

/* smask_generate with the tensor's keys computed once (smask_tensor_key, smask_aux_key: the
 * second key is used by normal inits only), for callers that make a tensor a piece at a time. */
uint64_t smask_aux_key(const char *name, size_t len);
void smask_generate_keyed(uint64_t seed, uint64_t key, uint64_t aux_key, int dist, float scale, uint64_t start,
                          float *dst, uint64_t n);

/* Sign bits of elements [start, start + n) of a tensor (bit j of the output: element start + j),
 * packed least significant bit first: every distribution takes its sign from h_j's top bit
 * (for normal inits m = 0 only gives -0.0, whose sign bit is set too). */
void smask_sign_bits(uint64_t seed, const char *name, size_t name_len, uint64_t start, uint8_t *bits, uint64_t n);

int smask_fail(smask_error *err, int code, const char *fmt, ...);
int smask_utf8_valid(const uint8_t *p, size_t n);

#endif
