/* Vetting of a version-3 ticket's ONNX graph (docs/format.md 7.3) by walking the protobuf wire
 * format: every message kind has a table of the field numbers onnx.proto defines for it. */
#include <stdlib.h>
#include <string.h>

#include "smask_int.h"

enum { K_MODEL, K_MAINGRAPH, K_GRAPH, K_NODE, K_ATTRIBUTE, K_TENSOR, K_INIT, K_VALUEINFO, K_TYPE,
       K_TENSORTYPE, K_ELEMTYPE, K_MAPTYPE, K_OPAQUETYPE, K_SHAPE, K_DIM, K_OPSET, K_ENTRY,
       K_ANNOTATION, K_DEVICECONFIG, K_NODEDEVICECONFIG, K_SHARDINGSPEC, K_INTINTLIST, K_SHARDEDDIM,
       K_SIMPLESHARDEDDIM, K_COUNT };
#define B_I (-1) /* varint */
#define B_F (-2) /* fixed32 */
#define B_D (-3) /* fixed64 */
#define B_S (-4) /* bytes */

typedef struct {
    uint8_t field;
    uint8_t repeated;
    int8_t base;
    const char *refused;
} fspec;

#define END {0, 0, 0, NULL}
#define TENSOR_FIELDS(init_dims_kind)                                                          \
    {1, 1, B_I, NULL}, {2, 0, B_I, NULL}, {3, 0, B_S, "tensor segments are not allowed"},     \
    {4, 1, B_F, NULL}, {5, 1, B_I, NULL}, {6, 1, B_S, NULL}, {7, 1, B_I, NULL}, {8, 0, B_S, NULL}, \
    {9, 0, B_S, NULL}, {10, 1, B_D, NULL}, {11, 1, B_I, NULL}, {12, 0, B_S, NULL},            \
    {13, 1, K_ENTRY, NULL}, {14, 0, B_I, NULL}, {16, 1, K_ENTRY, NULL}, END

static const fspec S_MODEL[] = {{1, 0, B_I, NULL}, {2, 0, B_S, NULL}, {3, 0, B_S, NULL}, {4, 0, B_S, NULL},
    {5, 0, B_I, NULL}, {6, 0, B_S, NULL}, {7, 0, K_MAINGRAPH, NULL}, {8, 1, K_OPSET, NULL},
    {14, 1, K_ENTRY, NULL}, {20, 0, B_S, "training info is not allowed"},
    {25, 1, B_S, "model-local functions are not allowed"}, {26, 1, K_DEVICECONFIG, NULL}, END};
static const fspec S_MAINGRAPH[] = {{1, 1, K_NODE, NULL}, {2, 0, B_S, NULL}, {5, 1, K_INIT, NULL},
    {10, 0, B_S, NULL}, {11, 1, K_VALUEINFO, NULL}, {12, 1, K_VALUEINFO, NULL}, {13, 1, K_VALUEINFO, NULL},
    {14, 1, K_ANNOTATION, NULL}, {15, 1, B_S, "sparse tensors are not allowed"}, {16, 1, K_ENTRY, NULL}, END};
static const fspec S_GRAPH[] = {{1, 1, K_NODE, NULL}, {2, 0, B_S, NULL}, {5, 1, K_TENSOR, NULL},
    {10, 0, B_S, NULL}, {11, 1, K_VALUEINFO, NULL}, {12, 1, K_VALUEINFO, NULL}, {13, 1, K_VALUEINFO, NULL},
    {14, 1, K_ANNOTATION, NULL}, {15, 1, B_S, "sparse tensors are not allowed"}, {16, 1, K_ENTRY, NULL}, END};
static const fspec S_NODE[] = {{1, 1, B_S, NULL}, {2, 1, B_S, NULL}, {3, 0, B_S, NULL}, {4, 0, B_S, NULL},
    {5, 1, K_ATTRIBUTE, NULL}, {6, 0, B_S, NULL}, {7, 0, B_S, NULL}, {8, 0, B_S, NULL},
    {9, 1, K_ENTRY, NULL}, {10, 1, K_NODEDEVICECONFIG, NULL}, END};
static const fspec S_ATTRIBUTE[] = {{1, 0, B_S, NULL}, {2, 0, B_F, NULL}, {3, 0, B_I, NULL}, {4, 0, B_S, NULL},
    {5, 0, K_TENSOR, NULL}, {6, 0, K_GRAPH, NULL}, {7, 1, B_F, NULL}, {8, 1, B_I, NULL}, {9, 1, B_S, NULL},
    {10, 1, K_TENSOR, NULL}, {11, 1, K_GRAPH, NULL}, {13, 0, B_S, NULL}, {14, 0, K_TYPE, NULL},
    {15, 1, K_TYPE, NULL}, {20, 0, B_I, NULL}, {21, 0, B_S, NULL}, {22, 0, B_S, "sparse tensors are not allowed"},
    {23, 1, B_S, "sparse tensors are not allowed"}, END};
static const fspec S_TENSOR[] = {TENSOR_FIELDS(0)};
static const fspec S_INIT[] = {TENSOR_FIELDS(1)};
static const fspec S_VALUEINFO[] = {{1, 0, B_S, NULL}, {2, 0, K_TYPE, NULL}, {3, 0, B_S, NULL},
    {4, 1, K_ENTRY, NULL}, END};
static const fspec S_TYPE[] = {{1, 0, K_TENSORTYPE, NULL}, {4, 0, K_ELEMTYPE, NULL}, {5, 0, K_MAPTYPE, NULL},
    {6, 0, B_S, NULL}, {7, 0, K_OPAQUETYPE, NULL}, {8, 0, B_S, "sparse tensors are not allowed"},
    {9, 0, K_ELEMTYPE, NULL}, END};
static const fspec S_TENSORTYPE[] = {{1, 0, B_I, NULL}, {2, 0, K_SHAPE, NULL}, END};
static const fspec S_ELEMTYPE[] = {{1, 0, K_TYPE, NULL}, END};
static const fspec S_MAPTYPE[] = {{1, 0, B_I, NULL}, {2, 0, K_TYPE, NULL}, END};
static const fspec S_OPAQUETYPE[] = {{1, 0, B_S, NULL}, {2, 0, B_S, NULL}, END};
static const fspec S_SHAPE[] = {{1, 1, K_DIM, NULL}, END};
static const fspec S_DIM[] = {{1, 0, B_I, NULL}, {2, 0, B_S, NULL}, {3, 0, B_S, NULL}, END};
static const fspec S_OPSET[] = {{1, 0, B_S, NULL}, {2, 0, B_I, NULL}, END};
static const fspec S_ENTRY[] = {{1, 0, B_S, NULL}, {2, 0, B_S, NULL}, END};
static const fspec S_ANNOTATION[] = {{1, 0, B_S, NULL}, {2, 1, K_ENTRY, NULL}, END};
static const fspec S_DEVICECONFIG[] = {{1, 0, B_S, NULL}, {2, 0, B_I, NULL}, {3, 1, B_S, NULL}, END};
static const fspec S_NODEDEVICECONFIG[] = {{1, 0, B_S, NULL}, {2, 1, K_SHARDINGSPEC, NULL}, {3, 0, B_I, NULL}, END};
static const fspec S_SHARDINGSPEC[] = {{1, 0, B_S, NULL}, {2, 1, B_I, NULL}, {3, 1, K_INTINTLIST, NULL},
    {4, 1, K_SHARDEDDIM, NULL}, END};
static const fspec S_INTINTLIST[] = {{1, 0, B_I, NULL}, {2, 1, B_I, NULL}, END};
static const fspec S_SHARDEDDIM[] = {{1, 0, B_I, NULL}, {2, 1, K_SIMPLESHARDEDDIM, NULL}, END};
static const fspec S_SIMPLESHARDEDDIM[] = {{1, 0, B_I, NULL}, {2, 0, B_S, NULL}, {3, 0, B_I, NULL}, END};

static const fspec *const SCHEMA[K_COUNT] = {S_MODEL, S_MAINGRAPH, S_GRAPH, S_NODE, S_ATTRIBUTE, S_TENSOR,
    S_INIT, S_VALUEINFO, S_TYPE, S_TENSORTYPE, S_ELEMTYPE, S_MAPTYPE, S_OPAQUETYPE, S_SHAPE, S_DIM,
    S_OPSET, S_ENTRY, S_ANNOTATION, S_DEVICECONFIG, S_NODEDEVICECONFIG, S_SHARDINGSPEC, S_INTINTLIST,
    S_SHARDEDDIM, S_SIMPLESHARDEDDIM};
static const char *const KIND_NAME[K_COUNT] = {"model", "graph", "subgraph", "node", "attribute", "tensor",
    "initializer", "value_info", "type", "tensor_type", "elem_type", "map_type", "opaque_type", "shape",
    "dim", "opset_import", "entry", "annotation", "configuration", "device_configuration",
    "sharding_spec", "int_int_list", "sharded_dim", "simple_sharded_dim"};

static const char *const ALLOWED_OPS[] = {"Abs", "Acos", "Add", "And", "ArgMax", "ArgMin", "Asin", "Atan",
    "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Cos", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Flatten", "Floor",
    "Gather", "GatherElements", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
    "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "LRN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg",
    "Not", "Or", "PRelu", "Pow", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Round",
    "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Transpose", "Trilu",
    "Unsqueeze", "Where", "Xor", NULL};

#define MAX_NODES 100000
#define MAX_DEPTH 8
#define MAX_ITEMS 1000000
#define MAX_GRAPH_BYTES (4u << 20)

typedef struct { size_t s, n; int set; } span;

/* What a finished message hands to its parent. */
typedef struct {
    int kind;      /* Dim: 0 none, 1 value, 2 param */
    int64_t value;
} dimsum;

typedef struct {
    span name;
    int64_t elem;
    size_t ndim;
    dimsum dims[4];
} vinfo;

typedef struct {
    span key, value;
} entrysum;

typedef struct {
    span name, location;
    int64_t data_type;
    uint64_t *dims;
    size_t ndim;
    int external;
} initsum;

typedef struct {
    /* Shape / TensorType / Type / ValueInfo share this */
    vinfo vi;
    int has_tensor;
    /* Dim */
    dimsum dim;
    /* Entry */
    entrysum entry;
    /* Init */
    initsum init;
    /* Opset */
    int domain;
} summary;

typedef struct {
    const uint8_t *buf;
    size_t len;
    smask_pool *pool;
    smask_error *err;
    uint64_t items, nodes;
    int has_domain[2];
    vinfo *inputs, *outputs;
    size_t ninputs, noutputs, cap_in, cap_out;
    initsum *inits;
    size_t ninits, cap_inits;
    uint64_t *dimbuf;   /* scratch for the initializer being read */
    size_t ndimbuf, cap_dimbuf;
} walker;

static int gfail(walker *w, const char *where, const char *what) {
    return smask_fail(w->err, SMASK_ERR_FORMAT, "graph: %s: %s", where, what);
}

static int grow(walker *w, void **arr, size_t *cap, size_t need, size_t elem) {
    void *p;
    size_t ncap;
    if (need <= *cap) return 0;
    ncap = *cap ? *cap * 2 : 8;
    while (ncap < need) ncap *= 2;
    p = smask_pool_get(w->pool, ncap * elem);
    if (!p) return smask_fail(w->err, SMASK_ERR_NOMEM, "out of memory reading the graph");
    if (*cap) memcpy(p, *arr, *cap * elem);
    *arr = p;
    *cap = ncap;
    return 0;
}

static int varint(walker *w, size_t *pos, size_t end, uint64_t *out, const char *where) {
    uint64_t v = 0;
    int shift = 0;
    while (*pos < end) {
        uint8_t b = w->buf[(*pos)++];
        if (shift == 63 && (b & 0x7f) > 1) {
            if (b < 0x80) return gfail(w, where, "varint overflows 64 bits");
        }
        if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            *out = v;
            return 0;
        }
        shift += 7;
        if (shift == 70) return gfail(w, where, "varint longer than 10 bytes");
    }
    return gfail(w, where, "truncated varint");
}

static int text_ok(walker *w, span s, const char *where) {
    if (s.set && !smask_utf8_valid(w->buf + s.s, s.n)) return gfail(w, where, "string is not valid UTF-8");
    return 0;
}

static int span_eq(walker *w, span s, const char *lit) {
    size_t n = strlen(lit);
    return s.n == n && memcmp(w->buf + s.s, lit, n) == 0;
}

static int count_items(walker *w, uint64_t n, const char *where) {
    w->items += n;
    if (w->items > MAX_ITEMS) return gfail(w, where, "the model has more than 1000000 fields and dimensions");
    return 0;
}

/* A packed run of numbers; keep: append the varints to dimbuf. */
static int packed(walker *w, int base, size_t s, size_t e, int keep, const char *where) {
    size_t i, run = 0;
    if (base != B_I) {
        if ((e - s) % (base == B_F ? 4 : 8)) return gfail(w, where, "packed fixed-width values have a partial element");
        return 0;
    }
    if (s < e && w->buf[e - 1] >= 0x80) return gfail(w, where, "malformed packed varints");
    for (i = s; i < e; i++) {
        uint8_t b = w->buf[i];
        if (b >= 0x80) {
            if (++run >= 10) return gfail(w, where, "malformed packed varints");
        } else {
            if (run == 9 && b >= 0x02) return gfail(w, where, "malformed packed varints");
            run = 0;
        }
    }
    if (!keep) return 0;
    {
        uint64_t ends = 0;
        for (i = s; i < e; i++) ends += w->buf[i] < 0x80;
        if (count_items(w, ends, where)) return -1;
    }
    i = s;
    while (i < e) {
        uint64_t v;
        if (varint(w, &i, e, &v, where)) return -1;
        if (grow(w, (void **)&w->dimbuf, &w->cap_dimbuf, w->ndimbuf + 1, sizeof(uint64_t))) return -1;
        w->dimbuf[w->ndimbuf++] = v;
    }
    return 0;
}

static int is_allowed_op(walker *w, span op) {
    int i;
    for (i = 0; ALLOWED_OPS[i]; i++)
        if (span_eq(w, op, ALLOWED_OPS[i])) return 1;
    return 0;
}

static int message(walker *w, int kind, size_t start, size_t end, int gd, int td, summary *res);

static int message(walker *w, int kind, size_t start, size_t end, int gd, int td, summary *res) {
    const fspec *specs = SCHEMA[kind];
    const char *where = KIND_NAME[kind];
    uint32_t counts[32];
    uint64_t sizes[32], ival[32];
    span spans[32];
    size_t pos = start;
    memset(counts, 0, sizeof counts);
    memset(sizes, 0, sizeof sizes);
    memset(ival, 0, sizeof ival);
    memset(spans, 0, sizeof spans);
    memset(res, 0, sizeof *res);
    if (kind == K_INIT) w->ndimbuf = 0;
    while (pos < end) {
        uint64_t key, field, size = 0;
        int wire, expected, is_packed;
        const fspec *sp;
        size_t vs = 0, nxt;
        uint64_t val = 0;
        if (count_items(w, 1, where)) return -1;
        if (varint(w, &pos, end, &key, where)) return -1;
        field = key >> 3;
        wire = (int)(key & 7);
        if (field == 0) return gfail(w, where, "field number 0 is not allowed");
        if (wire != 0 && wire != 1 && wire != 2 && wire != 5)
            return gfail(w, where, "groups and unknown wire types are not allowed");
        for (sp = specs; sp->field; sp++)
            if (sp->field == field) break;
        if (!sp->field) return gfail(w, where, "unknown field number; only fields defined in onnx.proto are allowed");
        if (sp->refused) return gfail(w, where, sp->refused);
        if (counts[field] && !sp->repeated) return gfail(w, where, "singular field appears more than once");
        counts[field]++;
        if (wire == 2) {
            if (varint(w, &pos, end, &size, where)) return -1;
            if (size > end - pos) return gfail(w, where, "length runs past the end of its message");
            vs = pos;
            nxt = pos + (size_t)size;
        } else if (wire == 0) {
            size_t p0 = pos;
            if (varint(w, &pos, end, &val, where)) return -1;
            size = pos - p0;
            nxt = pos;
        } else {
            int k;
            size = wire == 1 ? 8 : 4;
            if (size > end - pos) return gfail(w, where, "truncated fixed-width value");
            for (k = (int)size - 1; k >= 0; k--) val = (val << 8) | w->buf[pos + k];
            nxt = pos + (size_t)size;
        }
        expected = sp->base == B_I ? 0 : sp->base == B_D ? 1 : sp->base == B_F ? 5 : 2;
        is_packed = wire == 2 && expected != 2 && sp->repeated;
        if (wire != expected && !is_packed) return gfail(w, where, "wire type does not match the field's type");
        if (sp->base >= 0) {
            summary child;
            int g = gd, t = td;
            if (sp->base == K_GRAPH) { g = gd + 1; t = 0; }
            else if (sp->base == K_TYPE) t = td + 1;
            if (g > MAX_DEPTH || t > MAX_DEPTH) return gfail(w, where, "nested more than 8 levels deep");
            if (message(w, sp->base, vs, nxt, g, t, &child)) return -1;
            /* hand the child's summary to this message */
            if (kind == K_MODEL && field == 8) {
                if (w->has_domain[child.domain]) return gfail(w, where, "model imports an operator set domain more than once");
                w->has_domain[child.domain] = 1;
            } else if (kind == K_MAINGRAPH && (field == 11 || field == 12)) {
                if (field == 11) {
                    if (grow(w, (void **)&w->inputs, &w->cap_in, w->ninputs + 1, sizeof(vinfo))) return -1;
                    w->inputs[w->ninputs++] = child.vi;
                } else {
                    if (grow(w, (void **)&w->outputs, &w->cap_out, w->noutputs + 1, sizeof(vinfo))) return -1;
                    w->outputs[w->noutputs++] = child.vi;
                }
            } else if (kind == K_MAINGRAPH && field == 5) {
                if (grow(w, (void **)&w->inits, &w->cap_inits, w->ninits + 1, sizeof(initsum))) return -1;
                w->inits[w->ninits++] = child.init;
            } else if (kind == K_VALUEINFO && field == 2) {
                res->vi.elem = child.vi.elem;
                res->vi.ndim = child.vi.ndim;
                memcpy(res->vi.dims, child.vi.dims, sizeof res->vi.dims);
            } else if (kind == K_TYPE && field == 1) {
                res->has_tensor = 1;
                res->vi.elem = child.vi.elem;
                res->vi.ndim = child.vi.ndim;
                memcpy(res->vi.dims, child.vi.dims, sizeof res->vi.dims);
            } else if (kind == K_TENSORTYPE && field == 2) {
                res->vi.ndim = child.vi.ndim;
                memcpy(res->vi.dims, child.vi.dims, sizeof res->vi.dims);
            } else if (kind == K_SHAPE && field == 1) {
                if (res->vi.ndim < 4) res->vi.dims[res->vi.ndim] = child.dim;
                res->vi.ndim++;
            } else if (kind == K_INIT && field == 13) {
                /* external_data entry: key must be known and unique */
                static const char *const keys[4] = {"location", "offset", "length", "checksum"};
                int k, found = -1;
                if (text_ok(w, child.entry.key, where) || text_ok(w, child.entry.value, where)) return -1;
                for (k = 0; k < 4; k++)
                    if (span_eq(w, child.entry.key, keys[k])) found = k;
                if (found < 0 || (counts[31] & (1u << found)))
                    return gfail(w, where, "external_data keys allowed once each: location, offset, length, checksum");
                counts[31] |= 1u << found;
                if (found == 0) res->init.location = child.entry.value;
                res->init.external = 1;
            }
        } else if (is_packed) {
            if (packed(w, sp->base, vs, nxt, kind == K_INIT && field == 1, where)) return -1;
        } else if (kind == K_INIT && field == 1) {
            if (grow(w, (void **)&w->dimbuf, &w->cap_dimbuf, w->ndimbuf + 1, sizeof(uint64_t))) return -1;
            w->dimbuf[w->ndimbuf++] = val;
        }
        if (field < 31) {
            sizes[field] += size;
            if (!sp->repeated) {
                ival[field] = val;
                if (wire == 2) { spans[field].s = vs; spans[field].n = nxt - vs; spans[field].set = 1; }
            }
        }
        pos = nxt;
    }
    /* oneofs */
    if (kind == K_TYPE) {
        int n = !!counts[1] + !!counts[4] + !!counts[5] + !!counts[7] + !!counts[8] + !!counts[9];
        if (n > 1) return gfail(w, where, "more than one member of a oneof is set");
    } else if (kind == K_DIM || kind == K_SIMPLESHARDEDDIM) {
        if (counts[1] && counts[2]) return gfail(w, where, "more than one member of a oneof is set");
    }
    switch (kind) {
    case K_MODEL:
        if (!counts[7]) return gfail(w, where, "model has no graph");
        break;
    case K_OPSET:
        if (text_ok(w, spans[1], where)) return -1;
        if (!spans[1].set || spans[1].n == 0) res->domain = 0;
        else if (span_eq(w, spans[1], "ai.onnx")) res->domain = 1;
        else return gfail(w, where, "only the standard ONNX operator set domain is allowed");
        break;
    case K_NODE:
        if (text_ok(w, spans[4], where) || text_ok(w, spans[7], where)) return -1;
        if (spans[7].set && spans[7].n && !span_eq(w, spans[7], "ai.onnx"))
            return gfail(w, where, "only the standard ONNX operator domain is allowed");
        if (++w->nodes > MAX_NODES) return gfail(w, where, "the model has more than 100000 nodes");
        if (!is_allowed_op(w, spans[4])) return gfail(w, where, "operator is not allowed in a ticket (see docs/format.md 7.3)");
        break;
    case K_TENSOR:
        if (ival[14] != 0 || counts[13]) return gfail(w, where, "only initializers of the main graph may use external data");
        break;
    case K_INIT: {
        size_t i;
        uint64_t embedded = sizes[4] + sizes[5] + sizes[6] + sizes[7] + sizes[9] + sizes[10] + sizes[11];
        if (text_ok(w, spans[8], where)) return -1;
        res->init.name = spans[8];
        res->init.data_type = (int64_t)ival[2];
        for (i = 0; i < w->ndimbuf; i++)
            if (w->dimbuf[i] >> 63) return gfail(w, where, "initializer has a negative dimension");
        if (ival[14] > 1) return gfail(w, where, "initializer has an unknown data_location");
        if (ival[14] == 0) {
            if (res->init.external) return gfail(w, where, "external_data but data_location is not EXTERNAL");
            res->init.external = 0;
        } else {
            if (!res->init.location.set || res->init.location.n == 0)
                return gfail(w, where, "data_location EXTERNAL but no 'location'");
            if (embedded) return gfail(w, where, "data_location EXTERNAL but also embedded data");
            res->init.external = 1;
        }
        res->init.ndim = w->ndimbuf;
        res->init.dims = NULL;
        if (w->ndimbuf) {
            res->init.dims = (uint64_t *)smask_pool_get(w->pool, w->ndimbuf * sizeof(uint64_t));
            if (!res->init.dims) return smask_fail(w->err, SMASK_ERR_NOMEM, "out of memory reading the graph");
            memcpy(res->init.dims, w->dimbuf, w->ndimbuf * sizeof(uint64_t));
        }
        break;
    }
    case K_VALUEINFO:
        if (text_ok(w, spans[1], where)) return -1;
        res->vi.name = spans[1];
        break;
    case K_TENSORTYPE:
        res->vi.elem = (int64_t)ival[1];
        break;
    case K_DIM:
        if (counts[1]) { res->dim.kind = 1; res->dim.value = (int64_t)ival[1]; }
        else if (counts[2]) {
            if (text_ok(w, spans[2], where)) return -1;
            res->dim.kind = 2;
        }
        break;
    case K_ENTRY:
        res->entry.key = spans[1];
        res->entry.value = spans[2];
        break;
    default:
        break;
    }
    return 0;
}

typedef struct { const uint8_t *p; size_t n; } namekey;

static int cmp_namekey(const void *a, const void *b) {
    const namekey *x = (const namekey *)a, *y = (const namekey *)b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static int name_is(walker *w, span s, const char *lit) { return s.set ? span_eq(w, s, lit) : lit[0] == 0; }

int smask_vet_graph(const uint8_t *g, size_t len, smask_pool *pool, smask_graph_info *info, smask_error *err) {
    walker w;
    summary top;
    size_t i, j;
    memset(&w, 0, sizeof w);
    memset(info, 0, sizeof *info);
    w.buf = g;
    w.len = len;
    w.pool = pool;
    w.err = err;
    if (len > MAX_GRAPH_BYTES) return smask_fail(err, SMASK_ERR_FORMAT, "graph: ONNX graph of %lu bytes; at most 4 MiB are allowed", (unsigned long)len);
    if (message(&w, K_MODEL, 0, len, 0, 0, &top)) return err ? err->code : SMASK_ERR_FORMAT;
    if (w.ninputs != 1 || !name_is(&w, w.inputs[0].name, "input"))
        return smask_fail(err, SMASK_ERR_FORMAT, "graph: inputs must be exactly ['input']");
    {
        vinfo *in = &w.inputs[0];
        if (in->elem != 1 || in->ndim < 2 || in->ndim > 4)
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: input must be float32 (N, d1[, d2[, d3]]) with fixed sizes");
        for (i = 1; i < in->ndim; i++) {
            if (in->dims[i].kind != 1 || in->dims[i].value < 1 || in->dims[i].value > (1 << 20))
                return smask_fail(err, SMASK_ERR_FORMAT, "graph: input must be float32 (N, d1[, d2[, d3]]) with fixed sizes");
            info->input_dims[i - 1] = (uint64_t)in->dims[i].value;
        }
        info->input_ndim = in->ndim - 1;
    }
    if (w.noutputs != 1 || !name_is(&w, w.outputs[0].name, "logits"))
        return smask_fail(err, SMASK_ERR_FORMAT, "graph: outputs must be exactly ['logits']");
    if (w.outputs[0].elem != 1 || w.outputs[0].ndim != 2)
        return smask_fail(err, SMASK_ERR_FORMAT, "graph: output must be float32 (N, classes)");
    if (w.outputs[0].dims[1].kind == 1) {
        info->has_classes = 1;
        info->classes = w.outputs[0].dims[1].value;
    }
    if (w.ninits > 1) {
        namekey *keys = (namekey *)smask_pool_get(pool, w.ninits * sizeof(namekey));
        if (!keys) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory reading the graph");
        for (i = 0; i < w.ninits; i++) {
            keys[i].p = g + w.inits[i].name.s;
            keys[i].n = w.inits[i].name.n;
        }
        qsort(keys, w.ninits, sizeof(namekey), cmp_namekey);
        for (i = 1; i < w.ninits; i++)
            if (cmp_namekey(&keys[i - 1], &keys[i]) == 0)
                return smask_fail(err, SMASK_ERR_FORMAT, "graph: initializer name is repeated");
    }
    info->ph = (smask_placeholder *)smask_pool_get(pool, (w.ninits + 1) * sizeof(smask_placeholder));
    if (!info->ph) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory reading the graph");
    for (i = 0; i < w.ninits; i++) {
        initsum *t = &w.inits[i];
        uint64_t size = 1;
        if (name_is(&w, t->name, "input") || name_is(&w, t->name, "logits"))
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: an initializer is named like the graph's input or output");
        if (!t->external) continue;
        if (!span_eq(&w, t->location, "supermask:tensor"))
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: an initializer refers to external data other than 'supermask:tensor'");
        if (t->data_type != 1) return smask_fail(err, SMASK_ERR_FORMAT, "graph: a placeholder must be float32");
        {
            /* 1 to 200 printable ASCII characters (a final newline is tolerated, as the
               reference reader's pattern does) */
            size_t n = t->name.n, k;
            const uint8_t *p = g + t->name.s;
            if (n && p[n - 1] == '\n') n--;
            if (n < 1 || n > 200) return smask_fail(err, SMASK_ERR_FORMAT, "graph: placeholder name is not 1 to 200 printable ASCII characters");
            for (k = 0; k < n; k++)
                if (p[k] < 0x21 || p[k] > 0x7e)
                    return smask_fail(err, SMASK_ERR_FORMAT, "graph: placeholder name is not 1 to 200 printable ASCII characters");
        }
        if (t->ndim > SMASK_MAX_DIMS)
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: placeholder has more than %d dims (this reader's limit)", SMASK_MAX_DIMS);
        for (j = 0; j < t->ndim; j++) {
            if (t->dims[j] < 1 || t->dims[j] > 0x7fffffffu)
                return smask_fail(err, SMASK_ERR_FORMAT, "graph: placeholder dims must be 1 to 2^31-1 in all");
            size *= t->dims[j];
            if (size > 0x7fffffffu)
                return smask_fail(err, SMASK_ERR_FORMAT, "graph: placeholder dims must be 1 to 2^31-1 in all");
        }
        {
            smask_placeholder *ph = &info->ph[info->nph++];
            ph->name = g + t->name.s;
            ph->name_len = t->name.n;
            ph->ndim = t->ndim;
            for (j = 0; j < t->ndim; j++) ph->dims[j] = t->dims[j];
            ph->size = size;
        }
    }
    return SMASK_OK;
}

/* ------------------------------------------------------------------ nodes, for streaming inference */

/* The next field of a message in [*pos, end): number, wire type, varint/fixed value or the
 * byte range of a length-delimited value. -1 when malformed. */
static int pb_next(const uint8_t *b, size_t *pos, size_t end, uint64_t *field, int *wire, uint64_t *val,
                   size_t *vs, size_t *ve) {
    uint64_t key = 0, v = 0;
    int shift = 0, k;
    size_t p = *pos;
    for (;;) {
        if (p >= end || shift > 63) return -1;
        key |= (uint64_t)(b[p] & 0x7f) << shift;
        shift += 7;
        if (b[p++] < 0x80) break;
    }
    *field = key >> 3;
    *wire = (int)(key & 7);
    if (*wire == 0 || *wire == 2) {
        shift = 0;
        for (;;) {
            if (p >= end || shift > 63) return -1;
            v |= (uint64_t)(b[p] & 0x7f) << shift;
            shift += 7;
            if (b[p++] < 0x80) break;
        }
        if (*wire == 2) {
            if (v > end - p) return -1;
            *vs = p;
            *ve = p + (size_t)v;
            p += (size_t)v;
        }
    } else if (*wire == 1 || *wire == 5) {
        size_t n = *wire == 1 ? 8 : 4;
        if (n > end - p) return -1;
        for (k = (int)n - 1; k >= 0; k--) v = (v << 8) | b[p + (size_t)k];
        *vs = p;
        p += n;
    } else {
        return -1;
    }
    *val = v;
    *pos = p;
    return 0;
}

static int read_varints(const uint8_t *b, size_t s, size_t e, int64_t *out, size_t cap, size_t *n) {
    while (s < e) {
        uint64_t v = 0;
        int shift = 0;
        for (;;) {
            if (s >= e || shift > 63) return -1;
            v |= (uint64_t)(b[s] & 0x7f) << shift;
            shift += 7;
            if (b[s++] < 0x80) break;
        }
        if (*n < cap) out[*n] = (int64_t)v;
        (*n)++;
    }
    return 0;
}

static int read_attr(const uint8_t *b, size_t s, size_t e, smask_gattr *a) {
    size_t pos = s, vs = 0, ve = 0;
    uint64_t field, val;
    int wire;
    memset(a, 0, sizeof *a);
    while (pos < e) {
        if (pb_next(b, &pos, e, &field, &wire, &val, &vs, &ve)) return -1;
        if (field == 1 && wire == 2) { a->name.p = b + vs; a->name.n = ve - vs; }
        else if (field == 2 && wire == 5) {
            uint32_t u = (uint32_t)val;
            memcpy(&a->f, &u, 4);
            a->has_f = 1;
        } else if (field == 3 && wire == 0) { a->i = (int64_t)val; a->has_i = 1; }
        else if (field == 4 && wire == 2) { a->s.p = b + vs; a->s.n = ve - vs; a->has_s = 1; }
        else if (field == 5 && wire == 2) { a->t.p = b + vs; a->t.n = ve - vs; }
        else if (field == 8 && wire == 0) {
            if (a->nints < SMASK_ATTR_INTS) a->ints[a->nints] = (int64_t)val;
            a->nints++;
        } else if (field == 8 && wire == 2) {
            if (read_varints(b, vs, ve, a->ints, SMASK_ATTR_INTS, &a->nints)) return -1;
        } else if (field != 20 && field != 13 && field != 21) {
            a->has_other = 1; /* floats, strings, graphs, tensors lists, types */
        }
    }
    return 0;
}

static int read_node(const uint8_t *b, size_t s, size_t e, smask_gnode *n) {
    size_t pos = s, vs = 0, ve = 0;
    uint64_t field, val;
    int wire;
    memset(n, 0, sizeof *n);
    while (pos < e) {
        if (pb_next(b, &pos, e, &field, &wire, &val, &vs, &ve)) return -1;
        if (wire != 2) continue;
        if (field == 1) {
            if (n->nin < SMASK_NODE_IO) { n->in[n->nin].p = b + vs; n->in[n->nin].n = ve - vs; }
            n->nin++;
        } else if (field == 2) {
            if (n->nout < SMASK_NODE_IO) { n->out[n->nout].p = b + vs; n->out[n->nout].n = ve - vs; }
            n->nout++;
        } else if (field == 4) {
            n->op.p = b + vs;
            n->op.n = ve - vs;
        } else if (field == 5) {
            if (n->nattr < SMASK_NODE_ATTRS && read_attr(b, vs, ve, &n->attr[n->nattr])) return -1;
            n->nattr++;
        }
    }
    return 0;
}

int smask_graph_nodes(const uint8_t *g, size_t len, smask_pool *pool, size_t max_nodes, smask_gnode **nodes,
                      size_t *count, smask_error *err) {
    size_t pos = 0, vs = 0, ve = 0, gs = 0, ge = 0, n = 0;
    uint64_t field, val;
    int wire, have = 0;
    *nodes = NULL;
    *count = 0;
    while (pos < len) {
        if (pb_next(g, &pos, len, &field, &wire, &val, &vs, &ve))
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: malformed model");
        if (field == 7 && wire == 2) { gs = vs; ge = ve; have = 1; }
    }
    if (!have) return smask_fail(err, SMASK_ERR_FORMAT, "graph: model has no graph");
    for (pos = gs; pos < ge;) { /* count the nodes */
        if (pb_next(g, &pos, ge, &field, &wire, &val, &vs, &ve))
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: malformed graph");
        if (field == 1 && wire == 2) n++;
    }
    if (n > max_nodes)
        return smask_fail(err, SMASK_ERR_LIMIT, "the graph has %lu nodes; streaming inference takes at most %lu",
                          (unsigned long)n, (unsigned long)max_nodes);
    *nodes = (smask_gnode *)smask_pool_get(pool, (n ? n : 1) * sizeof(smask_gnode));
    if (!*nodes) return smask_fail(err, SMASK_ERR_NOMEM, "out of memory reading the graph's nodes");
    for (pos = gs; pos < ge;) {
        if (pb_next(g, &pos, ge, &field, &wire, &val, &vs, &ve))
            return smask_fail(err, SMASK_ERR_FORMAT, "graph: malformed graph");
        if (field == 1 && wire == 2) {
            if (read_node(g, vs, ve, &(*nodes)[*count])) return smask_fail(err, SMASK_ERR_FORMAT, "graph: malformed node");
            (*count)++;
        }
    }
    return 0;
}

int smask_graph_tensor(smask_bytes t, smask_gtensor *out) {
    size_t pos = 0, vs = 0, ve = 0;
    uint64_t field, val;
    int wire;
    memset(out, 0, sizeof *out);
    while (pos < t.n) {
        if (pb_next(t.p, &pos, t.n, &field, &wire, &val, &vs, &ve)) return -1;
        if (field == 1) {
            if (wire == 0) {
                if (out->ndim < 8) out->dims[out->ndim] = val;
                out->ndim++;
            } else if (wire == 2) {
                int64_t tmp[8];
                size_t k, before = out->ndim;
                if (read_varints(t.p, vs, ve, tmp, 8, &out->ndim)) return -1;
                for (k = before; k < out->ndim && k < 8; k++) out->dims[k] = (uint64_t)tmp[k];
            }
        } else if (field == 2 && wire == 0) out->data_type = (int64_t)val;
        else if (field == 4) {
            if (wire == 2) { out->floats.p = t.p + vs; out->floats.n = ve - vs; out->nfloat_fields++; }
            else out->other_data = 1;
        } else if (field == 9 && wire == 2) { out->raw.p = t.p + vs; out->raw.n = ve - vs; }
        else if (field == 5 || field == 6 || field == 7 || field == 10 || field == 11 || field == 13 || field == 14 ||
                 field == 3) out->other_data = 1;
    }
    return 0;
}
