/* GLOBAL, REDUCE, NEWOBJ, BUILD and BINPERSID of the pickle VM (unpickler.c): what the pickle asks
 * to construct, recorded as nx_lazy placeholders that nothing here calls. Only two calls run
 * eagerly because they are inert and needed to build containers: OrderedDict() and
 * _codecs.encode(str, 'latin1'). */
#include "nnunet_export.h"

#include <string.h>

#define UPK_MAX_LINE 256 /* GLOBAL module / name lines */

static const char kUpkPersidError[] = "persistent id is not a tuple";
/* Reasons (after the opcode) */
static const char kUpoNameLengthError[] = "module or name empty or longer than 256 bytes";
static const char kUpoNameCharsError[] = "module or name is not printable ASCII";
static const char kUpoArgsError[] = "argument is not a tuple";
static const char kUpoCallableError[] = "callable is not a global";
static const char kUpoLatin1Error[] = "_codecs.encode argument is not latin1";
static const char kUpoBuildTargetError[] =
    "BUILD target is not an OrderedDict or a reconstructed object";

static int upo_global(upk_vm *vm)
{
    char parts[2][UPK_MAX_LINE + 1];
    for (int i = 0; i < 2; i++) {
        uint64_t start = vm->pos;
        const uint8_t *nl = memchr(vm->data + start, '\n', (size_t)(vm->len - start));
        if (nl == NULL) {
            return upk_read(vm, vm->len - start + 1) == NULL ? -1 : -1;
        }
        uint64_t n = (uint64_t)(nl - (vm->data + start));
        if (n == 0 || n > UPK_MAX_LINE) {
            return upk_fail(vm, kUpoNameLengthError);
        }
        for (uint64_t k = 0; k < n; k++) {
            uint8_t c = vm->data[start + k];
            if (c < 0x21 || c > 0x7e) {
                return upk_fail(vm, kUpoNameCharsError);
            }
        }
        memcpy(parts[i], vm->data + start, (size_t)n);
        parts[i][n] = '\0';
        vm->pos = start + n + 1;
    }
    nx_lazy *z = nx_lazy_new(vm->st, NX_LAZY_GLOBAL);
    if (z == NULL) {
        return -1;
    }
    z->global_id = nx_classify_global(parts[0], parts[1], &z->sub);
    z->name = PyUnicode_FromFormat("%s.%s", parts[0], parts[1]);
    if (z->name == NULL) {
        Py_DECREF(z);
        return -1;
    }
    return upk_push(vm, (PyObject *)z);
}

static int upo_is_global(PyObject *obj, nx_state *st, int id)
{
    return Py_IS_TYPE(obj, (PyTypeObject *)st->lazy_type) && ((nx_lazy *)obj)->kind == NX_LAZY_GLOBAL &&
           ((nx_lazy *)obj)->global_id == id;
}

/* REDUCE / NEWOBJ: never calls anything named by the file. */
static int upo_reduce(upk_vm *vm, int newobj)
{
    PyObject *args = upk_pop(vm);
    PyObject *func = NULL;
    PyObject *result = NULL;
    if (args == NULL) {
        return -1;
    }
    func = upk_pop(vm);
    if (func == NULL) {
        goto bail;
    }
    if (!PyTuple_CheckExact(args)) {
        upk_fail(vm, kUpoArgsError);
        goto bail;
    }
    if (!Py_IS_TYPE(func, (PyTypeObject *)vm->st->lazy_type)) {
        upk_fail(vm, kUpoCallableError);
        goto bail;
    }
    if (!newobj && upo_is_global(func, vm->st, NX_G_ORDERED_DICT) && PyTuple_GET_SIZE(args) == 0) {
        /* An empty OrderedDict is inert; it must exist now so SETITEMS can fill it. */
        result = PyObject_CallNoArgs(vm->ordered_dict);
    } else if (!newobj && upo_is_global(func, vm->st, NX_G_CODECS_ENCODE) &&
               PyTuple_GET_SIZE(args) == 2 && PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 0)) &&
               PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 1)) &&
               PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(args, 1), "latin1") == 0) {
        /* NumPy scalars carry their raw bytes as a latin1 str; decode it to bytes right here. */
        result = PyUnicode_AsLatin1String(PyTuple_GET_ITEM(args, 0));
        if (result == NULL) {
            upk_fail_from_python(vm, kUpoLatin1Error);
            goto bail;
        }
    } else {
        nx_lazy *z = nx_lazy_new(vm->st, NX_LAZY_CALL);
        if (z != NULL) {
            z->newobj = newobj;
            z->func = Py_NewRef(func);
            z->args = Py_NewRef(args);
        }
        result = (PyObject *)z;
    }
bail:
    Py_XDECREF(func);
    Py_DECREF(args);
    return result == NULL ? -1 : upk_push(vm, result);
}

static int upo_build(upk_vm *vm)
{
    PyObject *state = upk_pop(vm);
    PyObject *inst = NULL;
    PyObject *key = NULL, *entry = NULL;
    int rc = -1;
    if (state == NULL || (inst = upk_top(vm)) == NULL) {
        goto bail;
    }
    if (Py_IS_TYPE(inst, (PyTypeObject *)vm->ordered_dict)) {
        /* state_dict()'s `_metadata` attribute: applied when the dict is materialised. */
        key = PyLong_FromVoidPtr(inst);
        if (key == NULL) {
            goto bail;
        }
        entry = PyDict_GetItemWithError(vm->build_states, key);
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                goto bail;
            }
            entry = PyList_New(0);
            if (entry == NULL || PyList_Append(entry, inst) < 0 ||
                PyDict_SetItem(vm->build_states, key, entry) < 0) {
                Py_XDECREF(entry);
                goto bail;
            }
            Py_DECREF(entry);
        }
        rc = PyList_Append(entry, state);
    } else if (Py_IS_TYPE(inst, (PyTypeObject *)vm->st->lazy_type) &&
               ((nx_lazy *)inst)->kind == NX_LAZY_CALL && ((nx_lazy *)inst)->state == NULL) {
        ((nx_lazy *)inst)->state = Py_NewRef(state);
        rc = 0;
    } else {
        upk_fail(vm, kUpoBuildTargetError);
    }
bail:
    Py_XDECREF(key);
    Py_XDECREF(state);
    return rc;
}

/* GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID: what the pickle asks to construct, recorded as
 * nx_lazy placeholders that nothing here calls. */
int upo_load_object(upk_vm *vm, uint8_t op)
{
    PyObject *pid = NULL;
    nx_lazy *z = NULL;

    switch (op) {
    case 'c': vm->op = "GLOBAL"; return upo_global(vm);
    case 'R': vm->op = "REDUCE"; return upo_reduce(vm, 0);
    case 0x81: vm->op = "NEWOBJ"; return upo_reduce(vm, 1);
    case 'b': vm->op = "BUILD"; return upo_build(vm);
    case 'Q':
        vm->op = "BINPERSID";
        pid = upk_pop(vm);
        if (pid == NULL) return -1;
        if (!PyTuple_CheckExact(pid)) {
            Py_DECREF(pid);
            return upk_fail(vm, kUpkPersidError);
        }
        z = nx_lazy_new(vm->st, NX_LAZY_PERSID);
        if (z == NULL) {
            Py_DECREF(pid);
            return -1;
        }
        z->args = pid;
        return upk_push(vm, (PyObject *)z);
    default:
        return UPK_NOT_MINE;
    }
}

