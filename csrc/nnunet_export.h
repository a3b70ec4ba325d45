/* Private header of nnunet_export._core. Every C file includes it first.
 *
 * Ownership: module state owns one strong reference to each exception type; functions named
 * nx_* return new references unless their comment says "borrowed". */
#ifndef NNUNET_EXPORT_H
#define NNUNET_EXPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* One NumPy C-API table for all translation units; only module.c imports it. */
#define PY_ARRAY_UNIQUE_SYMBOL nnunet_export_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#ifndef NX_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stddef.h>
#include <stdint.h>

#define NX_VERSION "0.1.0"

typedef struct {
    PyObject *ExportError;           /* base of every error raised for bad user input */
    PyObject *CheckpointError;       /* unreadable or malformed checkpoint file */
    PyObject *UnsafeCheckpointError; /* checkpoint asks for a global outside the allowlist */
    PyObject *PlansError;            /* plans.json / dataset.json problems */
    PyObject *WeightsMismatchError;  /* state dict does not fit the network */
    /* checkpoint reader state (owned references, may be NULL until first use) */
    PyObject *ordered_dict_type;     /* collections.OrderedDict */
} nx_state;

/* Returns the module state of the _core module `module` (borrowed, never NULL). */
static inline nx_state *nx_get_state(PyObject *module)
{
    return (nx_state *)PyModule_GetState(module);
}

/* Each concern adds its Python-visible functions to the module.
 * Returns 0 on success, -1 with an exception set. */
int nx_add_checkpoint_functions(PyObject *module);
int nx_add_plans_functions(PyObject *module);
int nx_add_thread_functions(PyObject *module);
int nx_add_metadata_functions(PyObject *module);

#endif /* NNUNET_EXPORT_H */
