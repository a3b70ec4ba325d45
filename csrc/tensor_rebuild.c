/* Tensors and their storages for the materialiser (materialize.c):
 * _rebuild_tensor_v2/v3 calls are checked (dtype, size, stride, offset inside the storage) and
 * each storage persistent id becomes one base tensor over the entry's bytes, built on first use
 * and shared by every tensor that views it. */
#include "nnunet_export.h"

#include <string.h>

#define TRB_MAX_NDIM 64

static const char kTrbStorageSizeError[] =
    "checkpoint '%U': %U: storage entry '%s' holds %llu bytes but the pickle declares %llu";

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

/* Returns (dtype index, base tensor) for a storage persistent id, building it on first use:
 * checks the entry and wraps its bytes: the mapped bytes (zero copy), or the entry's place in
 * the copy plan's arena. nx_copy_plan_run fills the arena and checks CRC-32s before
 * read_checkpoint returns. */
static PyObject *trb_storage(nx_mat_ctx *ctx, PyObject *persid, int tensor_dtype, const mat_path *p,
                             int64_t *elements)
{
    nx_lazy *z = (nx_lazy *)persid;
    PyObject *pid = z->args;
    PyObject *cached = NULL, *array = NULL, *base = NULL, *record = NULL;
    PyArray_Descr *descr = NULL;
    int64_t numel = 0;
    uint64_t nbytes = 0;

    if (PyTuple_GET_SIZE(pid) != 5 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(pid, 0), "storage") != 0 ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 2)) ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(pid, 3)) ||
        trb_nonneg_int64(PyTuple_GET_ITEM(pid, 4), &numel) < 0) {
        return mat_fail(ctx, p, "storage persistent id is not ('storage', type, key: str, "
                                "location: str, numel: int >= 0)");
    }
    PyObject *type = PyTuple_GET_ITEM(pid, 1), *key = PyTuple_GET_ITEM(pid, 2);
    if (!mat_is_lazy(ctx, type, NX_LAZY_GLOBAL)) {
        return mat_fail(ctx, p, "storage type is not a global");
    }
    if (((nx_lazy *)type)->global_id != NX_G_STORAGE) {
        return mat_unsafe(ctx, p, ((nx_lazy *)type)->name);
    }
    int storage_dtype = ((nx_lazy *)type)->sub;
    int elsize = nx_dtypes[storage_dtype].elsize;
    if (tensor_dtype < 0) {
        tensor_dtype = storage_dtype;
    } else if (storage_dtype != NX_DTYPE_UINT8 && storage_dtype != tensor_dtype) {
        return mat_fail(ctx, p, "typed storage and tensor dtype disagree");
    }
    if (__builtin_mul_overflow((uint64_t)numel, (uint64_t)elsize, &nbytes)) {
        return mat_fail(ctx, p, "storage size in bytes overflows 64 bits");
    }
    int tensor_elsize = nx_dtypes[tensor_dtype].elsize;
    if (nbytes % (uint64_t)tensor_elsize != 0) {
        return mat_fail(ctx, p, "storage size is not a multiple of the tensor element size");
    }
    *elements = (int64_t)(nbytes / (uint64_t)tensor_elsize);

    cached = PyDict_GetItemWithError(ctx->storages, key); /* borrowed */
    if (cached != NULL) {
        if (PyLong_AsLong(PyTuple_GET_ITEM(cached, 0)) != tensor_dtype ||
            PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(cached, 2)) != nbytes) {
            return mat_fail(ctx, p, "storage is used with two different dtypes or sizes");
        }
        return Py_NewRef(PyTuple_GET_ITEM(cached, 1));
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t key_len = 0;
    const char *key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_len);
    if (key_utf8 == NULL) {
        return NULL;
    }
    char entry_name[300];
    if (key_len > 256) {
        return mat_fail(ctx, p, "storage key longer than 256 bytes");
    }
    int n = snprintf(entry_name, sizeof entry_name, "data/%s", key_utf8);
    nx_zip_entry *e = nx_zip_find(ctx->zip, entry_name, (size_t)n);
    if (e == NULL || strlen(key_utf8) != (size_t)key_len) {
        PyObject *where = mat_path_str(p);
        if (where != NULL) {
            PyErr_Format(ctx->st->CheckpointError,
                         "checkpoint '%U': %U: storage '%s' (persistent id key %R) is missing "
                         "from the archive", ctx->path, where, entry_name, key);
            Py_DECREF(where);
        }
        return NULL;
    }
    if (e->size != nbytes) {
        PyObject *where = mat_path_str(p);
        if (where != NULL) {
            PyErr_Format(ctx->st->CheckpointError, kTrbStorageSizeError, ctx->path, where,
                         entry_name, (unsigned long long)e->size, (unsigned long long)nbytes);
            Py_DECREF(where);
        }
        return NULL;
    }
    /* CRC-32s are checked by the storage pass after materialisation, all threads at once. */
    if (nx_zip_open_entry(ctx->st, ctx->map, e, 0) < 0) {
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)nbytes};
    uint8_t *data = ctx->map->base + e->data_offset;
    PyObject *owner = (PyObject *)ctx->map;
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
                                                            nx_dtypes[tensor_dtype].torch_name));
    if (base == NULL) {
        goto bail;
    }
    record = Py_BuildValue("(iOK)", tensor_dtype, base, (unsigned long long)nbytes);
    if (record == NULL || PyDict_SetItem(ctx->storages, key, record) < 0) {
        Py_CLEAR(base);
    }
bail:
    Py_XDECREF(record);
    Py_XDECREF(array);
    return base;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]). */
PyObject *trb_tensor(nx_mat_ctx *ctx, nx_lazy *call, int v3, const mat_path *p)
{
    PyObject *args = call->args;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t fixed = v3 ? 7 : 6;
    int64_t offset = 0, elements = 0, numel = 1, last = 0;
    int tensor_dtype = -1;
    PyObject *base = NULL, *result = NULL;

    if (call->state != NULL) {
        return mat_fail(ctx, p, "tensor rebuild with BUILD state is not supported");
    }
    if (nargs != fixed && nargs != fixed + 1) {
        return mat_fail(ctx, p, "tensor rebuild has the wrong number of arguments");
    }
    PyObject *storage = PyTuple_GET_ITEM(args, 0), *size = PyTuple_GET_ITEM(args, 2),
             *stride = PyTuple_GET_ITEM(args, 3), *requires_grad = PyTuple_GET_ITEM(args, 4),
             *hooks = PyTuple_GET_ITEM(args, 5);
    if (!mat_is_lazy(ctx, storage, NX_LAZY_PERSID)) {
        return mat_fail(ctx, p, "tensor rebuild without a storage persistent id");
    }
    if (trb_nonneg_int64(PyTuple_GET_ITEM(args, 1), &offset) < 0) {
        return mat_fail(ctx, p, "tensor storage offset is not an int in [0, 2**63)");
    }
    if (!PyTuple_CheckExact(size) || !PyTuple_CheckExact(stride) ||
        PyTuple_GET_SIZE(size) != PyTuple_GET_SIZE(stride) || PyTuple_GET_SIZE(size) > TRB_MAX_NDIM) {
        return mat_fail(ctx, p, "tensor size and stride are not tuples of equal length (<= 64)");
    }
    if (!PyBool_Check(requires_grad)) {
        return mat_fail(ctx, p, "tensor requires_grad is not a bool");
    }
    /* torch.save writes an empty OrderedDict: hooks are never serialised with content. */
    if (!(hooks == Py_None || (PyDict_Check(hooks) && PyDict_GET_SIZE(hooks) == 0 &&
                               (PyDict_CheckExact(hooks) || Py_IS_TYPE(hooks, (PyTypeObject *)ctx->st->ordered_dict_type))))) {
        return mat_fail(ctx, p, "tensor backward hooks must be empty");
    }
    if (v3) {
        PyObject *dt = PyTuple_GET_ITEM(args, 6);
        if (!mat_is_lazy(ctx, dt, NX_LAZY_GLOBAL)) {
            return mat_fail(ctx, p, "tensor dtype is not a torch dtype global");
        }
        if (((nx_lazy *)dt)->global_id != NX_G_TORCH_DTYPE) {
            return mat_unsafe(ctx, p, ((nx_lazy *)dt)->name);
        }
        tensor_dtype = ((nx_lazy *)dt)->sub;
    }
    if (nargs == fixed + 1) {
        PyObject *meta = PyTuple_GET_ITEM(args, fixed);
        if (!(meta == Py_None || (PyDict_CheckExact(meta) && PyDict_GET_SIZE(meta) == 0))) {
            return mat_fail(ctx, p, "tensor metadata is not supported");
        }
    }
    /* Bounds: every element the (size, stride, offset) view reaches must lie in the storage. */
    Py_ssize_t ndim = PyTuple_GET_SIZE(size);
    for (Py_ssize_t i = 0; i < ndim; i++) {
        int64_t s = 0, st = 0, span = 0;
        if (trb_nonneg_int64(PyTuple_GET_ITEM(size, i), &s) < 0 ||
            trb_nonneg_int64(PyTuple_GET_ITEM(stride, i), &st) < 0) {
            return mat_fail(ctx, p, "tensor size or stride is not an int in [0, 2**63)");
        }
        if (__builtin_mul_overflow(numel, s, &numel)) {
            return mat_fail(ctx, p, "tensor element count overflows 64 bits");
        }
        if (s > 0 && (__builtin_mul_overflow(s - 1, st, &span) || __builtin_add_overflow(last, span, &last))) {
            return mat_fail(ctx, p, "tensor extent overflows 64 bits");
        }
    }
    base = trb_storage(ctx, storage, tensor_dtype, p, &elements);
    if (base == NULL) {
        return NULL;
    }
    if (numel == 0 ? offset > elements : (__builtin_add_overflow(last, offset, &last) || last >= elements)) {
        PyObject *where = mat_path_str(p);
        if (where != NULL) {
            PyErr_Format(ctx->st->CheckpointError,
                         "checkpoint '%U': %U: tensor (offset %lld, size %R, stride %R) reaches "
                         "outside its storage of %lld elements", ctx->path, where,
                         (long long)offset, size, stride, (long long)elements);
            Py_DECREF(where);
        }
        goto bail;
    }
    result = mat_factory_result(ctx, p, PyObject_CallFunction(ctx->factory, "sOLOOO", "tensor", base,
                                                              (long long)offset, size, stride, requires_grad));
bail:
    Py_XDECREF(base);
    return result;
}

