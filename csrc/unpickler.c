/* Protocol-2 pickle VM for torch.save's data.pkl: the stack, marks and memo, the opcodes that
 * build plain values and containers, and the dispatch loop. It knows exactly the opcodes torch's
 * weights-only loader accepts and never imports or calls anything named by the file; the
 * opcodes that ask to construct objects live in unpickler_objects.c, the allowlist and
 * placeholders in pickle_globals.c. */
#include "nnunet_export.h"

#include <string.h>

static const char kUpkError[] = "checkpoint '%U': %s byte %llu: opcode %s: %s";
static const char kUpkUnknownOpcode[] =
    "checkpoint '%U': %s byte %llu: opcode 0x%02x (%s) is not allowed; only the protocol-2 "
    "opcodes torch's weights-only loader accepts are";
static const char kUpkPythonError[] = "checkpoint '%U': %s byte %llu: opcode %s: %s (%S)";
static const char kUpkTruncated[] = "checkpoint '%U': %s ends inside opcode %s at byte %llu";
static const char kUpkNoStop[] = "checkpoint '%U': %s ends without STOP";
static const char kUpkProtocolError[] = "only protocol 2 (first opcode) is accepted";
static const char kUpkShortStackError[] = "not enough items on the stack";
static const char kUpkAppendError[] = "needs a list and an item";
static const char kUpkSetitemError[] = "needs a dict, a key and a value";
static const char kUpkUtf8Error[] = "string is not UTF-8";
static const char kUpkMarkFloorError[] = "stack empty above the last MARK";
static const char kUpkUnderflowError[] = "stack underflow";
static const char kUpkNoMarkError[] = "no MARK on the stack";
static const char kUpkMemoRangeError[] = "memo index larger than the pickle could ever fill";
static const char kUpkMemoMissingError[] = "memo index was never stored";
static const char kUpkSetitemsError[] = "needs a dict below the MARK and key/value pairs above it";
static const char kUpkDictTargetError[] = "target is not a dict or OrderedDict";
static const char kUpkDictKeyError[] =
    "dict key is not a str, bytes, bool, None or int in (-2**60, 2**61 - 1) other than -1 (other "
    "keys allow hash-collision floods)";
static const char kUpkBadKeyError[] = "bad dict key";
static const char kUpkAppendsError[] = "needs a list below the MARK";
static const char kUpkListTargetError[] = "target is not a list";
static const char kUpkStopStackError[] = "STOP with a stack other than exactly one object";
static const char kUpkTrailingError[] = "bytes follow STOP";

int upk_fail(upk_vm *vm, const char *why)
{
    PyErr_Format(vm->st->CheckpointError, kUpkError, vm->path, vm->entry,
                 (unsigned long long)vm->op_at, vm->op, why);
    return -1;
}

/* Wraps the current Python exception (e.g. a bad UTF-8 string) into a CheckpointError. */
int upk_fail_from_python(upk_vm *vm, const char *what)
{
    PyObject *exc = nx_take_exception();
    PyObject *msg = exc != NULL ? PyObject_Str(exc) : NULL;
    PyErr_Clear();
    PyErr_Format(vm->st->CheckpointError, kUpkPythonError,
                 vm->path, vm->entry, (unsigned long long)vm->op_at, vm->op, what,
                 msg != NULL ? msg : Py_None);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
    return -1;
}

const uint8_t *upk_read(upk_vm *vm, uint64_t n)
{
    if (n > vm->len - vm->pos) {
        PyErr_Format(vm->st->CheckpointError, kUpkTruncated, vm->path, vm->entry, vm->op,
                     (unsigned long long)vm->op_at);
        return NULL;
    }
    const uint8_t *p = vm->data + vm->pos;
    vm->pos += n;
    return p;
}

/* Pushes a new reference (stolen, also on failure). Stack size is bounded by the pickle length
 * because every push consumes at least one byte. */
int upk_push(upk_vm *vm, PyObject *obj)
{
    if (obj == NULL) {
        return -1;
    }
    if (vm->sp == vm->stack_cap) {
        size_t cap = vm->stack_cap ? vm->stack_cap * 2 : 64;
        PyObject **grown = PyMem_Realloc(vm->stack, cap * sizeof *grown);
        if (grown == NULL) {
            Py_DECREF(obj);
            PyErr_NoMemory();
            return -1;
        }
        vm->stack = grown;
        vm->stack_cap = cap;
    }
    vm->stack[vm->sp++] = obj;
    return 0;
}

/* Returns a new reference popped from the stack (or NULL with an error: underflow or crossing
 * the last MARK). */
PyObject *upk_pop(upk_vm *vm)
{
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    if (vm->sp <= floor) {
        upk_fail(vm, vm->nmarks ? kUpkMarkFloorError : kUpkUnderflowError);
        return NULL;
    }
    return vm->stack[--vm->sp];
}

PyObject *upk_top(upk_vm *vm)
{
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    if (vm->sp <= floor) {
        upk_fail(vm, vm->nmarks ? kUpkMarkFloorError : kUpkUnderflowError);
        return NULL;
    }
    return vm->stack[vm->sp - 1];
}

/* Pops the last MARK; returns the stack index where the marked items start, or -1. */
static Py_ssize_t upk_pop_mark(upk_vm *vm)
{
    if (vm->nmarks == 0) {
        upk_fail(vm, kUpkNoMarkError);
        return -1;
    }
    return (Py_ssize_t)vm->marks[--vm->nmarks];
}

static PyObject *upk_tuple_from(upk_vm *vm, size_t start)
{
    PyObject *t = PyTuple_New((Py_ssize_t)(vm->sp - start));
    if (t == NULL) {
        return NULL;
    }
    for (size_t i = start; i < vm->sp; i++) {
        PyTuple_SET_ITEM(t, (Py_ssize_t)(i - start), vm->stack[i]);
    }
    vm->sp = start;
    return t;
}

static int upk_memo_put(upk_vm *vm, uint64_t idx)
{
    PyObject *top = upk_top(vm);
    if (top == NULL) {
        return -1;
    }
    /* Real indices are below the number of PUT opcodes, hence below the pickle length: this
     * bounds the memo allocation by the input size. */
    if (idx >= vm->len) {
        return upk_fail(vm, kUpkMemoRangeError);
    }
    if (idx >= vm->memo_cap) {
        size_t cap = vm->memo_cap ? vm->memo_cap : 64;
        while (cap <= idx) {
            cap *= 2;
        }
        PyObject **grown = PyMem_Realloc(vm->memo, cap * sizeof *grown);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(grown + vm->memo_cap, 0, (cap - vm->memo_cap) * sizeof *grown);
        vm->memo = grown;
        vm->memo_cap = cap;
    }
    Py_XSETREF(vm->memo[idx], Py_NewRef(top));
    return 0;
}

static int upk_memo_get(upk_vm *vm, uint64_t idx)
{
    if (idx >= vm->memo_cap || vm->memo[idx] == NULL) {
        return upk_fail(vm, kUpkMemoMissingError);
    }
    return upk_push(vm, Py_NewRef(vm->memo[idx]));
}

/* Dict keys the VM accepts. Keys whose hashes an attacker can make collide (floats, tuples, ints
 * that differ by multiples of 2**61 - 1) would turn SETITEMS quadratic: a small file could hang the
 * reader. nnU-Net checkpoints use str keys (state dicts, logging) and small ints (optimizer). */
static int upk_key_ok(upk_vm *vm, PyObject *key)
{
    if (PyUnicode_CheckExact(key) || PyBytes_CheckExact(key) || key == Py_None || PyBool_Check(key) ||
        Py_IS_TYPE(key, (PyTypeObject *)vm->st->lazy_type)) {
        return 1; /* randomised (SipHash) or identity hashes */
    }
    if (PyLong_CheckExact(key)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(key, &overflow);
        /* hash(i) == i here, except hash(-1) == hash(-2) */
        return !overflow && v > -(1LL << 60) && v < (1LL << 61) - 1 && v != -1;
    }
    return 0;
}

static int upk_setitems(upk_vm *vm, Py_ssize_t start)
{
    if (start < 1 || (size_t)start > vm->sp || ((size_t)(vm->sp - (size_t)start)) % 2 != 0) {
        return upk_fail(vm, kUpkSetitemsError);
    }
    PyObject *target = vm->stack[start - 1];
    if (!PyDict_CheckExact(target) && !Py_IS_TYPE(target, (PyTypeObject *)vm->ordered_dict)) {
        return upk_fail(vm, kUpkDictTargetError);
    }
    for (size_t i = (size_t)start; i < vm->sp; i += 2) {
        if (!upk_key_ok(vm, vm->stack[i])) {
            return upk_fail(vm, kUpkDictKeyError);
        }
        /* Keys are built-in values or placeholders: hashing them runs no code from the file. */
        if (PyObject_SetItem(target, vm->stack[i], vm->stack[i + 1]) < 0) {
            return upk_fail_from_python(vm, kUpkBadKeyError);
        }
    }
    while (vm->sp > (size_t)start) {
        Py_DECREF(vm->stack[--vm->sp]);
    }
    return 0;
}

static int upk_appends(upk_vm *vm, Py_ssize_t start)
{
    if (start < 1 || (size_t)start > vm->sp) {
        return upk_fail(vm, kUpkAppendsError);
    }
    PyObject *target = vm->stack[start - 1];
    if (!PyList_CheckExact(target)) {
        return upk_fail(vm, kUpkListTargetError);
    }
    for (size_t i = (size_t)start; i < vm->sp; i++) {
        if (PyList_Append(target, vm->stack[i]) < 0) {
            return -1;
        }
    }
    while (vm->sp > (size_t)start) {
        Py_DECREF(vm->stack[--vm->sp]);
    }
    return 0;
}

/* LONG1: little-endian two's complement, n <= 255 bytes. */
static PyObject *upk_long(const uint8_t *p, size_t n)
{
    if (n == 0) {
        return PyLong_FromLong(0);
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromNativeBytes(p, n, Py_ASNATIVEBYTES_LITTLE_ENDIAN); /* signed */
#else
    return _PyLong_FromByteArray(p, n, 1, 1);
#endif
}

static const char *upk_opcode_name(uint8_t op)
{
    switch (op) {
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'V': return "UNICODE";
    case 'F': return "FLOAT";
    case 'P': return "PERSID";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 'g': return "GET";
    case 'p': return "PUT";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'd': return "DICT";
    case 'l': return "LIST";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    default: return "unknown";
    }
}

/* The load_* families below each handle the opcodes of one kind, like CPython's _pickle.c. */

/* PROTO, STOP, MARK and the opcodes that build a container from stack items. */
static int upk_load_structure(upk_vm *vm, uint8_t op)
{
    const uint8_t *p;
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    Py_ssize_t start;

    switch (op) {
    case 0x80:
        vm->op = "PROTO";
        if ((p = upk_read(vm, 1)) == NULL) return -1;
        if (vm->op_at != 0 || *p > 2) return upk_fail(vm, kUpkProtocolError);
        return 0;
    case '.':
        vm->op = "STOP";
        return 1;
    case '(':
        vm->op = "MARK";
        if (vm->nmarks == vm->marks_cap) {
            size_t cap = vm->marks_cap ? vm->marks_cap * 2 : 32;
            size_t *grown = PyMem_Realloc(vm->marks, cap * sizeof *grown);
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            vm->marks = grown;
            vm->marks_cap = cap;
        }
        vm->marks[vm->nmarks++] = vm->sp;
        return 0;
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
        static const char *names[] = {"TUPLE1", "TUPLE2", "TUPLE3"};
        size_t n = (size_t)(op - 0x84);
        vm->op = names[n - 1];
        if (vm->sp < floor + n) return upk_fail(vm, kUpkShortStackError);
        return upk_push(vm, upk_tuple_from(vm, vm->sp - n));
    }
    case 't':
        vm->op = "TUPLE";
        start = upk_pop_mark(vm);
        return start < 0 ? -1 : upk_push(vm, upk_tuple_from(vm, (size_t)start));
    case 'a':
        vm->op = "APPEND";
        if (vm->sp < floor + 2) return upk_fail(vm, kUpkAppendError);
        return upk_appends(vm, (Py_ssize_t)vm->sp - 1);
    case 'e':
        vm->op = "APPENDS";
        start = upk_pop_mark(vm);
        return start < 0 ? -1 : upk_appends(vm, start);
    case 's':
        vm->op = "SETITEM";
        if (vm->sp < floor + 3) return upk_fail(vm, kUpkSetitemError);
        return upk_setitems(vm, (Py_ssize_t)vm->sp - 2);
    case 'u':
        vm->op = "SETITEMS";
        start = upk_pop_mark(vm);
        return start < 0 ? -1 : upk_setitems(vm, start);
    default:
        return UPK_NOT_MINE;
    }
}

/* Constants: empty containers, None, True, False, ints and floats. */
static int upk_load_constant(upk_vm *vm, uint8_t op)
{
    const uint8_t *p;
    double d;

    switch (op) {
    case ')': vm->op = "EMPTY_TUPLE"; return upk_push(vm, PyTuple_New(0));
    case ']': vm->op = "EMPTY_LIST"; return upk_push(vm, PyList_New(0));
    case '}': vm->op = "EMPTY_DICT"; return upk_push(vm, PyDict_New());
    case 0x8f: vm->op = "EMPTY_SET"; return upk_push(vm, PySet_New(NULL));
    case 'N': vm->op = "NONE"; return upk_push(vm, Py_NewRef(Py_None));
    case 0x88: vm->op = "NEWTRUE"; return upk_push(vm, Py_NewRef(Py_True));
    case 0x89: vm->op = "NEWFALSE"; return upk_push(vm, Py_NewRef(Py_False));
    case 'J':
        vm->op = "BININT";
        if ((p = upk_read(vm, 4)) == NULL) return -1;
        return upk_push(vm, PyLong_FromLong((long)(int32_t)nx_le32(p)));
    case 'K':
        vm->op = "BININT1";
        if ((p = upk_read(vm, 1)) == NULL) return -1;
        return upk_push(vm, PyLong_FromLong(p[0]));
    case 'M':
        vm->op = "BININT2";
        if ((p = upk_read(vm, 2)) == NULL) return -1;
        return upk_push(vm, PyLong_FromLong(nx_le16(p)));
    case 0x8a:
        vm->op = "LONG1";
        if ((p = upk_read(vm, 1)) == NULL || (p = upk_read(vm, p[0])) == NULL) return -1;
        return upk_push(vm, upk_long(p, vm->data[vm->op_at + 1]));
    case 'G':
        vm->op = "BINFLOAT";
        if ((p = upk_read(vm, 8)) == NULL) return -1;
#if PY_VERSION_HEX >= 0x030B0000
        d = PyFloat_Unpack8((const char *)p, 0); /* big-endian */
#else
        d = _PyFloat_Unpack8(p, 0);
#endif
        if (d == -1.0 && PyErr_Occurred()) return -1;
        return upk_push(vm, PyFloat_FromDouble(d));
    default:
        return UPK_NOT_MINE;
    }
}

/* BINUNICODE and SHORT_BINSTRING (torch.load decodes protocol-2 byte strings as UTF-8). */
static int upk_load_string(upk_vm *vm, uint8_t op)
{
    const uint8_t *p;
    uint64_t n;
    PyObject *s;

    if (op == 'X') {
        vm->op = "BINUNICODE";
        if ((p = upk_read(vm, 4)) == NULL) return -1;
        n = nx_le32(p);
    } else if (op == 'U') {
        vm->op = "SHORT_BINSTRING";
        if ((p = upk_read(vm, 1)) == NULL) return -1;
        n = p[0];
    } else {
        return UPK_NOT_MINE;
    }
    /* The declared length is checked against the remaining bytes before anything is allocated. */
    if ((p = upk_read(vm, n)) == NULL) return -1;
    s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, op == 'X' ? "surrogatepass" : "strict");
    if (s == NULL) return upk_fail_from_python(vm, kUpkUtf8Error);
    return upk_push(vm, s);
}

/* BINGET, LONG_BINGET, BINPUT, LONG_BINPUT. */
static int upk_load_memo(upk_vm *vm, uint8_t op)
{
    const uint8_t *p;

    switch (op) {
    case 'h':
        vm->op = "BINGET";
        if ((p = upk_read(vm, 1)) == NULL) return -1;
        return upk_memo_get(vm, p[0]);
    case 'j':
        vm->op = "LONG_BINGET";
        if ((p = upk_read(vm, 4)) == NULL) return -1;
        return upk_memo_get(vm, nx_le32(p));
    case 'q':
        vm->op = "BINPUT";
        if ((p = upk_read(vm, 1)) == NULL) return -1;
        return upk_memo_put(vm, p[0]);
    case 'r':
        vm->op = "LONG_BINPUT";
        if ((p = upk_read(vm, 4)) == NULL) return -1;
        return upk_memo_put(vm, nx_le32(p));
    default:
        return UPK_NOT_MINE;
    }
}

/* One opcode. Returns 1 at STOP, 0 to continue, -1 on error. */
static int upk_step(upk_vm *vm)
{
    static int (*const families[])(upk_vm *, uint8_t) = {
        upk_load_structure, upk_load_constant, upk_load_string, upk_load_memo, upo_load_object,
    };
    const uint8_t *p;
    uint8_t op;

    vm->op_at = vm->pos;
    vm->op = "?";
    if ((p = upk_read(vm, 1)) == NULL) {
        return -1;
    }
    op = *p;
    for (size_t i = 0; i < NX_COUNT(families); i++) {
        int rc = families[i](vm, op);
        if (rc != UPK_NOT_MINE) {
            return rc;
        }
    }
    PyErr_Format(vm->st->CheckpointError, kUpkUnknownOpcode, vm->path, vm->entry,
                 (unsigned long long)vm->op_at, (unsigned)op, upk_opcode_name(op));
    return -1;
}

PyObject *nx_unpickle(nx_state *st, PyObject *path, const char *entry, const uint8_t *data,
                      uint64_t len, PyObject **build_states)
{
    upk_vm vm;
    PyObject *result = NULL;
    int rc = 0;

    memset(&vm, 0, sizeof vm);
    vm.st = st;
    vm.path = path;
    vm.entry = entry;
    vm.data = data;
    vm.len = len;
    *build_states = NULL;
    vm.build_states = PyDict_New();
    if (vm.build_states == NULL) {
        goto bail;
    }
    vm.ordered_dict = st->ordered_dict_type;
    while (rc == 0) {
        if (vm.pos >= vm.len) {
            PyErr_Format(st->CheckpointError, kUpkNoStop, path, entry);
            goto bail;
        }
        rc = upk_step(&vm);
    }
    if (rc < 0) {
        goto bail;
    }
    if (vm.sp != 1 || vm.nmarks != 0) {
        upk_fail(&vm, kUpkStopStackError);
        goto bail;
    }
    if (vm.pos != vm.len) {
        upk_fail(&vm, kUpkTrailingError);
        goto bail;
    }
    result = vm.stack[--vm.sp];
    *build_states = vm.build_states;
    vm.build_states = NULL;
bail:
    while (vm.sp > 0) {
        Py_DECREF(vm.stack[--vm.sp]);
    }
    for (size_t i = 0; i < vm.memo_cap; i++) {
        Py_XDECREF(vm.memo[i]);
    }
    PyMem_Free(vm.stack);
    PyMem_Free(vm.marks);
    PyMem_Free(vm.memo);
    Py_XDECREF(vm.build_states);
    return result;
}
