/* Private header of nnunet_export._core. Every C file includes it first.
 *
 * Ownership: module state owns one strong reference to each exception type; functions named
 * nx_* return new references unless their comment says "borrowed". */
#ifndef NNUNET_EXPORT_H
#define NNUNET_EXPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* One NumPy C-API table for all translation units; only module.c imports it. */
#define PY_ARRAY_UNIQUE_SYMBOL nnunet_export_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#ifndef NX_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stddef.h>
#include <stdint.h>

#define NX_VERSION "0.1.0"

/* ---- JSON documents (json_read.c) for the plans reader ----
 * Each failing jr_* function sets doc->error with "<file>: <key path>: <reason>" and returns -1
 * (NULL for functions returning pointers). cJSON nodes are borrowed from the document. */
struct cJSON;
#define JR_PATH_MAX 512

typedef struct {
    PyObject *error;                  /* borrowed: exception type raised on bad input */
    const char *file;                 /* borrowed: file name shown in every message */
    char *text;                       /* owned (PyMem): file contents, NUL-terminated */
    size_t size;                      /* bytes in text, without the NUL */
    struct cJSON *root;               /* owned: parsed tree */
    const struct cJSON **float_nodes; /* owned (PyMem): number nodes written as floats, sorted */
    size_t n_float_nodes;
} jr_doc;

void jr_init(jr_doc *doc, PyObject *error, const char *file);
int jr_load(jr_doc *doc, size_t max_bytes);
void jr_release(jr_doc *doc);
int jr_fail(const jr_doc *doc, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void jr_path_key(char *buf, const char *parent, const char *key);
void jr_path_index(char *buf, const char *parent, Py_ssize_t index);
const char *jr_type_name(const struct cJSON *item);
const struct cJSON *jr_find(const struct cJSON *object, const char *key);
int jr_require(const jr_doc *doc, const char *parent_path, const struct cJSON *object,
               const char *key, const struct cJSON **out);
int jr_expect(const jr_doc *doc, const char *path, const struct cJSON *item, int type,
              const char *what);
int jr_as_int(const jr_doc *doc, const char *path, const struct cJSON *item, long long min,
              long long max, long long *out);
int jr_as_string(const jr_doc *doc, const char *path, const struct cJSON *item, const char **out);
Py_ssize_t jr_array_size(const struct cJSON *array);
PyObject *jr_string_to_python(const jr_doc *doc, const char *path, const char *s);
PyObject *jr_to_python(const jr_doc *doc, const char *path, const struct cJSON *item);

/* ---- plans reader internals (plans.c, plans_arch.c, labels.c) ----
 * Each adds its fields to `out` (a dict) and returns 0, or -1 with an exception set. */
typedef struct plans_config plans_config; /* resolved configuration, defined in plans.c */
const struct cJSON *plans_config_get(const plans_config *cfg, const char *key, char *path);
int arch_resolve(const jr_doc *plans, const plans_config *cfg, Py_ssize_t ndim, PyObject *out);
int labels_resolve(const jr_doc *dataset, int is_cascade_stage, Py_ssize_t *num_channels,
                   PyObject *out);

typedef struct {
    PyObject *ExportError;           /* base of every error raised for bad user input */
    PyObject *CheckpointError;       /* unreadable or malformed checkpoint file */
    PyObject *UnsafeCheckpointError; /* checkpoint asks for a global outside the allowlist */
    PyObject *PlansError;            /* plans.json / dataset.json problems */
    PyObject *WeightsMismatchError;  /* state dict does not fit the network */
    /* checkpoint reader state (owned references, may be NULL until first use) */
    PyObject *ordered_dict_type;     /* collections.OrderedDict */
} nx_state;

/* Returns the module state of the _core module `module` (borrowed, never NULL). */
static inline nx_state *nx_get_state(PyObject *module)
{
    return (nx_state *)PyModule_GetState(module);
}

/* Each concern adds its Python-visible functions to the module.
 * Returns 0 on success, -1 with an exception set. */
int nx_add_checkpoint_functions(PyObject *module);
int nx_add_plans_functions(PyObject *module);
int nx_add_thread_functions(PyObject *module);
int nx_add_metadata_functions(PyObject *module);

#endif /* NNUNET_EXPORT_H */
