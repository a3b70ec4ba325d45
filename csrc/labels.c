/* dataset.json for the plans reader: channels, file ending and labels interpreted as nnU-Net's
 * LabelManager (labels, regions, ignore label, segmentation heads) and
 * determine_num_input_channels (a cascade stage adds one input per foreground label) do. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define LABELS_MAX_VALUE 2147483647LL

#define kNoChannelsError "missing required key (the legacy key modality is missing too)"
#define kChannelCountError "has %zd entries, but channel_names has %zd"
#define kEmptyChannelsError "expected at least one channel"
#define kNoBackgroundError "missing required key: nnU-Net needs a label named background with value 0"
#define kBackgroundListError "background must be the single label 0, not a list"
#define kBackgroundValueError "background must be label 0, found %lld"
#define kIgnoreTypeError "the ignore label must be an integer, found %s"
#define kIgnoreValueError "the ignore label must be the highest label value plus one (%lld), found %lld"
#define kNoClassOrderError "missing: region-based labels (lists of several labels) need " \
                           "regions_class_order, one entry per foreground region"
#define kClassOrderLengthError "expected %zd entries (one per foreground region), found %zd"

static int labels_compare(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* channel_names (legacy: modality) and file_ending. determine_num_input_channels counts
 * modality when it is present, the planner channel_names: two different counts are refused. */
static int labels_channels(const jr_doc *doc, Py_ssize_t *count, PyObject *out)
{
    const cJSON *names = jr_find(doc->root, "channel_names");
    const cJSON *modality = jr_find(doc->root, "modality");
    const cJSON *ending = NULL;

    if (names == NULL && modality == NULL) return jr_fail(doc, "channel_names", kNoChannelsError);
    if ((names != NULL && jr_expect(doc, "channel_names", names, cJSON_Object, "an object") < 0) ||
        (modality != NULL && jr_expect(doc, "modality", modality, cJSON_Object, "an object") < 0)) {
        return -1;
    }
    *count = jr_array_size(modality != NULL ? modality : names);
    if (names != NULL && modality != NULL && jr_array_size(names) != *count) {
        return jr_fail(doc, "modality", kChannelCountError, *count, jr_array_size(names));
    }
    if (*count == 0) return jr_fail(doc, names ? "channel_names" : "modality", kEmptyChannelsError);
    if (jr_put(out, "channel_names",
                   jr_to_python(doc, names ? "channel_names" : "modality", names ? names : modality)) < 0) {
        return -1;
    }
    if (jr_require(doc, "", doc->root, "file_ending", &ending) < 0 ||
        jr_expect(doc, "file_ending", ending, cJSON_String, "a string") < 0) {
        return -1;
    }
    return jr_put(out, "file_ending", jr_to_python(doc, "file_ending", ending));
}

/* Checks one label value (an integer or a non-empty list of integers) and counts its integers.
 * Sets *multi when it is a list of more than one label (a region, as LabelManager decides). */
static int labels_check_value(const jr_doc *doc, const char *path, const cJSON *value,
                              Py_ssize_t *n_ints, int *multi)
{
    char child[JR_PATH_MAX];
    long long v;
    Py_ssize_t i = 0;

    if (cJSON_IsNumber(value)) {
        (*n_ints)++;
        return jr_as_int(doc, path, value, 0, LABELS_MAX_VALUE, &v);
    }
    if (!cJSON_IsArray(value) || value->child == NULL) {
        return jr_fail(doc, path, kTypeError, "a label or a non-empty list of labels",
                       cJSON_IsArray(value) ? "an empty list" : jr_type_name(value));
    }
    for (const cJSON *c = value->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (jr_as_int(doc, child, c, 0, LABELS_MAX_VALUE, &v) < 0) return -1;
        (*n_ints)++;
    }
    if (i > 1) *multi = 1;
    return 0;
}

/* LabelManager.filter_background: a label 0, or a list whose only distinct value is 0. */
static int labels_is_background(const cJSON *value)
{
    if (cJSON_IsNumber(value)) return value->valuedouble == 0;
    for (const cJSON *c = value->child; c != NULL; c = c->next) {
        if (c->valuedouble != 0) return 0;
    }
    return 1;
}

/* Sorted distinct labels of every entry except "ignore" (LabelManager.all_labels) into *out. */
static int labels_all(const cJSON *labels, Py_ssize_t n_ints, long long **out, Py_ssize_t *n_out)
{
    long long *values = NULL;
    Py_ssize_t n = 0, unique = 0;

    if ((size_t)n_ints > PY_SSIZE_T_MAX / sizeof(*values)) return (PyErr_NoMemory(), -1);
    values = PyMem_Malloc((size_t)(n_ints ? n_ints : 1) * sizeof(*values));
    if (values == NULL) return (PyErr_NoMemory(), -1);
    for (const cJSON *c = labels->child; c != NULL; c = c->next) {
        if (strcmp(c->string, "ignore") == 0) continue;
        if (cJSON_IsNumber(c)) {
            values[n++] = (long long)c->valuedouble; /* range-checked by labels_check_value */
        } else {
            for (const cJSON *v = c->child; v != NULL; v = v->next) values[n++] = (long long)v->valuedouble;
        }
    }
    qsort(values, (size_t)n, sizeof(*values), labels_compare);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (unique == 0 || values[unique - 1] != values[i]) values[unique++] = values[i];
    }
    *out = values;
    *n_out = unique;
    return 0;
}

static PyObject *labels_int_list(const long long *values, Py_ssize_t n, int skip_zero)
{
    PyObject *list = PyList_New(0), *item = NULL;
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (skip_zero && values[i] == 0) continue;
        item = PyLong_FromLongLong(values[i]);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

/* LabelManager._get_regions: every non-background entry except "ignore", in file order. */
static PyObject *labels_regions(const jr_doc *doc, const cJSON *labels)
{
    char path[JR_PATH_MAX];
    PyObject *list = PyList_New(0), *item = NULL;
    if (list == NULL) return NULL;
    for (const cJSON *c = labels->child; c != NULL; c = c->next) {
        if (strcmp(c->string, "ignore") == 0 || labels_is_background(c)) continue;
        jr_path_key(path, "labels", c->string);
        item = jr_to_python(doc, path, c);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

/* regions_class_order: a list of integers, or null / absent (None). */
static int labels_class_order(const jr_doc *doc, const cJSON *order, Py_ssize_t n_regions,
                              int has_regions, PyObject *out)
{
    char child[JR_PATH_MAX];
    long long v;
    Py_ssize_t i = 0, n;

    if (order == NULL || cJSON_IsNull(order)) {
        if (has_regions) return jr_fail(doc, "regions_class_order", kNoClassOrderError);
        return jr_put(out, "regions_class_order", Py_NewRef(Py_None));
    }
    if (jr_expect(doc, "regions_class_order", order, cJSON_Array, "a list") < 0) return -1;
    for (const cJSON *c = order->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, "regions_class_order", i);
        if (jr_as_int(doc, child, c, 0, LABELS_MAX_VALUE, &v) < 0) return -1;
    }
    n = jr_array_size(order);
    if (has_regions && n != n_regions) {
        return jr_fail(doc, "regions_class_order", kClassOrderLengthError, n_regions, n);
    }
    return jr_put(out, "regions_class_order", jr_to_python(doc, "regions_class_order", order));
}

int labels_resolve(const jr_doc *doc, int is_cascade_stage, Py_ssize_t *num_channels, PyObject *out)
{
    char path[JR_PATH_MAX];
    const cJSON *labels = NULL, *background = NULL, *ignore = NULL;
    long long *all = NULL, bg, ignore_value = 0;
    Py_ssize_t n_ints = 0, n_all = 0, n_foreground, n_regions = 0;
    PyObject *regions = NULL;
    int has_regions = 0, rc = -1;

    if (labels_channels(doc, num_channels, out) < 0) goto bail;
    if (jr_require(doc, "", doc->root, "labels", &labels) < 0 ||
        jr_expect(doc, "labels", labels, cJSON_Object, "an object") < 0) {
        goto bail;
    }
    background = jr_find(labels, "background");
    if (background == NULL) {
        jr_fail(doc, "labels.background", kNoBackgroundError);
        goto bail;
    }
    if (cJSON_IsArray(background)) {
        jr_fail(doc, "labels.background", kBackgroundListError);
        goto bail;
    }
    if (jr_as_int(doc, "labels.background", background, 0, LABELS_MAX_VALUE, &bg) < 0) goto bail;
    if (bg != 0) {
        jr_fail(doc, "labels.background", kBackgroundValueError, bg);
        goto bail;
    }
    for (const cJSON *c = labels->child; c != NULL; c = c->next) {
        jr_path_key(path, "labels", c->string);
        if (strcmp(c->string, "ignore") == 0) {
            ignore = c;
            if (cJSON_IsNull(c)) continue; /* labels.get('ignore') is None: no ignore label */
            if (!cJSON_IsNumber(c)) {
                jr_fail(doc, path, kIgnoreTypeError, jr_type_name(c));
                goto bail;
            }
            if (jr_as_int(doc, path, c, 0, LABELS_MAX_VALUE, &ignore_value) < 0) goto bail;
            continue;
        }
        if (labels_check_value(doc, path, c, &n_ints, &has_regions) < 0) goto bail;
    }
    if (labels_all(labels, n_ints, &all, &n_all) < 0) goto bail;
    if (ignore != NULL && !cJSON_IsNull(ignore) && ignore_value != all[n_all - 1] + 1) {
        jr_fail(doc, "labels.ignore", kIgnoreValueError, all[n_all - 1] + 1, ignore_value);
        goto bail;
    }
    n_foreground = n_all - (all[0] == 0 ? 1 : 0);
    if (has_regions) {
        regions = labels_regions(doc, labels);
        if (regions == NULL) goto bail;
        n_regions = PyList_GET_SIZE(regions);
    }
    if (labels_class_order(doc, jr_find(doc->root, "regions_class_order"), n_regions, has_regions,
                           out) < 0 ||
        jr_put(out, "labels", jr_to_python(doc, "labels", labels)) < 0 ||
        jr_put(out, "has_regions", PyBool_FromLong(has_regions)) < 0 ||
        jr_put(out, "regions", has_regions ? Py_NewRef(regions) : Py_NewRef(Py_None)) < 0 ||
        jr_put(out, "ignore_label", ignore != NULL && !cJSON_IsNull(ignore)
                                            ? PyLong_FromLongLong(ignore_value)
                                            : Py_NewRef(Py_None)) < 0 ||
        jr_put(out, "all_labels", labels_int_list(all, n_all, 0)) < 0 ||
        jr_put(out, "foreground_labels", labels_int_list(all, n_all, 1)) < 0 ||
        jr_put(out, "num_input_channels",
                   PyLong_FromSsize_t(*num_channels + (is_cascade_stage ? n_foreground : 0))) < 0 ||
        jr_put(out, "num_output_channels",
                   PyLong_FromSsize_t(has_regions ? n_regions : n_all)) < 0) {
        goto bail;
    }
    rc = 0;
bail:
    PyMem_Free(all);
    Py_XDECREF(regions);
    return rc;
}
