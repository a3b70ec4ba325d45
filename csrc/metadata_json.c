/* Export metadata: a Python structure of dict/list/tuple/str/int/float/bool/None written as
 * JSON with cJSON, so that the document a C++ deployment reads was produced by the same
 * library family it will parse it with. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>

#define META_MAX_DEPTH 64
/* Numbers are written as raw text: cJSON prints doubles with 15 significant digits when that
 * reads back within an epsilon, and integers beyond int range through a double, so its own
 * number printer may change a value by an ulp. Python's repr is the shortest exact text. */

/* The path (e.g. metadata['classes'][2]) names the structure, so the messages need not. */
static const char kMetaDepth[] = "value at %U nests deeper than %d levels";
static const char kMetaKey[] = "key at %U must be a str, got %.100s";
static const char kMetaType[] = "value at %U has unsupported type %.100s "
                                "(allowed: dict, list, tuple, str, int, float, bool, None)";
static const char kMetaFloat[] = "value at %U is %R: JSON has no NaN or infinity";
static const char kMetaInt[] = "integer at %U is %R: outside the 64-bit range JSON readers accept";

static cJSON *meta_from_object(PyObject *module, PyObject *obj, PyObject *path, int depth);

/* Returns a new reference to "<path>[<key>]" or "<path>[i]", NULL with an exception set. */
static PyObject *meta_child_path(PyObject *path, PyObject *key)
{
    return PyUnicode_FromFormat("%U[%R]", path, key);
}

static cJSON *meta_from_dict(PyObject *module, PyObject *dict, PyObject *path, int depth)
{
    cJSON *result = cJSON_CreateObject();
    PyObject *key, *value, *child_path = NULL;
    Py_ssize_t pos = 0;

    if (result == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    while (PyDict_Next(dict, &pos, &key, &value)) {
        const char *name;
        cJSON *item;

        if (!PyUnicode_Check(key)) {
            PyErr_Format(nx_get_state(module)->ExportError, kMetaKey, path, Py_TYPE(key)->tp_name);
            goto bail;
        }
        name = PyUnicode_AsUTF8(key);
        if (name == NULL) {
            goto bail;
        }
        child_path = meta_child_path(path, key);
        if (child_path == NULL) {
            goto bail;
        }
        item = meta_from_object(module, value, child_path, depth + 1);
        Py_CLEAR(child_path);
        if (item == NULL) {
            goto bail;
        }
        if (!cJSON_AddItemToObject(result, name, item)) {
            cJSON_Delete(item);
            PyErr_NoMemory();
            goto bail;
        }
    }
    return result;
bail:
    Py_XDECREF(child_path);
    cJSON_Delete(result);
    return NULL;
}

static cJSON *meta_from_sequence(PyObject *module, PyObject *seq, PyObject *path, int depth)
{
    cJSON *result = cJSON_CreateArray();
    PyObject *index = NULL, *child_path = NULL;
    Py_ssize_t i, n = PySequence_Fast_GET_SIZE(seq);

    if (result == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        cJSON *item;

        index = PyLong_FromSsize_t(i);
        if (index == NULL) {
            goto bail;
        }
        child_path = meta_child_path(path, index);
        Py_CLEAR(index);
        if (child_path == NULL) {
            goto bail;
        }
        item = meta_from_object(module, PySequence_Fast_GET_ITEM(seq, i), child_path, depth + 1);
        Py_CLEAR(child_path);
        if (item == NULL) {
            goto bail;
        }
        if (!cJSON_AddItemToArray(result, item)) {
            cJSON_Delete(item);
            PyErr_NoMemory();
            goto bail;
        }
    }
    return result;
bail:
    Py_XDECREF(index);
    Py_XDECREF(child_path);
    cJSON_Delete(result);
    return NULL;
}

/* Converts one value. Returns a new cJSON tree, or NULL with an exception set. */
static cJSON *meta_from_object(PyObject *module, PyObject *obj, PyObject *path, int depth)
{
    nx_state *st = nx_get_state(module);
    cJSON *result = NULL;

    if (depth > META_MAX_DEPTH) {
        PyErr_Format(st->ExportError, kMetaDepth, path, META_MAX_DEPTH);
        return NULL;
    }
    if (obj == Py_None) {
        result = cJSON_CreateNull();
    } else if (PyBool_Check(obj)) {
        result = cJSON_CreateBool(obj == Py_True);
    } else if (PyLong_Check(obj)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);

        if (v == -1 && PyErr_Occurred()) {
            return NULL;
        }
        char text[32];

        if (overflow) {
            PyErr_Format(st->ExportError, kMetaInt, path, obj);
            return NULL;
        }
        snprintf(text, sizeof(text), "%lld", v);
        result = cJSON_CreateRaw(text);
    } else if (PyFloat_Check(obj)) {
        double v = PyFloat_AS_DOUBLE(obj);
        char *text;

        if (!isfinite(v)) {
            PyErr_Format(st->ExportError, kMetaFloat, path, obj);
            return NULL;
        }
        /* 'r': shortest repr that reads back exactly; ADD_DOT_0 keeps 2.0 a float for readers. */
        text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL) {
            return NULL;
        }
        result = cJSON_CreateRaw(text);
        PyMem_Free(text);
    } else if (PyUnicode_Check(obj)) {
        const char *text = PyUnicode_AsUTF8(obj);

        if (text == NULL) {
            return NULL;
        }
        result = cJSON_CreateString(text);
    } else if (PyDict_Check(obj)) {
        return meta_from_dict(module, obj, path, depth);
    } else if (PyList_Check(obj) || PyTuple_Check(obj)) {
        PyObject *seq = PySequence_Fast(obj, "metadata sequence");

        if (seq == NULL) {
            return NULL;
        }
        result = meta_from_sequence(module, seq, path, depth);
        Py_DECREF(seq);
        return result;
    } else {
        PyErr_Format(st->ExportError, kMetaType, path, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (result == NULL) {
        PyErr_NoMemory();
    }
    return result;
}

cJSON *nx_python_to_cjson(PyObject *module, PyObject *obj, PyObject *root_path)
{
    return meta_from_object(module, obj, root_path, 0);
}

/* metadata_to_json(obj, indent=True) -> bytes */
static PyObject *py_metadata_to_json(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"metadata", "indent", NULL};
    PyObject *obj, *root_path = NULL, *result = NULL;
    int indent = 1;
    cJSON *tree = NULL;
    char *text = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:metadata_to_json", kwlist, &obj, &indent)) {
        return NULL;
    }
    root_path = PyUnicode_FromString("metadata");
    if (root_path == NULL) {
        goto bail;
    }
    tree = nx_python_to_cjson(module, obj, root_path);
    if (tree == NULL) {
        goto bail;
    }
    text = indent ? cJSON_Print(tree) : cJSON_PrintUnformatted(tree);
    if (text == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    result = PyBytes_FromString(text);
bail:
    if (text != NULL) {
        cJSON_free(text);
    }
    cJSON_Delete(tree);
    Py_XDECREF(root_path);
    return result;
}

static PyMethodDef metadata_functions[] = {
    {"metadata_to_json", (PyCFunction)(void (*)(void))py_metadata_to_json,
     METH_VARARGS | METH_KEYWORDS,
     "metadata_to_json(metadata, indent=True) -> bytes\n--\n\n"
     "Write a structure of dict/list/tuple/str/int/float/bool/None as UTF-8 JSON with cJSON. "
     "Raises ExportError naming the path of a value JSON cannot hold exactly."},
    {NULL, NULL, 0, NULL},
};

int nx_add_metadata_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, metadata_functions);
}
