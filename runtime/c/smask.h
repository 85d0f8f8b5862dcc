/* smask.h - a C99 reader for .smask supermask tickets (format versions 1, 2 and 3).
 *
 * The normative description of the format is docs/format.md; docs/native.md describes this
 * reader: what it checks, how to build it, what it leaves out.
 *
 * Memory: the library never calls malloc. The caller passes an allocator (alloc/free
 * callbacks and a context pointer) in smask_options; the parser uses it for the parsed
 * tensor table and for temporary buffers (the JSON tree, the inflated version-3 section),
 * and smask_free gives everything back. Masks are never held in memory: they are decoded
 * from the ticket bytes each time weights are made. The ticket bytes themselves belong to
 * the caller and must stay valid and unchanged until smask_free.
 *
 * Thread safety: a parsed ticket is read-only; several threads may call
 * smask_tensor_weights on it at once.
 *
 * Portability: C99 and libc (+ libm for normal inits). Integers are read byte by byte as
 * little-endian; no unaligned access; 64-bit arithmetic through uint64_t only (a 128-bit
 * type is used for the Philox multiply when the compiler has one, unless SMASK_NO_INT128 is
 * defined). float must be IEEE 754 binary32 and double binary64, evaluated without excess
 * precision (on 32-bit x86 build with -msse2 -mfpmath=sse). Decimal numbers in the header
 * are read with strtod, which must run in the "C" locale.
 */
#ifndef SMASK_H
#define SMASK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum {
    SMASK_OK = 0,
    SMASK_ERR_FORMAT = 1,      /* malformed ticket (any rule of docs/format.md) */
    SMASK_ERR_CHECKSUM = 2,    /* SHA-256 mismatch */
    SMASK_ERR_VERSION = 3,     /* unsupported format or generator version */
    SMASK_ERR_LIMIT = 4,       /* above max_weights or max_memory */
    SMASK_ERR_VERIFY = 5,      /* regenerated weights do not match the fingerprints */
    SMASK_ERR_NOMEM = 6,       /* the allocator returned NULL */
    SMASK_ERR_ARGUMENT = 7,    /* bad argument (index out of range, buffer too small, ...) */
    SMASK_ERR_UNSUPPORTED = 8  /* smask_run: a version-3 graph outside the streaming vocabulary */
};

/* Tensor roles. */
enum {
    SMASK_ROLE_ZERO = 0,
    SMASK_ROLE_MASKED = 1,
    SMASK_ROLE_REGENERATED = 2,
    SMASK_ROLE_ONE = 3,     /* version 3 only */
    SMASK_ROLE_STORED = 4   /* version 3 only */
};

/* Distributions (of masked and regenerated tensors). */
enum { SMASK_DIST_NONE = 0, SMASK_DIST_UNIFORM = 1, SMASK_DIST_NORMAL = 2, SMASK_DIST_SIGNED_CONSTANT = 3 };

#define SMASK_ERRLEN 256
#define SMASK_MAX_DIMS 64

typedef void *(*smask_alloc_fn)(void *ctx, size_t size);
typedef void (*smask_free_fn)(void *ctx, void *ptr);

typedef struct {
    smask_alloc_fn alloc;   /* required */
    smask_free_fn free;     /* required */
    void *ctx;              /* passed to alloc and free */
    uint64_t max_weights;   /* all tensors together, elements; default 2^30 */
    uint64_t max_memory;    /* memory cap of the reference reader's estimates (docs/format.md 5),
                               bytes; default 4 GiB. Checked by smask_parse (masks) and by
                               smask_verify (masks + float32 weights). */
} smask_options;

typedef struct smask_ticket smask_ticket;

/* An error: a return code and a message (NUL-terminated, at most SMASK_ERRLEN - 1 bytes). */
typedef struct {
    int code;
    char message[SMASK_ERRLEN];
} smask_error;

/* Fill *opts with the defaults; alloc and free are left NULL (the caller must set them). */
void smask_options_init(smask_options *opts);

/* Parse and validate a ticket: frame, checksum, header, (version 3) graph, tensor table,
 * mask payloads (decoded once to count the kept weights). Fingerprints are not checked here:
 * call smask_verify. On success *out holds the ticket (free it with smask_free) and
 * SMASK_OK is returned; otherwise *out is NULL, err (if not NULL) says why, and the code is
 * returned. `buf` must stay valid until smask_free. */
int smask_parse(const uint8_t *buf, size_t len, const smask_options *opts, smask_ticket **out,
                smask_error *err);

void smask_free(smask_ticket *t);

/* Regenerate every masked and regenerated tensor and check it against the ticket's
 * fingerprints (3.5 for versions 1 and 2, 7.5 for version 3), in bounded memory. Also applies
 * the weights memory estimate (masks + 4 bytes per element) against max_memory and the
 * generator's scale range, as the reference reader does before making weights. */
int smask_verify(const smask_ticket *t, smask_error *err);

int smask_version(const smask_ticket *t);
uint64_t smask_seed(const smask_ticket *t);
size_t smask_tensor_count(const smask_ticket *t);
/* The tensor's name (UTF-8, not NUL-terminated in general: use *len; a NUL follows it). */
const char *smask_tensor_name(const smask_ticket *t, size_t index, size_t *len);
/* Number of dimensions (0 for a scalar) and the dimensions. */
size_t smask_tensor_ndim(const smask_ticket *t, size_t index);
const uint64_t *smask_tensor_dims(const smask_ticket *t, size_t index);
uint64_t smask_tensor_size(const smask_ticket *t, size_t index);
int smask_tensor_role(const smask_ticket *t, size_t index);
int smask_tensor_distribution(const smask_ticket *t, size_t index);
/* The float32 init scale (0 for tensors that are not generated) and multiplier (1 if none). */
float smask_tensor_scale(const smask_ticket *t, size_t index);
float smask_tensor_multiplier(const smask_ticket *t, size_t index);
/* Masked tensors: number of kept weights, codec name ("bitpack" / "entropy"), payload bytes. */
uint64_t smask_tensor_kept(const smask_ticket *t, size_t index);
const char *smask_tensor_codec(const smask_ticket *t, size_t index);
uint64_t smask_tensor_payload_bytes(const smask_ticket *t, size_t index);
const char *smask_role_name(int role);

/* Write the tensor's float32 weights (masked, times its multiplier, pruned weights +0.0)
 * into dst[0 .. n), n must equal smask_tensor_size. No allocation. */
int smask_tensor_weights(const smask_ticket *t, size_t index, float *dst, uint64_t n, smask_error *err);

/* Elements [start, start + n) of the tensor's weights: the generator is counter-based, so a
 * range costs only its own elements (plus up to 7 before it). */
int smask_tensor_weights_range(const smask_ticket *t, size_t index, uint64_t start, float *dst,
                               uint64_t n, smask_error *err);

/* Streaming inference. Version 1 and 2 tickets: their layer list (flatten, linear, conv2d, relu,
 * maxpool2d, and the preprocessing). Version 3 tickets: the ONNX graph, when it is one chain
 * from 'input' to 'logits' of Cast (to float32), Identity, Add/Sub/Mul/Div by a Constant (a
 * scalar or one value per channel), Flatten (axis 1), Gemm (alpha 1, beta 1, transB 1),
 * Conv (group 1, dilations 1, square kernel, equal pads and strides), MaxPool (square kernel,
 * equal strides, no padding, ceil_mode 0), BatchNormalization (inference) and Relu, with the
 * ticket's tensors as weights, biases and statistics; smask_parse reads the graph into such a
 * layer list, and for any other graph smask_run returns SMASK_ERR_UNSUPPORTED and a message
 * naming the first operator outside this vocabulary (and smask_input_size returns 0).
 *
 * Weights are regenerated as they are used, a piece of one weight row (at most 256 floats) or
 * of one convolution filter (whole input channels, at least one) at a time, and used for the
 * whole batch: no weight matrix is ever held. input: batch examples of smask_input_size floats
 * (raw values, C order; the network does its own preprocessing); logits: batch x
 * smask_num_classes floats. scratch: smask_run_scratch(t, batch) floats from the caller: two
 * activation buffers, each as large as the largest activation it holds, times the batch, plus
 * the weight piece. Computed in float32 with a plain summation order (each product rounded to
 * float before it is added), so logits differ from onnxruntime's in the last bits. */
uint64_t smask_input_size(const smask_ticket *t);
uint64_t smask_num_classes(const smask_ticket *t);
uint64_t smask_run_scratch(const smask_ticket *t, uint64_t batch);
/* Multiply-adds per example (weights are regenerated once per batch). */
uint64_t smask_run_cost(const smask_ticket *t);
int smask_run(const smask_ticket *t, const float *input, uint64_t batch, float *logits, float *scratch,
              uint64_t scratch_len, smask_error *err);

/* Building blocks, exposed for tests and for streaming runtimes. */
void smask_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
void smask_philox4x64_10(const uint64_t ctr[4], const uint64_t key[2], uint64_t out[4]);
uint64_t smask_tensor_key(const char *name, size_t len);
/* Unmasked generator values [start, start + n) of a tensor (docs/format.md 3.2). dist is
 * SMASK_DIST_*; scale is the float32 scale. */
void smask_generate(uint64_t seed, const char *name, size_t name_len, int dist, float scale,
                    uint64_t start, float *dst, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif
