/* What the unpickler may name: the allowlist of globals (classified, never imported), the dtype
 * tables behind storage and dtype globals, and the nx_lazy placeholder type that stands in for
 * every object the VM does not construct. */
#include "nnunet_export.h"

#include <string.h>

const nx_dtype_info nx_dtypes[] = {
    {"float64", "DoubleStorage", 8},
    {"float32", "FloatStorage", 4},
    {"float16", "HalfStorage", 2},
    {"bfloat16", "BFloat16Storage", 2},
    {"int64", "LongStorage", 8},
    {"int32", "IntStorage", 4},
    {"int16", "ShortStorage", 2},
    {"int8", "CharStorage", 1},
    {"uint8", "ByteStorage", 1}, /* NX_DTYPE_UINT8 */
    {"bool", "BoolStorage", 1},
    {"complex128", "ComplexDoubleStorage", 16},
    {"complex64", "ComplexFloatStorage", 8},
    {"complex32", NULL, 4},
    {"float8_e5m2", NULL, 1},
    {"float8_e4m3fn", NULL, 1},
    {"float8_e5m2fnuz", NULL, 1},
    {"float8_e4m3fnuz", NULL, 1},
    {"uint16", NULL, 2},
    {"uint32", NULL, 4},
    {"uint64", NULL, 8},
};
const int nx_dtype_count = (int)(sizeof nx_dtypes / sizeof nx_dtypes[0]);

/* numpy 2 pickles dtype classes as numpy.dtypes.<Name>; only these numeric ones are accepted. */
const char *const nx_np_dtype_classes[] = {
    "BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType",
    "UInt32DType", "Int64DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
    "Complex64DType", "Complex128DType", "LongDType", "ULongDType", "LongLongDType",
    "ULongLongDType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType",
};
const int nx_np_dtype_class_count = (int)(sizeof nx_np_dtype_classes / sizeof nx_np_dtype_classes[0]);


/* ---- nx_lazy: placeholder objects (GC-tracked: args may contain cycles via the memo) ---- */

static int glb_lazy_traverse(PyObject *self, visitproc visit, void *arg)
{
    nx_lazy *z = (nx_lazy *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(z->name);
    Py_VISIT(z->func);
    Py_VISIT(z->args);
    Py_VISIT(z->state);
    return 0;
}

static int glb_lazy_clear(PyObject *self)
{
    nx_lazy *z = (nx_lazy *)self;
    Py_CLEAR(z->name);
    Py_CLEAR(z->func);
    Py_CLEAR(z->args);
    Py_CLEAR(z->state);
    return 0;
}

static void glb_lazy_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* hostile pickles can nest calls 100k deep: defer like tuples do instead of recursing */
    Py_TRASHCAN_BEGIN(self, glb_lazy_dealloc)
    glb_lazy_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyObject *glb_lazy_repr(PyObject *self)
{
    nx_lazy *z = (nx_lazy *)self;
    static const char *kinds[] = {"global", "call", "persistent id"};
    return PyUnicode_FromFormat("<unconstructed %s %R>", kinds[z->kind],
                                z->name != NULL ? z->name : Py_None);
}

static PyType_Slot glb_lazy_slots[] = {
    {Py_tp_dealloc, glb_lazy_dealloc},
    {Py_tp_traverse, glb_lazy_traverse},
    {Py_tp_clear, glb_lazy_clear},
    {Py_tp_repr, glb_lazy_repr},
    {Py_tp_doc, "Unconstructed pickle object (internal)."},
    {0, NULL},
};

static PyType_Spec glb_lazy_spec = {
    .name = "nnunet_export._core._Lazy",
    .basicsize = sizeof(nx_lazy),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = glb_lazy_slots,
};

int nx_lazy_add_type(PyObject *module)
{
    nx_state *st = nx_get_state(module);
    st->lazy_type = PyType_FromModuleAndSpec(module, &glb_lazy_spec, NULL);
    return st->lazy_type == NULL ? -1 : 0;
}

nx_lazy *nx_lazy_new(nx_state *st, int kind)
{
    nx_lazy *z = PyObject_GC_New(nx_lazy, (PyTypeObject *)st->lazy_type);
    if (z == NULL) {
        return NULL;
    }
    z->kind = kind;
    z->global_id = NX_G_UNSAFE;
    z->sub = -1;
    z->newobj = 0;
    z->name = z->func = z->args = z->state = NULL;
    PyObject_GC_Track((PyObject *)z);
    return z;
}

/* ---- allowlist ---- */

typedef struct {
    const char *module;
    const char *name;
    int id;
} glb_allowed;

static const glb_allowed glb_allowlist[] = {
    {"collections", "OrderedDict", NX_G_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor_v2", NX_G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_tensor_v3", NX_G_REBUILD_TENSOR_V3},
    {"torch._utils", "_rebuild_parameter", NX_G_REBUILD_PARAMETER},
    {"torch", "device", NX_G_DEVICE},
    {"numpy.core.multiarray", "scalar", NX_G_NP_SCALAR},
    {"numpy._core.multiarray", "scalar", NX_G_NP_SCALAR},
    {"numpy", "dtype", NX_G_NP_DTYPE},
    {"_codecs", "encode", NX_G_CODECS_ENCODE},
};

/* Classifies "module name"; sets *sub for storage and dtype globals. */
int nx_classify_global(const char *module, const char *name, int *sub)
{
    *sub = -1;
    for (size_t i = 0; i < sizeof glb_allowlist / sizeof glb_allowlist[0]; i++) {
        if (strcmp(module, glb_allowlist[i].module) == 0 && strcmp(name, glb_allowlist[i].name) == 0) {
            return glb_allowlist[i].id;
        }
    }
    /* v3 tensors (float8, uint16, ...) pickle their storage as torch.storage.UntypedStorage */
    if ((strcmp(module, "torch") == 0 || strcmp(module, "torch.storage") == 0) &&
        strcmp(name, "UntypedStorage") == 0) {
        *sub = NX_DTYPE_UINT8;
        return NX_G_STORAGE;
    }
    if (strcmp(module, "torch") == 0) {
        for (int i = 0; i < nx_dtype_count; i++) {
            if (nx_dtypes[i].storage_name != NULL && strcmp(name, nx_dtypes[i].storage_name) == 0) {
                *sub = i;
                return NX_G_STORAGE;
            }
            if (strcmp(name, nx_dtypes[i].torch_name) == 0) {
                *sub = i;
                return NX_G_TORCH_DTYPE;
            }
        }
    }
    if (strcmp(module, "numpy.dtypes") == 0) {
        for (int i = 0; i < nx_np_dtype_class_count; i++) {
            if (strcmp(name, nx_np_dtype_classes[i]) == 0) {
                *sub = i;
                return NX_G_NP_DTYPE_CLASS;
            }
        }
    }
    return NX_G_UNSAFE;
}
