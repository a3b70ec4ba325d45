/* Private header of nnunet_export._core. Every C file includes it first.
 *
 * Ownership: module state owns one strong reference to each exception type; functions named
 * nx_* return new references unless their comment says "borrowed". */
#ifndef NNUNET_EXPORT_H
#define NNUNET_EXPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>

/* One NumPy C-API table for all translation units; only module.c imports it. */
#define PY_ARRAY_UNIQUE_SYMBOL nnunet_export_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#ifndef NX_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>


#define NX_VERSION "0.1.0"

/* Little-endian integers of the ZIP container and the pickle, read byte by byte (any alignment). */
static inline uint16_t nx_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t nx_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t nx_le64(const uint8_t *p) { return nx_le32(p) | ((uint64_t)nx_le32(p + 4) << 32); }

/* Number of elements of a C array (not a pointer). */
#define NX_COUNT(array) (sizeof(array) / sizeof((array)[0]))

/* ---- JSON documents (json_read.c) for the plans reader ----
 * Each failing jr_* function sets doc->error with "<file>: <key path>: <reason>" and returns -1
 * (NULL for functions returning pointers). cJSON nodes are borrowed from the document. */
struct cJSON;
#define JR_PATH_MAX 512

/* Reasons shared by every JSON reader (the key path comes before them). */
#define kTypeError "expected %s, found %s"
#define kMissingError "missing required key"
#define kLengthError "expected %zd entries (%s), found %zd"

typedef struct {
    PyObject *error;                  /* borrowed: exception type raised on bad input */
    const char *file;                 /* borrowed: file name (or in-memory source) in messages */
    char *text;                       /* owned (PyMem): file contents, NUL-terminated */
    size_t size;                      /* bytes in text, without the NUL */
    struct cJSON *root;               /* owned: parsed tree */
    const struct cJSON **float_nodes; /* owned (PyMem): number nodes written as floats, sorted */
    size_t n_float_nodes;
} jr_doc;

void jr_init(jr_doc *doc, PyObject *error, const char *file);
/* Reads doc->file (jr_load) or copies `len` bytes of `data` (jr_load_buffer), then parses. */
int jr_load(jr_doc *doc, size_t max_bytes);
int jr_load_buffer(jr_doc *doc, const char *data, size_t len, size_t max_bytes);
void jr_release(jr_doc *doc);
int jr_fail(const jr_doc *doc, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like jr_fail, with exception `type` instead of doc->error. */
int jr_fail_as(const jr_doc *doc, PyObject *type, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Describes a value for a message: numbers (16.0 when written so) and short strings verbatim,
 * anything else by its type. */
void jr_describe(const jr_doc *doc, const struct cJSON *item, char *buf, size_t n);
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
/* Sets out[key] = value and drops the reference to value (NULL: an exception is already set).
 * Returns 0, or -1. */
int jr_put(PyObject *out, const char *key, PyObject *value);
PyObject *jr_string_to_python(const jr_doc *doc, const char *path, const char *s);
PyObject *jr_to_python(const jr_doc *doc, const char *path, const struct cJSON *item);

/* ---- plans reader internals (plans.c, plans_arch.c, labels.c) ----
 * Each adds its fields to `out` (a dict) and returns 0, or -1 with an exception set. */
typedef struct plans_config plans_config; /* resolved configuration, defined in plans.c */
const struct cJSON *plans_config_get(const plans_config *cfg, const char *key, char *path);
int arch_resolve(const jr_doc *plans, const plans_config *cfg, Py_ssize_t ndim, PyObject *out);
/* out["resampling"]: data / seg / probabilities function names and checked kwargs
 * (plans_resampling.c). */
int plans_resampling(const plans_config *cfg, const jr_doc *doc, PyObject *out);

/* Where arch_kwargs being checked live (arch_kwargs.c): a plans file's architecture block, the
 * old plans keys they were converted from, or a document handed to check_arch_kwargs. */
typedef struct {
    const jr_doc *doc;        /* borrowed */
    const plans_config *cfg;  /* borrowed; NULL outside a plans file */
    const char *kwargs_path;  /* borrowed: key path of arch_kwargs ("" for a bare document) */
    const char *axes_why;     /* borrowed: why a kernel size has ndim entries, for messages */
    PyObject *unsupported;    /* borrowed: UnsupportedArchitectureError */
    int converted;            /* 1 when arch_kwargs was built from old plans keys */
} arch_ctx;

/* Checks arch_kwargs of PlainConvUNet / ResidualEncoderUNet (`class_name`, dotted or bare)
 * against what their constructors assert; other classes pass. Returns 0, or -1 with PlansError. */
int arch_check_structure(const arch_ctx *ctx, const char *class_name, const struct cJSON *kwargs,
                         Py_ssize_t ndim);
/* Key path of kwarg `name` (its old plans key when converted) into `path` (JR_PATH_MAX). */
void arch_kw_path(const arch_ctx *ctx, const char *name, char *path);
int nx_add_arch_functions(PyObject *module);

/* Python value (dict/list/tuple/str/int/float/bool/None) as a cJSON tree (metadata_json.c);
 * messages name `root_path`. NULL with ExportError / MemoryError set. */
struct cJSON *nx_python_to_cjson(PyObject *module, PyObject *obj, PyObject *root_path);
int labels_resolve(const jr_doc *dataset, int is_cascade_stage, Py_ssize_t *num_channels,
                   PyObject *out);

typedef struct {
    PyObject *ExportError;           /* base of every error raised for bad user input */
    PyObject *CheckpointError;       /* unreadable or malformed checkpoint file */
    PyObject *UnsafeCheckpointError; /* checkpoint asks for a global outside the allowlist */
    PyObject *PlansError;            /* plans.json / dataset.json problems */
    PyObject *UnsupportedArchitectureError; /* network class, op or keyword not built here */
    PyObject *WeightsMismatchError;  /* state dict does not fit the network */
    /* checkpoint reader state (owned references, set at module init) */
    PyObject *ordered_dict_type;     /* collections.OrderedDict */
    PyObject *mapping_type;          /* nnunet_export._core._Mapping (heap type, set at init) */
    PyObject *lazy_type;             /* nnunet_export._core._Lazy (heap type, set at init) */
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

/* torch's intra-op thread count: through the stable C ABI when bound (threads.c), else
 * torch.get_num_threads(). Returns -1 with an exception set on failure. */
long nx_torch_num_threads(void);

/* ---- checkpoint reader (mapping.c, zip_container.c, crc32.c, pickle_globals.c, unpickler.c,
 *      unpickler_objects.c, materialize.c, tensor_rebuild.c, checkpoint.c) ----
 * Ownership: an nx_mapping owns its private file mapping; every NumPy array and tensor over file
 * bytes holds a reference to it. nx_zip entries point INTO the mapping (borrowed, no copies). */

/* Takes the raised exception (normalised, new reference, NULL if none) across Python versions:
 * PyErr_Fetch is deprecated from 3.12, PyErr_GetRaisedException does not exist before. */
static inline PyObject *nx_take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raises `exc` again (steals the reference). */
static inline void nx_restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* A private (MAP_PRIVATE) read/write mapping of one whole file, exposed via the buffer protocol. */
typedef struct {
    PyObject_HEAD
    uint8_t *base;   /* owned mmap of `size` bytes; writes never reach the file */
    uint64_t size;   /* file size in bytes, > 0 */
    PyObject *path;  /* owned str, for messages */
} nx_mapping;

/* Opens and maps `path` (str). Returns a new nx_mapping or NULL with CheckpointError/OSError set. */
PyObject *nx_mapping_open(nx_state *st, PyObject *path);
/* New nx_mapping over `size` bytes of zeroed anonymous memory (no file); `path` names the
 * checkpoint its bytes come from. NULL with an exception set. */
PyObject *nx_mapping_anonymous(nx_state *st, PyObject *path, uint64_t size);
/* Unmaps the pages of an anonymous nx_mapping past its first `used` bytes (at least one page
 * stays). Never fails: a refused munmap only keeps the reservation. */
void nx_mapping_trim(nx_mapping *m, uint64_t used);
int nx_mapping_add_type(PyObject *module);

/* One STORED ZIP entry, validated against the file bounds from the central directory; its local
 * header is checked (and data_offset set) only when the entry is opened, so untouched entries
 * (optimizer storages) cost no page faults. */
typedef struct {
    const char *name;     /* borrowed from the mapping, not NUL-terminated */
    size_t name_len;
    uint64_t central_at;    /* central directory record, for messages */
    uint64_t header_offset; /* local header */
    uint64_t limit;         /* next entry's local header (or the central directory) */
    uint64_t data_offset;   /* first payload byte; valid once opened */
    uint64_t size;          /* payload bytes (stored: compressed == uncompressed) */
    uint32_t crc;           /* CRC32 from the central directory */
    int opened;             /* local header checked */
    int crc_checked;        /* CRC verified */
} nx_zip_entry;

typedef struct {
    nx_zip_entry *entries; /* owned (PyMem), sorted by name */
    size_t count;
    size_t prefix_len;     /* length of the archive folder name (entries start with it and '/') */
} nx_zip;

/* Parses the central directory of the mapped file. Returns 0, or -1 with CheckpointError set. */
int nx_zip_open(nx_state *st, const nx_mapping *map, nx_zip *zip);
void nx_zip_close(nx_zip *zip);
/* Entry named "<folder>/<suffix>" or NULL (no exception). */
nx_zip_entry *nx_zip_find(const nx_zip *zip, const char *suffix, size_t suffix_len);
/* Checks the entry's local header (sets data_offset) and, if verify_crc, its CRC32 with the GIL
 * released; each at most once. Returns 0, or -1 with CheckpointError set. */
int nx_zip_open_entry(nx_state *st, const nx_mapping *map, nx_zip_entry *e, int verify_crc);
/* CRC-32 (zlib polynomial) continuing from `crc`, through libdeflate (crc32.c). No GIL needed. */
uint32_t nx_crc32(uint32_t crc, const uint8_t *p, uint64_t len);
/* Raises CheckpointError: entry `e` computed `got` instead of its stored CRC-32. */
void nx_zip_crc_error(nx_state *st, const nx_mapping *map, const nx_zip_entry *e, uint32_t got);
int nx_crc32_add_functions(PyObject *module);

/* Globals the unpickler recognises. Anything else becomes NX_G_UNSAFE and is never constructed. */
typedef enum {
    NX_G_UNSAFE = 0,
    NX_G_ORDERED_DICT,
    NX_G_REBUILD_TENSOR_V2,
    NX_G_REBUILD_TENSOR_V3,
    NX_G_REBUILD_PARAMETER,
    NX_G_STORAGE,         /* torch.<X>Storage / torch.UntypedStorage; sub = dtype index */
    NX_G_TORCH_DTYPE,     /* torch.float32 ...; sub = dtype index */
    NX_G_DEVICE,
    NX_G_NP_SCALAR,
    NX_G_NP_DTYPE,
    NX_G_NP_DTYPE_CLASS,  /* numpy.dtypes.Float64DType ...; sub = index in nx_np_dtype_classes */
    NX_G_CODECS_ENCODE,
} nx_global_id;

typedef enum { NX_LAZY_GLOBAL, NX_LAZY_CALL, NX_LAZY_PERSID } nx_lazy_kind;

/* Placeholder the unpickler leaves where a real Python object would be constructed. */
typedef struct {
    PyObject_HEAD
    int kind;          /* nx_lazy_kind */
    int global_id;     /* nx_global_id, for NX_LAZY_GLOBAL */
    int sub;           /* dtype index (storage / dtype globals), numpy.dtypes class index */
    int newobj;        /* CALL came from NEWOBJ rather than REDUCE */
    PyObject *name;    /* owned str "module.qualname" (GLOBAL) */
    PyObject *func;    /* owned: callee (CALL) */
    PyObject *args;    /* owned: argument tuple (CALL) or persistent id (PERSID) */
    PyObject *state;   /* owned or NULL: BUILD state (CALL) */
} nx_lazy;

typedef struct {
    const char *torch_name;   /* attribute of the torch module */
    const char *storage_name; /* legacy typed-storage class or NULL (v3-only dtypes) */
    int elsize;
} nx_dtype_info;

extern const nx_dtype_info nx_dtypes[];
extern const int nx_dtype_count;
#define NX_DTYPE_UINT8 8 /* index of uint8 in nx_dtypes (UntypedStorage elements) */
extern const char *const nx_np_dtype_classes[]; /* attribute names in numpy.dtypes */
extern const int nx_np_dtype_class_count;

int nx_lazy_add_type(PyObject *module);
/* New placeholder of `kind` with no fields set (NULL with an exception on failure). */
nx_lazy *nx_lazy_new(nx_state *st, int kind);
/* nx_global_id of "module.name" (NX_G_UNSAFE when not allowlisted); *sub = dtype/class index. */
int nx_classify_global(const char *module, const char *name, int *sub);

/* ---- pickle VM internals (unpickler.c, unpickler_objects.c) ---- */
typedef struct {
    nx_state *st;
    PyObject *path;         /* borrowed str: checkpoint path, for messages */
    const char *entry;      /* borrowed: name of the pickle entry, for messages */
    const uint8_t *data;    /* borrowed: the pickle bytes */
    uint64_t len;
    uint64_t pos;           /* next byte */
    uint64_t op_at;         /* offset of the current opcode */
    const char *op;         /* current opcode name */
    PyObject **stack;       /* owned (PyMem) array of owned references */
    size_t sp, stack_cap;
    size_t *marks;          /* owned (PyMem): stack heights at each MARK */
    size_t nmarks, marks_cap;
    PyObject **memo;        /* owned (PyMem) array of owned references or NULL */
    size_t memo_cap;
    PyObject *build_states; /* owned dict {id(OrderedDict): [obj, state, ...]} */
    PyObject *ordered_dict; /* borrowed type */
} upk_vm;

/* Every opcode family returns 1 at STOP, 0 to continue, -1 on error, and UPK_NOT_MINE when `op`
 * is not one of its opcodes. */
#define UPK_NOT_MINE 2

/* Raises CheckpointError naming the path, entry, opcode offset and name, and `why`; returns -1. */
int upk_fail(upk_vm *vm, const char *why);
/* Like upk_fail with `what`, replacing the pending Python exception and quoting its text. */
int upk_fail_from_python(upk_vm *vm, const char *what);
/* Consumes the next `n` bytes; NULL with CheckpointError when the pickle ends first. */
const uint8_t *upk_read(upk_vm *vm, uint64_t n);
/* Pushes `obj` (stolen, also on failure; NULL means an exception is set). Returns 0, or -1. */
int upk_push(upk_vm *vm, PyObject *obj);
/* Pops (new reference) or peeks at (borrowed) the top item above the last MARK; NULL with
 * CheckpointError on underflow. */
PyObject *upk_pop(upk_vm *vm);
PyObject *upk_top(upk_vm *vm);
/* GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID (unpickler_objects.c): an opcode family as above. */
int upo_load_object(upk_vm *vm, uint8_t op);

/* Runs the protocol-2 pickle `data` (entry `entry` of checkpoint `path`). Returns the top object
 * with nx_lazy placeholders inside, and in *build_states a new dict {id(OrderedDict): [obj,
 * state, ...]} of BUILD states to apply later; NULL with CheckpointError set on bad input. */
PyObject *nx_unpickle(nx_state *st, PyObject *path, const char *entry, const uint8_t *data,
                      uint64_t len, PyObject **build_states);

/* The touched storages of one read, collected while the pickle is materialised and passed over
 * by nx_copy_plan_run afterwards (copy_out.c): a copying read places them in one anonymous arena
 * and fills it; a zero-copy read only checks their CRC-32s there. */
typedef struct {
    int copy;             /* 1: copy into the arena; 0: CRC-check the mapped bytes */
    PyObject *arena;      /* owned nx_mapping (anonymous) or NULL before the first storage */
    uint64_t used;        /* arena bytes handed out */
    size_t max_entries;   /* entries in the archive: bounds the alignment padding */
    struct cpy_job *jobs; /* owned (PyMem) */
    size_t count, capacity;
} nx_copy_plan;

/* Adds entry `e` to the pass and returns where its tensor bytes are: a place reserved in the
 * arena (not yet copied) or, without copy, the mapped bytes. NULL with an exception set. */
uint8_t *nx_copy_plan_add(nx_state *st, nx_copy_plan *plan, const nx_mapping *map, nx_zip_entry *e);
/* Copies (or only CRC-checks) every planned entry with up to `threads` threads (GIL released),
 * checking CRC-32s when `verify_crc`; 0, or -1 with CheckpointError naming the first corrupt
 * entry. */
int nx_copy_plan_run(nx_state *st, nx_copy_plan *plan, const nx_mapping *map, int verify_crc, int threads);
void nx_copy_plan_free(nx_copy_plan *plan);

/* Materialisation context of one read_checkpoint call. */
typedef struct {
    nx_state *st;
    nx_mapping *map;       /* borrowed */
    const nx_zip *zip;     /* borrowed */
    PyObject *path;        /* borrowed str */
    PyObject *factory;     /* borrowed trusted callable from the Python layer */
    PyObject *build_states;/* borrowed dict from nx_unpickle */
    PyObject *memo;        /* owned dict id(unpickled object) -> materialised object */
    PyObject *storages;    /* owned dict storage key -> (dtype index, base tensor, nbytes) */
    nx_copy_plan *pass;    /* borrowed; NULL: neither copy nor CRC check. With copy, storages
                            * leave the mapping (they survive in-place file rewrites) */
    int depth;             /* containers being materialised, at most 200 */
} nx_mat_ctx;

/* ---- materialiser internals (materialize.c, tensor_rebuild.c) ---- */
/* Key path of the value being materialised, kept on the C stack; rendered only for messages. */
typedef struct mat_path {
    const struct mat_path *parent; /* borrowed; NULL at the top-level key */
    PyObject *key;                 /* borrowed */
    int attribute;                 /* 1: rendered as .key, 0: as [repr(key)] (root: bare key) */
} mat_path;

/* The key path as text, e.g. "network_weights['conv.weight']". New reference or NULL. */
PyObject *mat_path_str(const mat_path *p);
/* Raises CheckpointError "checkpoint '<path>': <key path>: <why>"; returns NULL. */
PyObject *mat_fail(nx_mat_ctx *ctx, const mat_path *p, const char *why);
/* Raises UnsafeCheckpointError: the key path needs the non-allowlisted `global_name`; NULL. */
PyObject *mat_unsafe(nx_mat_ctx *ctx, const mat_path *p, PyObject *global_name);
/* 1 when `obj` is an nx_lazy placeholder of `kind`, else 0. */
int mat_is_lazy(nx_mat_ctx *ctx, PyObject *obj, int kind);
/* Passes on `result` of the trusted factory; torch rejecting values from the file (a bad device
 * string...) becomes a CheckpointError naming the key path instead of a bare RuntimeError. */
PyObject *mat_factory_result(nx_mat_ctx *ctx, const mat_path *p, PyObject *result);
/* Tensor of a _rebuild_tensor_v2 (v3 == 0) or _v3 call over its checked storage
 * (tensor_rebuild.c). New reference, or NULL with CheckpointError / UnsafeCheckpointError. */
PyObject *trb_tensor(nx_mat_ctx *ctx, nx_lazy *call, int v3, const mat_path *p);

/* Turns `obj` (top-level value of key `key`) into real objects. New reference or NULL. */
PyObject *nx_materialize(nx_mat_ctx *ctx, PyObject *key, PyObject *obj);

#endif /* NNUNET_EXPORT_H */
