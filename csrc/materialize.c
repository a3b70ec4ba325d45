/* Second phase of reading a checkpoint: turns the placeholders the unpickler left in ONE
 * requested top-level value into real objects. Only allowlisted reconstructions happen, each
 * implemented here, in tensor_rebuild.c or by the trusted factory of the Python layer; a non-allowlisted global
 * raises UnsafeCheckpointError with its key path. Tensors touch (and CRC-check) only their own
 * storages, so keys that are not requested cost nothing. */
#include "nnunet_export.h"

#include <string.h>

#define MAT_MAX_DEPTH 200

static const char kMatUnsafeError[] =
    "checkpoint '%U': %U needs global '%U', which is not in the allowlist; nothing from the file "
    "was executed";
static const char kMatError[] = "checkpoint '%U': %U: %s";
static const char kMatMisuseError[] =
    "checkpoint '%U': %U uses allowlisted global '%U' but %s, which torch.save never writes; "
    "nothing from the file was executed";
static const char kMatTorchRejectedError[] = "checkpoint '%U': %U: torch rejected the value (%U)";
static const char kMatNewobjMisuse[] = "instantiates it with NEWOBJ";
static const char kMatResultCallMisuse[] = "calls the object it returns";
static const char kMatUnexpectedError[] = "nnunet_export: unexpected %R in unpickled data";
/* Reasons (after the key path) */
static const char kMatNpDtypeArgsError[] = "numpy.dtype arguments are not (code, align, copy)";
static const char kMatNpDtypeCodeError[] =
    "numpy.dtype code is not a plain numeric type (b1, i1-i8, u1-u8, f2-f8, c8, c16)";
static const char kMatNpDtypeStateError[] = "numpy.dtype state is not (version, byteorder, ...)";
static const char kMatNpByteorderError[] = "numpy.dtype byte order is not little-endian ('<', '|', '=')";
static const char kMatNpScalarArgsError[] = "numpy scalar arguments are not (dtype, bytes)";
static const char kMatNpScalarDtypeError[] = "numpy scalar dtype is not a numpy.dtype";
static const char kMatNpScalarSizeError[] = "numpy scalar byte count does not match its dtype";
static const char kMatCalleeError[] = "call of something that is not a global";
static const char kMatParameterArgsError[] =
    "_rebuild_parameter arguments are not (tensor, bool, hooks)";
static const char kMatDeviceArgsError[] = "torch.device arguments are not (str[, int])";
static const char kMatEncodeError[] = "_codecs.encode is accepted only as encode(str, 'latin1')";
static const char kMatCallArgsError[] = "this allowlisted global cannot be called with these arguments";
static const char kMatBareStorageError[] = "a bare storage (not inside a tensor) is not supported";
static const char kMatGlobalValueError[] =
    "an allowlisted global used as a plain value is not supported";
static const char kMatBuildStateError[] = "OrderedDict BUILD state is not a dict";
static const char kMatAttributeError[] = "OrderedDict attribute name is not allowed";
static const char kMatDepthError[] = "nested deeper than 200 levels";

PyObject *mat_path_str(const mat_path *p)
{
    if (p->parent == NULL) {
        return PyUnicode_FromFormat("%S", p->key);
    }
    PyObject *head = mat_path_str(p->parent);
    if (head == NULL) {
        return NULL;
    }
    PyObject *s = p->attribute ? PyUnicode_FromFormat("%U.%S", head, p->key)
                               : PyUnicode_FromFormat("%U[%R]", head, p->key);
    Py_DECREF(head);
    return s;
}

PyObject *mat_fail(nx_mat_ctx *ctx, const mat_path *p, const char *why)
{
    PyObject *where = mat_path_str(p);
    if (where != NULL) {
        PyErr_Format(ctx->st->CheckpointError, kMatError, ctx->path, where, why);
        Py_DECREF(where);
    }
    return NULL;
}

PyObject *mat_unsafe(nx_mat_ctx *ctx, const mat_path *p, PyObject *global_name)
{
    PyObject *where = mat_path_str(p);
    if (where != NULL) {
        PyErr_Format(ctx->st->UnsafeCheckpointError, kMatUnsafeError, ctx->path, where, global_name);
        Py_DECREF(where);
    }
    return NULL;
}

int mat_is_lazy(nx_mat_ctx *ctx, PyObject *obj, int kind)
{
    return Py_IS_TYPE(obj, (PyTypeObject *)ctx->st->lazy_type) && ((nx_lazy *)obj)->kind == kind;
}

static PyObject *mat_value(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p);

PyObject *mat_factory_result(nx_mat_ctx *ctx, const mat_path *p, PyObject *result)
{
    if (result != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return result;
    }
    PyObject *exc = nx_take_exception(), *msg = NULL, *where = NULL;
    msg = exc != NULL ? PyObject_Str(exc) : NULL;
    where = msg != NULL ? mat_path_str(p) : NULL;
    if (where != NULL) {
        PyErr_Format(ctx->st->CheckpointError, kMatTorchRejectedError,
                     ctx->path, where, msg);
    }
    Py_XDECREF(where);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
    return NULL;
}

/* numpy.dtype(code, align, copy) + BUILD state: only plain little-endian numeric codes. */
static PyObject *mat_np_dtype(nx_mat_ctx *ctx, nx_lazy *call, const mat_path *p)
{
    static const char *const codes[] = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                                        "f2", "f4", "f8", "c8", "c16"};
    PyObject *args = call->args;
    PyArray_Descr *descr = NULL;
    if (PyTuple_GET_SIZE(args) < 1 || PyTuple_GET_SIZE(args) > 3 ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 0))) {
        return mat_fail(ctx, p, kMatNpDtypeArgsError);
    }
    const char *code = NULL;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(args, 0), codes[i]) == 0) {
            code = codes[i];
        }
    }
    if (code == NULL) {
        return mat_fail(ctx, p, kMatNpDtypeCodeError);
    }
    if (call->state != NULL && call->state != Py_None) {
        PyObject *st = call->state;
        if (!PyTuple_CheckExact(st) || PyTuple_GET_SIZE(st) < 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(st, 1))) {
            return mat_fail(ctx, p, kMatNpDtypeStateError);
        }
        PyObject *order = PyTuple_GET_ITEM(st, 1);
        if (PyUnicode_CompareWithASCIIString(order, "<") != 0 &&
            PyUnicode_CompareWithASCIIString(order, "|") != 0 &&
            PyUnicode_CompareWithASCIIString(order, "=") != 0) {
            return mat_fail(ctx, p, kMatNpByteorderError);
        }
    }
    PyObject *code_obj = PyUnicode_FromString(code); /* our constant, not the file's string */
    if (code_obj == NULL) {
        return NULL;
    }
    int ok = PyArray_DescrConverter(code_obj, &descr);
    Py_DECREF(code_obj);
    return ok == NPY_SUCCEED ? (PyObject *)descr : NULL;
}

/* numpy scalar(dtype, raw bytes) -> NumPy scalar of exactly that dtype (what torch.load gives). */
static PyObject *mat_np_scalar(nx_mat_ctx *ctx, nx_lazy *call, const mat_path *p)
{
    PyObject *args = call->args, *descr = NULL, *result = NULL;
    if (call->state != NULL || PyTuple_GET_SIZE(args) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(args, 1))) {
        return mat_fail(ctx, p, kMatNpScalarArgsError);
    }
    descr = mat_value(ctx, PyTuple_GET_ITEM(args, 0), p);
    if (descr == NULL) {
        return NULL;
    }
    if (!PyArray_DescrCheck(descr)) {
        mat_fail(ctx, p, kMatNpScalarDtypeError);
        goto bail;
    }
    PyObject *raw = PyTuple_GET_ITEM(args, 1);
    if (PyBytes_GET_SIZE(raw) != PyDataType_ELSIZE((PyArray_Descr *)descr)) {
        mat_fail(ctx, p, kMatNpScalarSizeError);
        goto bail;
    }
    result = PyArray_Scalar(PyBytes_AS_STRING(raw), (PyArray_Descr *)descr, NULL);
bail:
    Py_DECREF(descr);
    return result;
}

static PyObject *mat_call(nx_mat_ctx *ctx, nx_lazy *call, const mat_path *p)
{
    PyObject *func = call->func;
    /* Find the global at the root of the callee (REDUCE on REDUCE results, getattr chains...). */
    while (mat_is_lazy(ctx, func, NX_LAZY_CALL)) {
        func = ((nx_lazy *)func)->func;
    }
    if (!mat_is_lazy(ctx, func, NX_LAZY_GLOBAL)) {
        return mat_fail(ctx, p, kMatCalleeError);
    }
    nx_lazy *g = (nx_lazy *)func;
    if (g->global_id == NX_G_UNSAFE) {
        return mat_unsafe(ctx, p, g->name);
    }
    if (func != call->func || call->newobj) {
        /* Calling what an allowlisted global returned, or NEWOBJ: never part of torch.save output. */
        PyObject *where = mat_path_str(p);
        if (where != NULL) {
            PyErr_Format(ctx->st->UnsafeCheckpointError, kMatMisuseError, ctx->path, where, g->name,
                         call->newobj ? kMatNewobjMisuse : kMatResultCallMisuse);
            Py_DECREF(where);
        }
        return NULL;
    }
    PyObject *args = call->args;
    switch (g->global_id) {
    case NX_G_REBUILD_TENSOR_V2:
        return trb_tensor(ctx, call, 0, p);
    case NX_G_REBUILD_TENSOR_V3:
        return trb_tensor(ctx, call, 1, p);
    case NX_G_REBUILD_PARAMETER: {
        if (call->state != NULL || PyTuple_GET_SIZE(args) != 3 ||
            !PyBool_Check(PyTuple_GET_ITEM(args, 1)) ||
            !mat_is_lazy(ctx, PyTuple_GET_ITEM(args, 0), NX_LAZY_CALL)) {
            return mat_fail(ctx, p, kMatParameterArgsError);
        }
        PyObject *tensor = mat_value(ctx, PyTuple_GET_ITEM(args, 0), p);
        if (tensor == NULL) {
            return NULL;
        }
        PyObject *param = mat_factory_result(ctx, p, PyObject_CallFunction(ctx->factory, "sOO", "parameter",
                                                                           tensor, PyTuple_GET_ITEM(args, 1)));
        Py_DECREF(tensor);
        return param;
    }
    case NX_G_DEVICE: {
        Py_ssize_t n = PyTuple_GET_SIZE(args);
        if (call->state != NULL || n < 1 || n > 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 0)) ||
            (n == 2 && !PyLong_CheckExact(PyTuple_GET_ITEM(args, 1)))) {
            return mat_fail(ctx, p, kMatDeviceArgsError);
        }
        return mat_factory_result(
            ctx, p, n == 1 ? PyObject_CallFunction(ctx->factory, "sO", "device", PyTuple_GET_ITEM(args, 0))
                           : PyObject_CallFunction(ctx->factory, "sOO", "device", PyTuple_GET_ITEM(args, 0),
                                                   PyTuple_GET_ITEM(args, 1)));
    }
    case NX_G_NP_DTYPE:
        return mat_np_dtype(ctx, call, p);
    case NX_G_NP_SCALAR:
        return mat_np_scalar(ctx, call, p);
    case NX_G_CODECS_ENCODE:
        return mat_fail(ctx, p, kMatEncodeError);
    default:
        return mat_fail(ctx, p, kMatCallArgsError);
    }
}

static PyObject *mat_lazy(nx_mat_ctx *ctx, nx_lazy *z, const mat_path *p)
{
    if (z->kind == NX_LAZY_CALL) {
        return mat_call(ctx, z, p);
    }
    if (z->kind == NX_LAZY_PERSID) {
        return mat_fail(ctx, p, kMatBareStorageError);
    }
    switch (z->global_id) {
    case NX_G_UNSAFE:
        return mat_unsafe(ctx, p, z->name);
    case NX_G_TORCH_DTYPE:
        return PyObject_CallFunction(ctx->factory, "ss", "dtype", nx_dtypes[z->sub].torch_name);
    case NX_G_NP_DTYPE_CLASS: {
        PyObject *mod = PyImport_ImportModule("numpy.dtypes");
        if (mod == NULL) {
            return NULL;
        }
        PyObject *cls = PyObject_GetAttrString(mod, nx_np_dtype_classes[z->sub]); /* our constant */
        Py_DECREF(mod);
        return cls;
    }
    default:
        return mat_fail(ctx, p, kMatGlobalValueError);
    }
}

/* OrderedDict BUILD states (state_dict()._metadata): set as instance attributes, like torch. */
static int mat_apply_build_states(nx_mat_ctx *ctx, PyObject *orig, PyObject *made, const mat_path *p)
{
    PyObject *id = PyLong_FromVoidPtr(orig);
    PyObject *states = NULL, *dict = NULL;
    int rc = -1;
    if (id == NULL) {
        return -1;
    }
    states = PyDict_GetItemWithError(ctx->build_states, id); /* borrowed: [orig, state, ...] */
    if (states == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto bail;
    }
    dict = PyObject_GetAttrString(made, "__dict__");
    if (dict == NULL) {
        goto bail;
    }
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(states); i++) {
        PyObject *state = PyList_GET_ITEM(states, i);
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        if (!PyDict_CheckExact(state)) {
            mat_fail(ctx, p, kMatBuildStateError);
            goto bail;
        }
        while (PyDict_Next(state, &pos, &k, &v)) {
            /* An attribute must not be a dunder nor shadow an OrderedDict method. */
            if (!PyUnicode_CheckExact(k) || PyUnicode_GET_LENGTH(k) == 0 ||
                (PyUnicode_GET_LENGTH(k) >= 2 && PyUnicode_READ_CHAR(k, 0) == '_' &&
                 PyUnicode_READ_CHAR(k, 1) == '_') ||
                PyObject_HasAttr((PyObject *)Py_TYPE(made), k)) {
                mat_fail(ctx, p, kMatAttributeError);
                goto bail;
            }
            mat_path sub = {p, k, 1};
            PyObject *value = mat_value(ctx, v, &sub);
            if (value == NULL || PyDict_SetItem(dict, k, value) < 0) {
                Py_XDECREF(value);
                goto bail;
            }
            Py_DECREF(value);
        }
    }
    rc = 0;
bail:
    Py_XDECREF(dict);
    Py_DECREF(id);
    return rc;
}

/* Lists and tuples. A list is memoised before its items so self-references resolve to the new
 * list; a tuple only once complete (it cannot contain itself and must never be seen half-filled). */
static PyObject *mat_sequence(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p, PyObject *id)
{
    int is_list = PyList_CheckExact(obj);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    PyObject *made = is_list ? PyList_New(n) : PyTuple_New(n);

    if (made == NULL || (is_list && PyDict_SetItem(ctx->memo, id, made) < 0)) {
        goto bail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL) {
            goto bail;
        }
        mat_path sub = {p, index, 0};
        PyObject *item = mat_value(ctx, PySequence_Fast_GET_ITEM(obj, i), &sub);
        Py_DECREF(index);
        if (item == NULL) {
            goto bail;
        }
        if (is_list) {
            PyList_SET_ITEM(made, i, item);
        } else {
            PyTuple_SET_ITEM(made, i, item);
        }
    }
    if (!is_list && PyDict_SetItem(ctx->memo, id, made) < 0) {
        goto bail;
    }
    return made;
bail:
    Py_XDECREF(made);
    return NULL;
}

/* dicts and OrderedDicts (memoised before their items), with an OrderedDict's BUILD states. */
static PyObject *mat_mapping(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p, PyObject *id)
{
    int ordered = !PyDict_CheckExact(obj);
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    PyObject *made = ordered ? PyObject_CallNoArgs(ctx->st->ordered_dict_type) : PyDict_New();

    if (made == NULL || PyDict_SetItem(ctx->memo, id, made) < 0) {
        goto bail;
    }
    /* PyDict_Next follows insertion order, which is the OrderedDict order here. */
    while (PyDict_Next(obj, &pos, &k, &v)) {
        Py_INCREF(k);
        Py_INCREF(v);
        mat_path sub = {p, k, 0};
        PyObject *key = mat_value(ctx, k, &sub);
        PyObject *value = key != NULL ? mat_value(ctx, v, &sub) : NULL;
        int bad = value == NULL || PyObject_SetItem(made, key, value) < 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        Py_DECREF(k);
        Py_DECREF(v);
        if (bad) {
            goto bail;
        }
    }
    if (ordered && mat_apply_build_states(ctx, obj, made, p) < 0) {
        goto bail;
    }
    return made;
bail:
    Py_XDECREF(made);
    return NULL;
}

/* sets and frozensets, built as a set (memoised before their items). */
static PyObject *mat_set(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p, PyObject *id)
{
    PyObject *it = PyObject_GetIter(obj), *item = NULL;
    PyObject *made = PySet_New(NULL);

    if (it == NULL || made == NULL || PyDict_SetItem(ctx->memo, id, made) < 0) {
        goto bail;
    }
    while ((item = PyIter_Next(it)) != NULL) {
        mat_path sub = {p, item, 0};
        PyObject *value = mat_value(ctx, item, &sub);
        int bad = value == NULL || PySet_Add(made, value) < 0;
        Py_XDECREF(value);
        Py_DECREF(item);
        if (bad) {
            goto bail;
        }
    }
    if (PyErr_Occurred()) {
        goto bail;
    }
    Py_DECREF(it);
    return made;
bail:
    Py_XDECREF(it);
    Py_XDECREF(made);
    return NULL;
}

static PyObject *mat_container(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p, PyObject *id)
{
    PyObject *made = NULL;
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) {
        return mat_sequence(ctx, obj, p, id);
    }
    if (PyDict_CheckExact(obj) || Py_IS_TYPE(obj, (PyTypeObject *)ctx->st->ordered_dict_type)) {
        return mat_mapping(ctx, obj, p, id);
    }
    if (PyAnySet_CheckExact(obj)) {
        return mat_set(ctx, obj, p, id);
    }
    if (!Py_IS_TYPE(obj, (PyTypeObject *)ctx->st->lazy_type)) {
        PyErr_Format(PyExc_SystemError, kMatUnexpectedError, Py_TYPE(obj));
        return NULL;
    }
    made = mat_lazy(ctx, (nx_lazy *)obj, p);
    if (made != NULL && PyDict_SetItem(ctx->memo, id, made) < 0) {
        Py_CLEAR(made);
    }
    return made;
}

static PyObject *mat_value(nx_mat_ctx *ctx, PyObject *obj, const mat_path *p)
{
    PyObject *id = NULL, *result = NULL;
    /* Immutable built-in values are shared as they are. */
    if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj) ||
        PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj)) {
        return Py_NewRef(obj);
    }
    id = PyLong_FromVoidPtr(obj);
    if (id == NULL) {
        return NULL;
    }
    result = PyDict_GetItemWithError(ctx->memo, id);
    if (result != NULL) {
        Py_INCREF(result);
        goto bail;
    }
    if (PyErr_Occurred()) {
        goto bail;
    }
    if (ctx->depth >= MAT_MAX_DEPTH) {
        mat_fail(ctx, p, kMatDepthError);
        goto bail;
    }
    ctx->depth++;
    result = mat_container(ctx, obj, p, id);
    ctx->depth--;
bail:
    Py_DECREF(id);
    return result;
}

PyObject *nx_materialize(nx_mat_ctx *ctx, PyObject *key, PyObject *obj)
{
    mat_path root = {NULL, key, 0};
    return mat_value(ctx, obj, &root);
}
