/* Module definition of nnunet_export._core: multi-phase init, module state, exception hierarchy. */
#define NX_IMPORT_ARRAY
#include "nnunet_export.h"

static int nx_add_exception(PyObject *module, PyObject **slot, const char *name,
                            const char *doc, PyObject *base)
{
    *slot = PyErr_NewExceptionWithDoc(name, doc, base, NULL);
    if (*slot == NULL) {
        return -1;
    }
    /* PyModule_AddObjectRef does not steal: the state keeps its own reference. */
    return PyModule_AddObjectRef(module, strrchr(name, '.') + 1, *slot);
}

static int nx_exec(PyObject *module)
{
    nx_state *st = nx_get_state(module);

    if (PyArray_ImportNumPyAPI() < 0) {
        return -1;
    }
    if (nx_add_exception(module, &st->ExportError, "nnunet_export.ExportError",
                         "Base class of every error nnunet_export raises for bad input.",
                         PyExc_Exception) < 0 ||
        nx_add_exception(module, &st->CheckpointError, "nnunet_export.CheckpointError",
                         "A checkpoint file cannot be read: missing, truncated, corrupt or "
                         "in a format this reader does not accept.",
                         st->ExportError) < 0 ||
        nx_add_exception(module, &st->UnsafeCheckpointError, "nnunet_export.UnsafeCheckpointError",
                         "A checkpoint asks to construct an object outside the allowlist; "
                         "nothing from it was executed.",
                         st->CheckpointError) < 0 ||
        nx_add_exception(module, &st->PlansError, "nnunet_export.PlansError",
                         "plans.json or dataset.json is missing, malformed or inconsistent.",
                         st->ExportError) < 0 ||
        nx_add_exception(module, &st->UnsupportedArchitectureError,
                         "nnunet_export.UnsupportedArchitectureError",
                         "The plans name a network class, layer type or keyword this package does "
                         "not build.\n\nRaised instead of importing whatever the plans name: "
                         "plans.json comes from strangers, so only an explicit allowlist of torch "
                         "classes is ever instantiated.",
                         st->ExportError) < 0 ||
        nx_add_exception(module, &st->WeightsMismatchError, "nnunet_export.WeightsMismatchError",
                         "A state dict does not fit the network built from the plans.",
                         st->ExportError) < 0) {
        return -1;
    }
    /* The unpickler and the materialiser compare and build OrderedDicts on every read. */
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL) {
        return -1;
    }
    st->ordered_dict_type = PyObject_GetAttrString(collections, "OrderedDict");
    Py_DECREF(collections);
    if (st->ordered_dict_type == NULL) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "__version__", NX_VERSION) < 0) {
        return -1;
    }
    if (nx_add_checkpoint_functions(module) < 0 || nx_add_plans_functions(module) < 0 ||
        nx_add_arch_functions(module) < 0 ||
        nx_add_thread_functions(module) < 0 || nx_add_metadata_functions(module) < 0) {
        return -1;
    }
    return 0;
}

static int nx_traverse(PyObject *module, visitproc visit, void *arg)
{
    nx_state *st = nx_get_state(module);
    Py_VISIT(st->ExportError);
    Py_VISIT(st->CheckpointError);
    Py_VISIT(st->UnsafeCheckpointError);
    Py_VISIT(st->PlansError);
    Py_VISIT(st->UnsupportedArchitectureError);
    Py_VISIT(st->WeightsMismatchError);
    Py_VISIT(st->ordered_dict_type);
    Py_VISIT(st->mapping_type);
    Py_VISIT(st->lazy_type);
    return 0;
}

static int nx_clear(PyObject *module)
{
    nx_state *st = nx_get_state(module);
    Py_CLEAR(st->ExportError);
    Py_CLEAR(st->CheckpointError);
    Py_CLEAR(st->UnsafeCheckpointError);
    Py_CLEAR(st->PlansError);
    Py_CLEAR(st->UnsupportedArchitectureError);
    Py_CLEAR(st->WeightsMismatchError);
    Py_CLEAR(st->ordered_dict_type);
    Py_CLEAR(st->mapping_type);
    Py_CLEAR(st->lazy_type);
    return 0;
}

static void nx_free(void *module)
{
    nx_clear((PyObject *)module);
}

static PyModuleDef_Slot nx_slots[] = {
    {Py_mod_exec, nx_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef nx_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "nnunet_export._core",
    .m_doc = "C core of nnunet_export: safe checkpoint reading, plans parsing, thread isolation.",
    .m_size = sizeof(nx_state),
    .m_slots = nx_slots,
    .m_traverse = nx_traverse,
    .m_clear = nx_clear,
    .m_free = nx_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&nx_module);
}
