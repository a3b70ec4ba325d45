/* Memory that checkpoint tensors live in. Either a private file mapping of the checkpoint:
 * MAP_PRIVATE so tensors over it are writable (copy on write) without ever touching the file,
 * and zero-copy because nothing is read until used; or an anonymous arena that a copying read
 * fills (copy_out.c), which no later change to the file can reach. */
#include "nnunet_export.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char kMapNotRegularError[] = "checkpoint '%U': not a regular file";
static const char kMapEmptyError[] = "checkpoint '%U': the file is empty (0 bytes)";
static const char kMapTooLargeError[] = "checkpoint '%U': file size does not fit in memory";
static const char kMapDirectoryError[] = "checkpoint '%U': is a directory, not a checkpoint file";
static const char kMapOpenError[] = "checkpoint '%U': cannot open: %s";
static const char kMapMapError[] = "checkpoint '%U': cannot map the file into memory: %s";
static const char kMapArenaError[] = "checkpoint '%U': cannot reserve memory to copy its tensors into: %s";

/* Raises CheckpointError with the OS reason, chained to the matching OSError subclass
 * (FileNotFoundError, PermissionError, ...) so callers can still inspect errno. */
static void map_os_error(nx_state *st, PyObject *path, const char *format, int err)
{
    PyObject *cause = NULL, *exc = NULL;
    errno = err;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    cause = nx_take_exception();
    PyErr_Format(st->CheckpointError, format, path, strerror(err));
    exc = nx_take_exception();
    if (exc == NULL) {
        Py_XDECREF(cause);
        return;
    }
    if (cause != NULL) {
        PyException_SetCause(exc, cause); /* steals */
    }
    nx_restore_exception(exc);
}

static void map_dealloc(PyObject *self)
{
    nx_mapping *m = (nx_mapping *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (m->base != NULL) {
        munmap(m->base, (size_t)m->size);
    }
    Py_XDECREF(m->path);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* Buffer protocol: one writable byte buffer over the whole mapping. NumPy arrays use this object
 * as their base so the mapping outlives every tensor built over it. */
static int map_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    nx_mapping *m = (nx_mapping *)self;
    return PyBuffer_FillInfo(view, self, m->base, (Py_ssize_t)m->size, 0, flags);
}

static PyObject *map_get_size(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((nx_mapping *)self)->size);
}

static PyObject *map_get_address(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromVoidPtr(((nx_mapping *)self)->base);
}

static PyGetSetDef map_getset[] = {
    {"size", map_get_size, NULL, "mapped bytes", NULL},
    {"address", map_get_address, NULL, "address of the first mapped byte", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot map_slots[] = {
    {Py_tp_dealloc, map_dealloc},
    {Py_bf_getbuffer, map_getbuffer},
    {Py_tp_getset, map_getset},
    {Py_tp_doc, "Private read/write memory holding checkpoint bytes (internal)."},
    {0, NULL},
};

static PyType_Spec map_spec = {
    .name = "nnunet_export._core._Mapping",
    .basicsize = sizeof(nx_mapping),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = map_slots,
};

int nx_mapping_add_type(PyObject *module)
{
    nx_state *st = nx_get_state(module);
    st->mapping_type = PyType_FromModuleAndSpec(module, &map_spec, NULL);
    return st->mapping_type == NULL ? -1 : 0;
}

/* New nx_mapping owning the `size` mapped bytes at `base` (unmapped here if that fails). */
static PyObject *map_wrap(nx_state *st, PyObject *path, void *base, uint64_t size)
{
    nx_mapping *m = PyObject_New(nx_mapping, (PyTypeObject *)st->mapping_type);
    if (m == NULL) {
        munmap(base, (size_t)size);
        return NULL;
    }
    m->base = base;
    m->size = size;
    m->path = Py_NewRef(path);
    return (PyObject *)m;
}

PyObject *nx_mapping_open(nx_state *st, PyObject *path)
{
    PyObject *encoded = NULL;
    PyObject *result = NULL;
    int fd = -1;
    struct stat sb;
    void *base = MAP_FAILED;
    int saved_errno = 0;

    if (!PyUnicode_FSConverter(path, &encoded)) {
        goto bail;
    }
    Py_BEGIN_ALLOW_THREADS
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files. */
    fd = open(PyBytes_AS_STRING(encoded), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    saved_errno = errno;
    if (fd >= 0 && fstat(fd, &sb) != 0) {
        saved_errno = errno;
        close(fd);
        fd = -1;
    }
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        map_os_error(st, path, kMapOpenError, saved_errno);
        goto bail;
    }
    if (S_ISDIR(sb.st_mode)) {
        PyErr_Format(st->CheckpointError, kMapDirectoryError, path);
        goto bail;
    }
    if (!S_ISREG(sb.st_mode)) {
        PyErr_Format(st->CheckpointError, kMapNotRegularError, path);
        goto bail;
    }
    if (sb.st_size == 0) {
        PyErr_Format(st->CheckpointError, kMapEmptyError, path);
        goto bail;
    }
    if ((uint64_t)sb.st_size > (uint64_t)PY_SSIZE_T_MAX || (uint64_t)sb.st_size > SIZE_MAX) {
        PyErr_Format(st->CheckpointError, kMapTooLargeError, path);
        goto bail;
    }
    Py_BEGIN_ALLOW_THREADS
    base = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (base == MAP_FAILED) {
        map_os_error(st, path, kMapMapError, saved_errno);
        goto bail;
    }
    result = map_wrap(st, path, base, (uint64_t)sb.st_size);
bail:
    if (fd >= 0) {
        close(fd);
    }
    Py_XDECREF(encoded);
    return result;
}

PyObject *nx_mapping_anonymous(nx_state *st, PyObject *path, uint64_t size)
{
    void *base = MAP_FAILED;
    int saved_errno = 0;

    if (size == 0 || size > (uint64_t)PY_SSIZE_T_MAX || size > SIZE_MAX) {
        PyErr_Format(st->CheckpointError, kMapTooLargeError, path);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    /* MAP_NORESERVE: the reservation is an upper bound; only pages written count. */
    base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    saved_errno = errno;
    /* No MADV_HUGEPAGE: in VMs whose balloon takes freed memory back (free page reporting),
     * free huge-page blocks are exactly what was given back, and faulting them in made a copy
     * 2-3x slower than with 4 KiB pages; on a quiet machine they saved about a third. */
    Py_END_ALLOW_THREADS
    if (base == MAP_FAILED) {
        map_os_error(st, path, kMapArenaError, saved_errno);
        return NULL;
    }
    return map_wrap(st, path, base, size);
}

void nx_mapping_trim(nx_mapping *m, uint64_t used)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t keep = used == 0 ? page : (used + page - 1) & ~(page - 1);
    if (keep < m->size && munmap(m->base + keep, (size_t)(m->size - keep)) == 0) {
        m->size = keep;
    }
}
