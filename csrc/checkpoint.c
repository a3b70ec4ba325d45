/* read_checkpoint: maps the file, parses the ZIP directory, runs data.pkl through the safe VM and
 * materialises only the requested top-level keys. The thin Python layer supplies the trusted
 * factory that turns mapped bytes into tensors; nothing from the file chooses a callable. */
#include "nnunet_export.h"

#include <limits.h>
#include <string.h>

static const char kCkptNoPickleError[] =
    "checkpoint '%U': archive has no data.pkl in its folder '%s' (not a torch.save file?)";
static const char kCkptByteorderError[] =
    "checkpoint '%U': byteorder entry says %R; only little-endian checkpoints are supported";
static const char kCkptTopError[] =
    "checkpoint '%U': top-level object is %s, not the dict nnU-Net's save_checkpoint writes";
static const char kCkptBareStateDict[] = "an OrderedDict (a bare state dict?)";
static const char kCkptMissingKeyError[] =
    "checkpoint '%U': key %R is not in the file (it has: %U)";
static const char kCkptKeysStrError[] = "keys must be a list or tuple of str, not a single %.100s";
static const char kCkptKeysTypeError[] =
    "keys must be a list, tuple or other iterable of str, or None, got %.100s";
static const char kCkptKeyTypeError[] = "keys[%zd] must be a str, got %.100s";
static const char kCkptThreadsError[] = "threads must be an int >= 1 or None, got %R";
static const char kCkptFactoryError[] = "factory must be callable";

/* Keys returned by default; the optional ones may be absent from old or custom checkpoints. */
static const char *const ckpt_default_keys[] = {"network_weights", "trainer_name", "init_args",
                                                "inference_allowed_mirroring_axes", "current_epoch"};
static const int ckpt_default_required[] = {1, 1, 1, 0, 0};
_Static_assert(NX_COUNT(ckpt_default_keys) == NX_COUNT(ckpt_default_required),
               "one required flag per default key");
/* init_args copies that nnU-Net keeps as plans.json / dataset.json next to the folds. */
static const char *const ckpt_init_args_heavy[] = {"plans", "dataset_json"};

static int ckpt_check_byteorder(nx_state *st, nx_mapping *map, const nx_zip *zip, int verify_crc)
{
    nx_zip_entry *e = nx_zip_find(zip, "byteorder", 9);
    if (e == NULL) {
        return 0; /* files from torch < 2.1 have none and are little-endian */
    }
    if (nx_zip_open_entry(st, map, e, verify_crc) < 0) {
        return -1;
    }
    if (e->size == 6 && memcmp(map->base + e->data_offset, "little", 6) == 0) {
        return 0;
    }
    PyObject *content = PyBytes_FromStringAndSize((const char *)map->base + e->data_offset,
                                                  e->size > 32 ? 32 : (Py_ssize_t)e->size);
    if (content != NULL) {
        PyErr_Format(st->CheckpointError, kCkptByteorderError, map->path, content);
        Py_DECREF(content);
    }
    return -1;
}

static PyObject *ckpt_missing_key(nx_state *st, PyObject *path, PyObject *top, PyObject *key)
{
    PyObject *keys = PyDict_Keys(top), *sep = NULL, *joined = NULL, *strs = NULL;
    if (keys == NULL) {
        return NULL;
    }
    strs = PyList_New(0);
    for (Py_ssize_t i = 0; strs != NULL && i < PyList_GET_SIZE(keys); i++) {
        PyObject *r = PyObject_Repr(PyList_GET_ITEM(keys, i));
        if (r == NULL || PyList_Append(strs, r) < 0) {
            Py_XDECREF(r);
            Py_CLEAR(strs);
            break;
        }
        Py_DECREF(r);
    }
    sep = PyUnicode_FromString(", ");
    if (strs != NULL && sep != NULL) {
        joined = PyUnicode_Join(sep, strs);
    }
    if (joined != NULL) {
        PyErr_Format(st->CheckpointError, kCkptMissingKeyError, path, key, joined);
    }
    Py_XDECREF(joined);
    Py_XDECREF(sep);
    Py_XDECREF(strs);
    Py_DECREF(keys);
    return NULL;
}

/* Value to materialise for `key`: init_args loses its heavy copies in the default selection. */
static PyObject *ckpt_selected_value(PyObject *value, PyObject *key, int default_selection)
{
    if (!default_selection || PyUnicode_CompareWithASCIIString(key, "init_args") != 0 ||
        !PyDict_CheckExact(value)) {
        return Py_NewRef(value);
    }
    PyObject *copy = PyDict_Copy(value);
    for (size_t i = 0; copy != NULL && i < NX_COUNT(ckpt_init_args_heavy); i++) {
        PyObject *k = PyUnicode_FromString(ckpt_init_args_heavy[i]);
        if (k == NULL || (PyDict_Contains(copy, k) == 1 && PyDict_DelItem(copy, k) < 0)) {
            Py_CLEAR(copy);
        }
        Py_XDECREF(k);
    }
    return copy;
}

/* The key list to read: `keys` (a list, tuple or other iterable of str) as a new list, or the
 * default keys when it is None (*default_selection = 1). NULL with TypeError set. */
static PyObject *ckpt_key_list(PyObject *keys, int *default_selection)
{
    PyObject *list = NULL;

    *default_selection = keys == Py_None;
    if (*default_selection) {
        list = PyList_New(0);
        for (size_t i = 0; list != NULL && i < NX_COUNT(ckpt_default_keys); i++) {
            PyObject *k = PyUnicode_FromString(ckpt_default_keys[i]);
            if (k == NULL || PyList_Append(list, k) < 0) {
                Py_CLEAR(list);
            }
            Py_XDECREF(k);
        }
        return list;
    }
    /* A str is iterable too: refuse it rather than read one key per character. */
    if (PyUnicode_Check(keys) || PyBytes_Check(keys)) {
        PyErr_Format(PyExc_TypeError, kCkptKeysStrError, Py_TYPE(keys)->tp_name);
        return NULL;
    }
    list = PySequence_List(keys);
    if (list == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, kCkptKeysTypeError, Py_TYPE(keys)->tp_name);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *key = PyList_GET_ITEM(list, i);
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, kCkptKeyTypeError, i, Py_TYPE(key)->tp_name);
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

/* `threads`: None (torch's intra-op thread count) or an int >= 1 (not a bool). Returns 0, or -1
 * with ValueError set. */
static int ckpt_threads(PyObject *arg, int *threads)
{
    long n;
    int overflow = 0;

    if (arg == Py_None) {
        n = nx_torch_num_threads();
        if (n < 0) {
            return -1;
        }
        *threads = n < 1 ? 1 : (n > INT_MAX ? INT_MAX : (int)n);
        return 0;
    }
    if (PyBool_Check(arg) || !PyLong_Check(arg)) {
        PyErr_Format(PyExc_ValueError, kCkptThreadsError, arg);
        return -1;
    }
    n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0) {
        n = INT_MAX; /* more threads than anyone has: the copy pass caps them anyway */
    }
    if (overflow < 0 || n < 1) {
        PyErr_Format(PyExc_ValueError, kCkptThreadsError, arg);
        return -1;
    }
    *threads = n > INT_MAX ? INT_MAX : (int)n;
    return 0;
}

/* Maps `path`, runs its data.pkl and returns a new reference to the top-level dict (and in
 * *build_states the pending BUILD states). NULL with CheckpointError set. */
static PyObject *ckpt_unpickle_top(nx_state *st, PyObject *path, nx_mapping *map, nx_zip *zip,
                                   int verify_crc, PyObject **build_states)
{
    char folder[256], entry_name[300];
    PyObject *top = NULL;
    nx_zip_entry *pkl = NULL;

    if (nx_zip_open(st, map, zip) < 0 || ckpt_check_byteorder(st, map, zip, verify_crc) < 0) {
        return NULL;
    }
    pkl = nx_zip_find(zip, "data.pkl", 8);
    if (pkl == NULL) {
        size_t n = zip->prefix_len < sizeof folder - 1 ? zip->prefix_len : sizeof folder - 1;
        memcpy(folder, zip->entries[0].name, n);
        folder[n] = '\0';
        PyErr_Format(st->CheckpointError, kCkptNoPickleError, path, folder);
        return NULL;
    }
    if (nx_zip_open_entry(st, map, pkl, verify_crc) < 0) {
        return NULL;
    }
    snprintf(entry_name, sizeof entry_name, "entry '%.*s'",
             (int)(pkl->name_len > 256 ? 256 : pkl->name_len), pkl->name);
    top = nx_unpickle(st, path, entry_name, map->base + pkl->data_offset, pkl->size, build_states);
    if (top != NULL && !PyDict_CheckExact(top)) {
        PyErr_Format(st->CheckpointError, kCkptTopError, path,
                     Py_IS_TYPE(top, (PyTypeObject *)st->ordered_dict_type)
                         ? kCkptBareStateDict
                         : Py_TYPE(top)->tp_name);
        Py_CLEAR(top);
    }
    return top;
}

/* Materialises key_list's values of `top` into `out`, then runs the copy / CRC pass. */
static int ckpt_materialize_keys(nx_mat_ctx *ctx, PyObject *top, PyObject *key_list,
                                 int default_selection, PyObject *out)
{
    PyObject *keep = PyList_New(0); /* values kept alive: the memo is keyed by identity */
    int rc = -1;

    if (keep == NULL) {
        goto bail;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(key_list); i++) {
        PyObject *key = PyList_GET_ITEM(key_list, i);
        PyObject *value = PyDict_GetItemWithError(top, key); /* borrowed */
        if (value == NULL) {
            if (PyErr_Occurred()) {
                goto bail;
            }
            if (default_selection && !ckpt_default_required[i]) {
                continue;
            }
            ckpt_missing_key(ctx->st, ctx->path, top, key);
            goto bail;
        }
        PyObject *selected = ckpt_selected_value(value, key, default_selection);
        if (selected == NULL || PyList_Append(keep, selected) < 0) {
            Py_XDECREF(selected);
            goto bail;
        }
        PyObject *made = nx_materialize(ctx, key, selected);
        Py_DECREF(selected);
        if (made == NULL || PyDict_SetItem(out, key, made) < 0) {
            Py_XDECREF(made);
            goto bail;
        }
        Py_DECREF(made);
    }
    rc = 0;
bail:
    Py_XDECREF(keep);
    return rc;
}

/* Reads key_list from the checkpoint at `path` (str). New dict, or NULL with an exception set. */
static PyObject *ckpt_read(nx_state *st, PyObject *path, PyObject *key_list, int default_selection,
                           int verify_crc, PyObject *factory, int copy, int threads)
{
    PyObject *map = NULL, *top = NULL, *build_states = NULL, *out = NULL, *result = NULL;
    nx_zip zip = {NULL, 0, 0};
    nx_mat_ctx ctx;
    nx_copy_plan plan;

    memset(&ctx, 0, sizeof ctx);
    memset(&plan, 0, sizeof plan);
    map = nx_mapping_open(st, path);
    if (map == NULL) {
        goto bail;
    }
    top = ckpt_unpickle_top(st, path, (nx_mapping *)map, &zip, verify_crc, &build_states);
    if (top == NULL) {
        goto bail;
    }
    ctx.st = st;
    ctx.map = (nx_mapping *)map;
    ctx.zip = &zip;
    ctx.path = path;
    ctx.factory = factory;
    ctx.build_states = build_states;
    plan.max_entries = zip.count;
    plan.copy = copy;
    ctx.pass = copy || verify_crc ? &plan : NULL;
    ctx.memo = PyDict_New();
    ctx.storages = PyDict_New();
    out = PyDict_New();
    if (ctx.memo == NULL || ctx.storages == NULL || out == NULL ||
        ckpt_materialize_keys(&ctx, top, key_list, default_selection, out) < 0) {
        goto bail;
    }
    if (ctx.pass != NULL && nx_copy_plan_run(st, &plan, (nx_mapping *)map, verify_crc, threads) < 0) {
        goto bail;
    }
    result = out;
    out = NULL;
bail:
    Py_XDECREF(out);
    Py_XDECREF(ctx.memo);
    Py_XDECREF(ctx.storages);
    nx_copy_plan_free(&plan);
    Py_XDECREF(top);
    Py_XDECREF(build_states);
    nx_zip_close(&zip);
    Py_XDECREF(map);
    return result;
}

static PyObject *py_read_checkpoint(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "keys", "verify_crc", "factory", "copy", "threads", NULL};
    nx_state *st = nx_get_state(self);
    PyObject *path_arg = NULL, *keys = Py_None, *factory = NULL, *threads_arg = Py_None;
    PyObject *path = NULL, *key_list = NULL, *result = NULL;
    int verify_crc = 1, copy = 0, threads = 1, default_selection = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOpO|pO:read_checkpoint", kwlist, &path_arg,
                                     &keys, &verify_crc, &factory, &copy, &threads_arg)) {
        return NULL;
    }
    if (!PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, kCkptFactoryError);
        return NULL;
    }
    if (ckpt_threads(threads_arg, &threads) < 0) {
        return NULL;
    }
    /* Accept str, bytes and os.PathLike; messages use the decoded str. */
    if (!PyUnicode_FSDecoder(path_arg, &path)) {
        return NULL;
    }
    key_list = ckpt_key_list(keys, &default_selection);
    if (key_list != NULL) {
        result = ckpt_read(st, path, key_list, default_selection, verify_crc, factory, copy, threads);
    }
    Py_XDECREF(key_list);
    Py_XDECREF(path);
    return result;
}

static PyMethodDef ckpt_methods[] = {
    {"read_checkpoint", (PyCFunction)(void (*)(void))py_read_checkpoint, METH_VARARGS | METH_KEYWORDS,
     "read_checkpoint(path, keys, verify_crc, factory, copy=False, threads=None) -> dict\n\n"
     "Internal: use nnunet_export.read_checkpoint, which supplies the tensor factory."},
    {NULL, NULL, 0, NULL},
};

/* _core.DEFAULT_CHECKPOINT_KEYS: the keys read when `keys` is None, as a tuple of str. */
static int ckpt_add_default_keys(PyObject *module)
{
    PyObject *keys = PyTuple_New((Py_ssize_t)NX_COUNT(ckpt_default_keys));
    if (keys == NULL) {
        return -1;
    }
    for (size_t i = 0; i < NX_COUNT(ckpt_default_keys); i++) {
        PyObject *k = PyUnicode_FromString(ckpt_default_keys[i]);
        if (k == NULL) {
            Py_DECREF(keys);
            return -1;
        }
        PyTuple_SET_ITEM(keys, (Py_ssize_t)i, k);
    }
    int rc = PyModule_AddObjectRef(module, "DEFAULT_CHECKPOINT_KEYS", keys);
    Py_DECREF(keys);
    return rc;
}

int nx_add_checkpoint_functions(PyObject *module)
{
    if (nx_mapping_add_type(module) < 0 || nx_lazy_add_type(module) < 0 ||
        nx_crc32_add_functions(module) < 0 || ckpt_add_default_keys(module) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, ckpt_methods);
}
