/* Tensors and their storages for the materialiser (materialize.c):
 * _rebuild_tensor_v2/v3 calls are checked (dtype, size, stride, offset inside the storage) and
 * each storage persistent id becomes one base tensor over the entry's bytes, built on first use
 * and shared by every tensor that views it. */
#include "nnunet_export.h"

#include <string.h>

#define TRB_MAX_NDIM 64

static const char kTrbStorageSizeError[] =
    "checkpoint '%U': %U: storage entry '%s' holds %llu bytes but the pickle declares %llu";
static const char kTrbStorageMissingError[] =
    "checkpoint '%U': %U: storage '%s' (persistent id key %R) is missing from the archive";
static const char kTrbOutsideStorageError[] =
    "checkpoint '%U': %U: tensor (offset %lld, size %R, stride %R) reaches outside its storage of "
    "%lld elements";
/* Reasons (after the key path) */
static const char kTrbPersidError[] =
    "storage persistent id is not ('storage', type, key: str, location: str, numel: int >= 0)";
static const char kTrbStorageTypeError[] = "storage type is not a global";
static const char kTrbDtypeMismatchError[] = "typed storage and tensor dtype disagree";
static const char kTrbStorageOverflowError[] = "storage size in bytes overflows 64 bits";
static const char kTrbStorageElsizeError[] = "storage size is not a multiple of the tensor element size";
static const char kTrbKeyLengthError[] = "storage key longer than 256 bytes";
static const char kTrbStorageReuseError[] = "storage is used with two different dtypes or sizes";
static const char kTrbBuildStateError[] = "tensor rebuild with BUILD state is not supported";
static const char kTrbArgCountError[] = "tensor rebuild has the wrong number of arguments";
static const char kTrbNoStorageError[] = "tensor rebuild without a storage persistent id";
static const char kTrbOffsetError[] = "tensor storage offset is not an int in [0, 2**63)";
static const char kTrbShapeError[] = "tensor size and stride are not tuples of equal length (<= 64)";
static const char kTrbRequiresGradError[] = "tensor requires_grad is not a bool";
static const char kTrbHooksError[] = "tensor backward hooks must be empty";
static const char kTrbDtypeError[] = "tensor dtype is not a torch dtype global";
static const char kTrbMetadataError[] = "tensor metadata is not supported";
static const char kTrbStrideError[] = "tensor size or stride is not an int in [0, 2**63)";
static const char kTrbNumelOverflowError[] = "tensor element count overflows 64 bits";
static const char kTrbExtentOverflowError[] = "tensor extent overflows 64 bits";

/* Exact int in [0, INT64_MAX]; returns 0 and sets *out, or -1 (no exception set). */
static int trb_nonneg_int64(PyObject *obj, int64_t *out)
{
    int overflow = 0;
    if (!PyLong_CheckExact(obj)) {
        return -1;
    }
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || v < 0 || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}


/* Checks a storage persistent id ('storage', type, key, location, numel) against the tensor
 * dtype in *dtype (-1: the storage's own, which is then stored there) and sets *nbytes.
 * Returns 0, or -1 with CheckpointError / UnsafeCheckpointError set. */
static int trb_storage_layout(nx_mat_ctx *ctx, PyObject *pid, const mat_path *p, int *dtype,
                              uint64_t *nbytes)
{
    int64_t numel = 0;
    if (PyTuple_GET_SIZE(pid) != 5 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(pid, 0), "storage") != 0 ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 2)) ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 3)) ||
        trb_nonneg_int64(PyTuple_GET_ITEM(pid, 4), &numel) < 0) {
        mat_fail(ctx, p, kTrbPersidError);
        return -1;
    }
    nx_lazy *type = (nx_lazy *)PyTuple_GET_ITEM(pid, 1);
    if (!mat_is_lazy(ctx, (PyObject *)type, NX_LAZY_GLOBAL)) {
        mat_fail(ctx, p, kTrbStorageTypeError);
        return -1;
    }
    if (type->global_id != NX_G_STORAGE) {
        mat_unsafe(ctx, p, type->name);
        return -1;
    }
    if (*dtype < 0) {
        *dtype = type->sub;
    } else if (type->sub != NX_DTYPE_UINT8 && type->sub != *dtype) {
        mat_fail(ctx, p, kTrbDtypeMismatchError);
        return -1;
    }
    if (__builtin_mul_overflow((uint64_t)numel, (uint64_t)nx_dtypes[type->sub].elsize, nbytes)) {
        mat_fail(ctx, p, kTrbStorageOverflowError);
        return -1;
    }
    if (*nbytes % (uint64_t)nx_dtypes[*dtype].elsize != 0) {
        mat_fail(ctx, p, kTrbStorageElsizeError);
        return -1;
    }
    return 0;
}

/* The archive entry "data/<key>" of a storage, checked to hold exactly `nbytes` and opened (its
 * local header; CRC-32s are checked by the storage pass after materialisation, all threads at
 * once). Borrowed, or NULL with CheckpointError set. */
static nx_zip_entry *trb_storage_entry(nx_mat_ctx *ctx, PyObject *key, uint64_t nbytes,
                                       const mat_path *p)
{
    Py_ssize_t key_len = 0;
    const char *key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_len);
    char entry_name[300];
    PyObject *where = NULL;

    if (key_utf8 == NULL) {
        return NULL;
    }
    if (key_len > 256) {
        mat_fail(ctx, p, kTrbKeyLengthError);
        return NULL;
    }
    int n = snprintf(entry_name, sizeof entry_name, "data/%s", key_utf8);
    nx_zip_entry *e = nx_zip_find(ctx->zip, entry_name, (size_t)n);
    int found = e != NULL && strlen(key_utf8) == (size_t)key_len;
    if (found && e->size == nbytes) {
        return nx_zip_open_entry(ctx->st, ctx->map, e, 0) < 0 ? NULL : e;
    }
    where = mat_path_str(p);
    if (where == NULL) {
        return NULL;
    }
    if (!found) {
        PyErr_Format(ctx->st->CheckpointError, kTrbStorageMissingError, ctx->path, where, entry_name, key);
    } else {
        PyErr_Format(ctx->st->CheckpointError, kTrbStorageSizeError, ctx->path, where, entry_name,
                     (unsigned long long)e->size, (unsigned long long)nbytes);
    }
    Py_DECREF(where);
    return NULL;
}

/* Base tensor of `dtype` (through the trusted factory) over the bytes of opened entry `e`: the
 * mapped bytes (zero copy), or the entry's place in the copy plan's arena, which
 * nx_copy_plan_run fills and CRC-checks before read_checkpoint returns. New reference or NULL. */
static PyObject *trb_storage_base(nx_mat_ctx *ctx, nx_zip_entry *e, int dtype, const mat_path *p)
{
    npy_intp dims[1] = {(npy_intp)e->size};
    uint8_t *data = ctx->map->base + e->data_offset;
    PyObject *owner = (PyObject *)ctx->map;
    PyObject *array = NULL, *base = NULL;
    PyArray_Descr *descr = NULL;

    if (ctx->pass != NULL) {
        data = nx_copy_plan_add(ctx->st, ctx->pass, ctx->map, e);
        if (data == NULL) {
            return NULL;
        }
        if (ctx->pass->copy) {
            owner = ctx->pass->arena;
        }
    }
    descr = PyArray_DescrFromType(NPY_UINT8);
    if (descr == NULL) {
        return NULL;
    }
    /* No copy here: the array points into the mapping or the arena, which it keeps alive. */
    array = PyArray_NewFromDescr(&PyArray_Type, descr, 1, dims, NULL, data,
                                 NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_WRITEABLE, NULL);
    descr = NULL; /* stolen */
    if (array == NULL) {
        goto bail;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)array, Py_NewRef(owner)) < 0) {
        goto bail;
    }
    base = mat_factory_result(ctx, p, PyObject_CallFunction(ctx->factory, "sOs", "storage", array,
                                                            nx_dtypes[dtype].torch_name));
bail:
    Py_XDECREF(array);
    return base;
}

/* Base tensor for storage persistent id `persid` viewed as `tensor_dtype` (-1: the storage's
 * own), built on first use and cached in ctx->storages as (dtype index, base, nbytes); sets
 * *elements to its length in tensor elements. New reference, or NULL with an exception set. */
static PyObject *trb_storage(nx_mat_ctx *ctx, PyObject *persid, int tensor_dtype, const mat_path *p,
                             int64_t *elements)
{
    PyObject *pid = ((nx_lazy *)persid)->args;
    PyObject *key = NULL, *cached = NULL, *base = NULL, *record = NULL;
    nx_zip_entry *e = NULL;
    uint64_t nbytes = 0;

    if (trb_storage_layout(ctx, pid, p, &tensor_dtype, &nbytes) < 0) {
        return NULL;
    }
    *elements = (int64_t)(nbytes / (uint64_t)nx_dtypes[tensor_dtype].elsize);
    key = PyTuple_GET_ITEM(pid, 2);                       /* borrowed */
    cached = PyDict_GetItemWithError(ctx->storages, key); /* borrowed */
    if (cached != NULL) {
        if (PyLong_AsLong(PyTuple_GET_ITEM(cached, 0)) != tensor_dtype ||
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(cached, 2)) != nbytes) {
            return mat_fail(ctx, p, kTrbStorageReuseError);
        }
        return Py_NewRef(PyTuple_GET_ITEM(cached, 1));
    }
    if (PyErr_Occurred() || (e = trb_storage_entry(ctx, key, nbytes, p)) == NULL) {
        return NULL;
    }
    base = trb_storage_base(ctx, e, tensor_dtype, p);
    if (base == NULL) {
        return NULL;
    }
    record = Py_BuildValue("(iOK)", tensor_dtype, base, (unsigned long long)nbytes);
    if (record == NULL || PyDict_SetItem(ctx->storages, key, record) < 0) {
        Py_CLEAR(base);
    }
    Py_XDECREF(record);
    return base;
}

/* torch.save writes an empty OrderedDict: hooks are never serialised with content. */
static int trb_empty_hooks(nx_mat_ctx *ctx, PyObject *hooks)
{
    return hooks == Py_None ||
           (PyDict_Check(hooks) && PyDict_GET_SIZE(hooks) == 0 &&
            (PyDict_CheckExact(hooks) || Py_IS_TYPE(hooks, (PyTypeObject *)ctx->st->ordered_dict_type)));
}

static int trb_empty_metadata(PyObject *meta)
{
    return meta == Py_None || (PyDict_CheckExact(meta) && PyDict_GET_SIZE(meta) == 0);
}

/* Checks the arguments of a tensor rebuild other than size and stride's entries (see
 * trb_tensor); sets *offset and, for v3, *dtype. Returns 0, or -1 with an exception set. */
static int trb_tensor_args(nx_mat_ctx *ctx, nx_lazy *call, int v3, const mat_path *p,
                           int64_t *offset, int *dtype)
{
    PyObject *args = call->args;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t fixed = v3 ? 7 : 6;
    const char *why = NULL;

    if (call->state != NULL) {
        why = kTrbBuildStateError;
    } else if (nargs != fixed && nargs != fixed + 1) {
        why = kTrbArgCountError;
    } else if (!mat_is_lazy(ctx, PyTuple_GET_ITEM(args, 0), NX_LAZY_PERSID)) {
        why = kTrbNoStorageError;
    } else if (trb_nonneg_int64(PyTuple_GET_ITEM(args, 1), offset) < 0) {
        why = kTrbOffsetError;
    } else if (!PyTuple_CheckExact(PyTuple_GET_ITEM(args, 2)) ||
               !PyTuple_CheckExact(PyTuple_GET_ITEM(args, 3)) ||
               PyTuple_GET_SIZE(PyTuple_GET_ITEM(args, 2)) != PyTuple_GET_SIZE(PyTuple_GET_ITEM(args, 3)) ||
               PyTuple_GET_SIZE(PyTuple_GET_ITEM(args, 2)) > TRB_MAX_NDIM) {
        why = kTrbShapeError;
    } else if (!PyBool_Check(PyTuple_GET_ITEM(args, 4))) {
        why = kTrbRequiresGradError;
    } else if (!trb_empty_hooks(ctx, PyTuple_GET_ITEM(args, 5))) {
        why = kTrbHooksError;
    }
    if (why != NULL) {
        mat_fail(ctx, p, why);
        return -1;
    }
    if (v3) {
        nx_lazy *dt = (nx_lazy *)PyTuple_GET_ITEM(args, 6);
        if (!mat_is_lazy(ctx, (PyObject *)dt, NX_LAZY_GLOBAL)) {
            mat_fail(ctx, p, kTrbDtypeError);
            return -1;
        }
        if (dt->global_id != NX_G_TORCH_DTYPE) {
            mat_unsafe(ctx, p, dt->name);
            return -1;
        }
        *dtype = dt->sub;
    }
    if (nargs == fixed + 1 && !trb_empty_metadata(PyTuple_GET_ITEM(args, fixed))) {
        mat_fail(ctx, p, kTrbMetadataError);
        return -1;
    }
    return 0;
}

/* Element count and the offset of the last element (from the first) of the (size, stride) view.
 * Returns 0, or -1 with CheckpointError set. */
static int trb_extent(nx_mat_ctx *ctx, PyObject *size, PyObject *stride, const mat_path *p,
                      int64_t *numel, int64_t *last)
{
    *numel = 1;
    *last = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(size); i++) {
        int64_t s = 0, st = 0, span = 0;
        const char *why = NULL;
        if (trb_nonneg_int64(PyTuple_GET_ITEM(size, i), &s) < 0 ||
            trb_nonneg_int64(PyTuple_GET_ITEM(stride, i), &st) < 0) {
            why = kTrbStrideError;
        } else if (__builtin_mul_overflow(*numel, s, numel)) {
            why = kTrbNumelOverflowError;
        } else if (s > 0 && (__builtin_mul_overflow(s - 1, st, &span) || __builtin_add_overflow(*last, span, last))) {
            why = kTrbExtentOverflowError;
        }
        if (why != NULL) {
            mat_fail(ctx, p, why);
            return -1;
        }
    }
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]). */
PyObject *trb_tensor(nx_mat_ctx *ctx, nx_lazy *call, int v3, const mat_path *p)
{
    PyObject *args = call->args;
    int64_t offset = 0, elements = 0, numel = 1, last = 0;
    int tensor_dtype = -1;
    PyObject *base = NULL, *result = NULL, *where = NULL;

    if (trb_tensor_args(ctx, call, v3, p, &offset, &tensor_dtype) < 0) {
        return NULL;
    }
    PyObject *size = PyTuple_GET_ITEM(args, 2), *stride = PyTuple_GET_ITEM(args, 3);
    /* Bounds: every element the (size, stride, offset) view reaches must lie in the storage. */
    if (trb_extent(ctx, size, stride, p, &numel, &last) < 0) {
        return NULL;
    }
    base = trb_storage(ctx, PyTuple_GET_ITEM(args, 0), tensor_dtype, p, &elements);
    if (base == NULL) {
        return NULL;
    }
    if (numel == 0 ? offset > elements : (__builtin_add_overflow(last, offset, &last) || last >= elements)) {
        where = mat_path_str(p);
        if (where != NULL) {
            PyErr_Format(ctx->st->CheckpointError, kTrbOutsideStorageError, ctx->path, where,
                         (long long)offset, size, stride, (long long)elements);
        }
        goto bail;
    }
    result = mat_factory_result(ctx, p, PyObject_CallFunction(ctx->factory, "sOLOOO", "tensor", base,
                                                              (long long)offset, size, stride,
                                                              PyTuple_GET_ITEM(args, 4)));
bail:
    Py_XDECREF(where);
    Py_XDECREF(base);
    return result;
}
