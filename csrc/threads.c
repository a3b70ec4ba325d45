/* Thread-count isolation: a context manager that snapshots torch's process-wide settings and
 * restores them on exit, on success and on every error path.
 *
 * torch offers no C function to SET thread counts outside its C++ API, so changes go through
 * torch's Python API; the current count is read through libtorch's stable C ABI when the
 * installed torch exports it (torch >= 2.10), which also lets the guard check that a restore
 * really reached the parallel backend. */
#include "nnunet_export.h"
#include "torch_stable_abi.h"

#include <dlfcn.h>

static const char kBindNotLoaded[] =
    "cannot open libtorch at '%s' to look up its stable C ABI: %s";
static const char kGuardReentryError[] = "ThreadGuard is not re-entrant: make a new one";
static const char kGuardExitError[] = "ThreadGuard.__exit__ without __enter__";
static const char kBadNumThreads[] = "num_threads must be a positive int or None, got %R";
static const char kRestoreFailed[] =
    "torch's thread count is %u after restoring it to %ld: another thread changed it";

/* Process-wide: a pointer into libtorch, which is never unloaded once torch is imported. */
static nx_torch_get_num_threads_fn threads_stable_get_num_threads = NULL;

typedef struct {
    PyObject_HEAD
    long requested_threads;   /* 0: leave the count alone */
    int entered;              /* between __enter__ and __exit__ */
    long saved_threads;       /* intra-op thread count at __enter__ */
    PyObject *saved_cudnn_benchmark; /* owned */
    PyObject *saved_grad_enabled;    /* owned */
    PyObject *saved_default_dtype;   /* owned */
} threads_guard;

/* Calls torch.<dotted>(*args) and returns a new reference, NULL with an exception set. */
static PyObject *threads_torch_call(const char *module_name, const char *attr, PyObject *arg)
{
    PyObject *module = NULL, *func = NULL, *result = NULL;

    module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        goto bail;
    }
    func = PyObject_GetAttrString(module, attr);
    if (func == NULL) {
        goto bail;
    }
    result = arg == NULL ? PyObject_CallNoArgs(func) : PyObject_CallOneArg(func, arg);
bail:
    Py_XDECREF(func);
    Py_XDECREF(module);
    return result;
}

/* Reads a torch getter returning an int. Returns -1 with an exception set on failure. */
static long threads_torch_get_long(const char *attr)
{
    PyObject *value = threads_torch_call("torch", attr, NULL);
    long result;

    if (value == NULL) {
        return -1;
    }
    result = PyLong_AsLong(value);
    Py_DECREF(value);
    return result;
}

long nx_torch_num_threads(void)
{
    uint32_t n = 0;

    if (threads_stable_get_num_threads != NULL && threads_stable_get_num_threads(&n) == 0) {
        return (long)n;
    }
    return threads_torch_get_long("get_num_threads");
}

/* Sets torch.<attr>(value). Returns 0, or -1 with an exception set. */
static int threads_torch_set(const char *module_name, const char *attr, PyObject *value)
{
    PyObject *result = threads_torch_call(module_name, attr, value);

    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static int threads_set_num_threads(long n)
{
    PyObject *value = PyLong_FromLong(n);
    int rc;

    if (value == NULL) {
        return -1;
    }
    rc = threads_torch_set("torch", "set_num_threads", value);
    Py_DECREF(value);
    return rc;
}

static PyObject *threads_guard_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"num_threads", NULL};
    PyObject *num_threads = Py_None;
    threads_guard *self = NULL;
    long requested = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:ThreadGuard", kwlist, &num_threads)) {
        return NULL;
    }
    if (num_threads != Py_None) {
        if (!PyLong_Check(num_threads) || PyBool_Check(num_threads)) {
            return PyErr_Format(PyExc_TypeError, kBadNumThreads, num_threads);
        }
        requested = PyLong_AsLong(num_threads);
        if (requested == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (requested < 1) {
            return PyErr_Format(PyExc_ValueError, kBadNumThreads, num_threads);
        }
    }
    self = (threads_guard *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->requested_threads = requested;
    return (PyObject *)self;
}

static void threads_guard_release_saved(threads_guard *self)
{
    Py_CLEAR(self->saved_cudnn_benchmark);
    Py_CLEAR(self->saved_grad_enabled);
    Py_CLEAR(self->saved_default_dtype);
}

static int threads_guard_traverse(threads_guard *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->saved_cudnn_benchmark);
    Py_VISIT(self->saved_grad_enabled);
    Py_VISIT(self->saved_default_dtype);
    return 0;
}

static void threads_guard_dealloc(threads_guard *self)
{
    PyTypeObject *type = Py_TYPE(self);

    PyObject_GC_UnTrack(self);
    threads_guard_release_saved(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *threads_guard_enter(threads_guard *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *cudnn = NULL;

    if (self->entered) {
        PyErr_SetString(PyExc_RuntimeError, kGuardReentryError);
        return NULL;
    }
    self->saved_threads = nx_torch_num_threads();
    if (self->saved_threads < 0) {
        goto bail;
    }
    cudnn = PyImport_ImportModule("torch.backends.cudnn");
    if (cudnn == NULL) {
        goto bail;
    }
    self->saved_cudnn_benchmark = PyObject_GetAttrString(cudnn, "benchmark");
    self->saved_grad_enabled = threads_torch_call("torch", "is_grad_enabled", NULL);
    self->saved_default_dtype = threads_torch_call("torch", "get_default_dtype", NULL);
    if (self->saved_cudnn_benchmark == NULL || self->saved_grad_enabled == NULL ||
        self->saved_default_dtype == NULL) {
        goto bail;
    }
    if (self->requested_threads > 0 && threads_set_num_threads(self->requested_threads) < 0) {
        goto bail;
    }
    Py_DECREF(cudnn);
    self->entered = 1;
    return Py_NewRef((PyObject *)self);
bail:
    Py_XDECREF(cudnn);
    threads_guard_release_saved(self);
    return NULL;
}

/* Restores everything that differs from the snapshot. Every setting is attempted even when an
 * earlier one fails; the first failure is reported. */
static PyObject *threads_guard_exit(threads_guard *self, PyObject *args)
{
    PyObject *first_error = NULL; /* owned: the first failure, raised at the end */
    PyObject *cudnn = NULL, *grad = NULL;
    long now;
    int failed = 0;
    uint32_t check = 0;

    (void)args;
    if (!self->entered) {
        PyErr_SetString(PyExc_RuntimeError, kGuardExitError);
        return NULL;
    }
    self->entered = 0;

    now = nx_torch_num_threads();
    if (now < 0 || (now != self->saved_threads && threads_set_num_threads(self->saved_threads) < 0)) {
        failed = 1;
        first_error = nx_take_exception();
    }
    /* set_num_interop_threads may be called once per process, so the guard never touches it. */
    PyErr_Clear();
    cudnn = PyImport_ImportModule("torch.backends.cudnn");
    if (cudnn == NULL || PyObject_SetAttrString(cudnn, "benchmark", self->saved_cudnn_benchmark) < 0) {
        if (!failed) {
            failed = 1;
            first_error = nx_take_exception();
        }
    }
    PyErr_Clear();
    grad = threads_torch_call("torch", "set_grad_enabled", self->saved_grad_enabled);
    if (grad == NULL && !failed) {
        failed = 1;
        first_error = nx_take_exception();
    }
    PyErr_Clear();
    if (threads_torch_set("torch", "set_default_dtype", self->saved_default_dtype) < 0 && !failed) {
        failed = 1;
        first_error = nx_take_exception();
    }
    PyErr_Clear();
    if (!failed && threads_stable_get_num_threads != NULL &&
        threads_stable_get_num_threads(&check) == 0 && (long)check != self->saved_threads) {
        failed = 1;
        PyErr_Format(PyExc_RuntimeError, kRestoreFailed, check, self->saved_threads);
        first_error = nx_take_exception();
    }
    Py_XDECREF(grad);
    Py_XDECREF(cudnn);
    threads_guard_release_saved(self);
    if (failed) {
        nx_restore_exception(first_error);
        return NULL;
    }
    Py_RETURN_FALSE; /* never swallow the caller's exception */
}

static PyMethodDef threads_guard_methods[] = {
    {"__enter__", (PyCFunction)threads_guard_enter, METH_NOARGS,
     "Snapshot torch's thread counts, cudnn.benchmark, grad mode and default dtype; apply "
     "num_threads if given."},
    {"__exit__", (PyCFunction)threads_guard_exit, METH_VARARGS,
     "Restore every snapshotted setting; exceptions of the with-block propagate."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot threads_guard_slots[] = {
    {Py_tp_new, threads_guard_new},
    {Py_tp_dealloc, threads_guard_dealloc},
    {Py_tp_traverse, threads_guard_traverse},
    {Py_tp_methods, threads_guard_methods},
    {Py_tp_doc, "ThreadGuard(num_threads=None)\n--\n\n"
                "Context manager: bounds torch's intra-op threads to num_threads inside the "
                "block and restores torch.get_num_threads(), cudnn.benchmark, grad mode and "
                "the default dtype afterwards, also when the block raises."},
    {0, NULL},
};

static PyType_Spec threads_guard_spec = {
    .name = "nnunet_export._core.ThreadGuard",
    .basicsize = sizeof(threads_guard),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = threads_guard_slots,
};

/* bind_torch_stable_abi(libtorch_path) -> bool: looks up the stable C ABI in the libtorch that
 * torch already loaded (RTLD_NOLOAD never loads a second copy). */
static PyObject *py_bind_torch_stable_abi(PyObject *module, PyObject *arg)
{
    const char *path;
    void *handle;
    void *symbol;

    (void)module;
    path = PyUnicode_AsUTF8(arg);
    if (path == NULL) {
        return NULL;
    }
    handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) {
        return PyErr_Format(PyExc_ImportError, kBindNotLoaded, path, dlerror());
    }
    symbol = dlsym(handle, NX_TORCH_GET_NUM_THREADS_SYMBOL);
    /* The handle is deliberately kept: libtorch stays loaded for the process's lifetime. */
    threads_stable_get_num_threads = (nx_torch_get_num_threads_fn)symbol;
    return PyBool_FromLong(symbol != NULL);
}

static PyObject *py_stable_num_threads(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    uint32_t n = 0;

    (void)module;
    if (threads_stable_get_num_threads == NULL || threads_stable_get_num_threads(&n) != 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(n);
}

static PyMethodDef threads_functions[] = {
    {"bind_torch_stable_abi", py_bind_torch_stable_abi, METH_O,
     "bind_torch_stable_abi(libtorch_path) -> bool\n--\n\nLook up libtorch's stable C ABI "
     "thread query in the already-loaded libtorch; True when available."},
    {"stable_num_threads", py_stable_num_threads, METH_NOARGS,
     "stable_num_threads() -> int | None\n--\n\ntorch's intra-op thread count read through "
     "the stable C ABI, or None when it is not bound."},
    {NULL, NULL, 0, NULL},
};

int nx_add_thread_functions(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &threads_guard_spec, NULL);
    int rc;

    if (type == NULL) {
        return -1;
    }
    rc = PyModule_AddObjectRef(module, "ThreadGuard", type);
    Py_DECREF(type);
    if (rc < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, threads_functions);
}
