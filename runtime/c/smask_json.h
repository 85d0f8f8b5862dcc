/* Internal: the JSON tree of a ticket header. Not part of the API. */
#ifndef SMASK_JSON_H
#define SMASK_JSON_H

#include "smask_int.h"

enum { J_NULL = 1, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct {
    uint8_t type;
    uint8_t isint;   /* numbers: written without fraction or exponent */
    uint8_t neg;     /* numbers: leading minus */
    uint8_t fits;    /* integers: magnitude fits in 64 bits (then in mag) */
    uint32_t next;   /* next sibling + 1, 0 at the end */
    uint32_t child;  /* first child + 1 */
    uint32_t count;  /* children */
    uint32_t key_off, key_len, key_cps; /* member name (objects' children), in strbuf */
    uint32_t off, len, cps; /* strings: in strbuf (cps: code points); numbers: text in src */
    uint64_t mag;
} jnode;

typedef struct {
    const uint8_t *src;
    uint8_t *strbuf;
    size_t strlen;
    jnode *nodes;
    size_t count;
    uint32_t root;
    smask_pool *pool;
} jdoc;

int smask_json_parse(const uint8_t *s, size_t n, smask_pool *pool, jdoc *doc, smask_error *err);
int smask_json_get(const jdoc *d, uint32_t obj, const char *key); /* -1 if absent */
int smask_json_has_exactly(const jdoc *d, uint32_t obj, const char *const *keys); /* NULL-ended */
int smask_json_str_eq(const jdoc *d, uint32_t i, const char *lit);
double smask_json_double(const jdoc *d, uint32_t i);

#define JFIRST(d, i) ((d)->nodes[i].child)
#define JNEXT(d, c) ((d)->nodes[(c) - 1].next)
#endif
