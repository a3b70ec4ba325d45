/* The plans reader: `_core.read_plans(plans, dataset, configuration)` reads nnU-Net's
 * plans.json and dataset.json (each a path or an in-memory JSON document) and returns one dict describing the resolved configuration, the
 * way nnU-Net's PlansManager / ConfigurationManager / LabelManager interpret them.
 *
 * This file resolves the configuration (inherits_from) and reads the plans-level and
 * configuration-level fields; plans_arch.c handles the architecture block, labels.c dataset.json. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* plans.json of large datasets are tens of kB; anything near this limit is not a plans file. */
#define PLANS_MAX_FILE_BYTES (64u * 1024u * 1024u)
#define PLANS_MAX_PATCH_EDGE 2147483647LL

#define kPlansDefaultSource "plans.json (in memory)"
#define kDatasetDefaultSource "dataset.json (in memory)"
#define kRootNotObjectError "expected an object at the top level, found %s"
#define kNoConfigurationsError "no configurations in the plans"
#define kUnknownConfigError "unknown configuration \"%s\"; available: %s"
#define kUnknownParentError "names unknown configuration \"%s\"; available: %s"
#define kCycleError "inheritance cycle: %s"
#define kUnknownStageError "names configuration \"%s\", which is not in the plans; available: %s"
#define kDimensionError "expected 2 or 3 entries (a 2d or 3d patch), found %zd"
#define kPositiveError "expected a positive finite number"
#define kPermutationError "expected a permutation of 0..%zd"
#define kNotInverseError "is not the inverse permutation of transpose_forward"
#define kLabelManagerError "unsupported label manager \"%s\": only nnU-Net's LabelManager is known"
#define kIntensityMissingError "channel %zd uses CTNormalization, which needs these properties"
#define kIntensityKeyError "missing required key (CTNormalization of channel %zd needs it)"

struct plans_config {
    const jr_doc *doc;         /* borrowed */
    const char *requested;     /* borrowed: configuration asked for */
    Py_ssize_t depth;          /* entries in names/objects: the requested one first, then parents */
    const char **names;        /* owned array (PyMem) of borrowed names */
    const cJSON **objects;     /* owned array (PyMem) of borrowed configuration objects */
};

const cJSON *plans_config_get(const plans_config *cfg, const char *key, char *path)
{
    char parent[JR_PATH_MAX];
    /* A child's top-level key replaces the parent's (nnU-Net's shallow dict.update), so the first
     * configuration in the chain that has the key is where the value comes from. */
    for (Py_ssize_t i = 0; i < cfg->depth; i++) {
        const cJSON *item = jr_find(cfg->objects[i], key);
        if (item != NULL) {
            jr_path_key(parent, "configurations", cfg->names[i]);
            jr_path_key(path, parent, key);
            return item;
        }
    }
    jr_path_key(parent, "configurations", cfg->requested);
    jr_path_key(path, parent, key);
    return NULL;
}

/* Writes "a, b, c" (the keys of `object`) into buf, truncated to n bytes. */
static void plans_list_keys(const cJSON *object, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (const cJSON *c = object->child; c != NULL && used < n; c = c->next) {
        int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", c->string);
        if (w < 0) break;
        used += (size_t)w;
    }
}

/* Follows inherits_from from the requested configuration to the root of its chain.
 * Returns 0, or -1 with an exception set. */
static int plans_resolve_chain(const jr_doc *doc, const cJSON *configurations, plans_config *cfg)
{
    char path[JR_PATH_MAX], parent_path[JR_PATH_MAX], names[1024], chain[1024];
    Py_ssize_t count = jr_array_size(configurations); /* counts object members too */
    const char *name = cfg->requested;

    if (count == 0) return jr_fail(doc, "configurations", kNoConfigurationsError);
    if ((size_t)count > PY_SSIZE_T_MAX / sizeof(void *)) return (PyErr_NoMemory(), -1);
    cfg->names = PyMem_Malloc((size_t)count * sizeof(*cfg->names));
    cfg->objects = PyMem_Malloc((size_t)count * sizeof(*cfg->objects));
    if (cfg->names == NULL || cfg->objects == NULL) return (PyErr_NoMemory(), -1);

    while (name != NULL) {
        const cJSON *object = jr_find(configurations, name);
        const cJSON *parent = NULL;

        if (object == NULL) {
            plans_list_keys(configurations, names, sizeof(names));
            if (cfg->depth == 0) {
                return jr_fail(doc, "configurations", kUnknownConfigError, name, names);
            }
            jr_path_key(parent_path, "configurations", cfg->names[cfg->depth - 1]);
            jr_path_key(path, parent_path, "inherits_from");
            return jr_fail(doc, path, kUnknownParentError, name, names);
        }
        jr_path_key(path, "configurations", name);
        for (Py_ssize_t i = 0; i < cfg->depth; i++) {
            if (strcmp(cfg->names[i], name) == 0) {
                size_t used = 0;
                chain[0] = '\0';
                for (Py_ssize_t j = 0; j <= cfg->depth && used < sizeof(chain); j++) {
                    const char *n = j < cfg->depth ? cfg->names[j] : name;
                    int w = snprintf(chain + used, sizeof(chain) - used, "%s%s", j ? " -> " : "", n);
                    if (w < 0) break;
                    used += (size_t)w;
                }
                jr_path_key(parent_path, "configurations", cfg->names[cfg->depth - 1]);
                jr_path_key(path, parent_path, "inherits_from");
                return jr_fail(doc, path, kCycleError, chain);
            }
        }
        if (jr_expect(doc, path, object, cJSON_Object, "an object") < 0) return -1;
        /* Every name in the chain is distinct and exists, so depth never exceeds count. */
        cfg->names[cfg->depth] = name;
        cfg->objects[cfg->depth] = object;
        cfg->depth++;
        parent = jr_find(object, "inherits_from");
        name = NULL;
        if (parent != NULL) {
            jr_path_key(parent_path, path, "inherits_from");
            if (jr_as_string(doc, parent_path, parent, &name) < 0) return -1;
        }
    }
    return 0;
}

/* Configuration value `key` converted as-is (after type checks by the caller) into out[key]. */
static int plans_copy(const plans_config *cfg, const char *key, int required, PyObject *out)
{
    char path[JR_PATH_MAX];
    const cJSON *item = plans_config_get(cfg, key, path);
    if (item == NULL) {
        if (required) return jr_fail(cfg->doc, path, kMissingError);
        return jr_put(out, key, Py_NewRef(Py_None));
    }
    return jr_put(out, key, jr_to_python(cfg->doc, path, item));
}

/* Reads a list of exactly `want` entries (any length when want < 0) of one JSON type. */
static int plans_typed_list(const jr_doc *doc, const char *path, const cJSON *item, int type,
                            const char *what, Py_ssize_t want, const char *why)
{
    char child[JR_PATH_MAX];
    Py_ssize_t n, i = 0;

    if (jr_expect(doc, path, item, cJSON_Array, "a list") < 0) return -1;
    n = jr_array_size(item);
    if (want >= 0 && n != want) return jr_fail(doc, path, kLengthError, want, why, n);
    for (const cJSON *c = item->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        /* cJSON has two boolean types; cJSON_True here stands for either. */
        if (type == cJSON_True) {
            if (!cJSON_IsBool(c)) return jr_fail(doc, child, kTypeError, what, jr_type_name(c));
        } else if (jr_expect(doc, child, c, type, what) < 0) {
            return -1;
        }
    }
    return 0;
}

/* patch_size and spacing: their length is the dimensionality everything else must match. */
static int plans_geometry(const plans_config *cfg, Py_ssize_t *ndim, PyObject *out)
{
    char path[JR_PATH_MAX], child[JR_PATH_MAX];
    const cJSON *patch = plans_config_get(cfg, "patch_size", path);
    const cJSON *spacing = NULL;
    long long edge;
    Py_ssize_t i = 0;

    if (patch == NULL) return jr_fail(cfg->doc, path, kMissingError);
    if (jr_expect(cfg->doc, path, patch, cJSON_Array, "a list") < 0) return -1;
    *ndim = jr_array_size(patch);
    if (*ndim != 2 && *ndim != 3) return jr_fail(cfg->doc, path, kDimensionError, *ndim);
    for (const cJSON *c = patch->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (jr_as_int(cfg->doc, child, c, 1, PLANS_MAX_PATCH_EDGE, &edge) < 0) return -1;
    }
    if (jr_put(out, "patch_size", jr_to_python(cfg->doc, path, patch)) < 0) return -1;

    spacing = plans_config_get(cfg, "spacing", path);
    if (spacing == NULL) return jr_fail(cfg->doc, path, kMissingError);
    if (plans_typed_list(cfg->doc, path, spacing, cJSON_Number, "a number", *ndim,
                         "one per patch_size axis") < 0) {
        return -1;
    }
    i = 0;
    for (const cJSON *c = spacing->child; c != NULL; c = c->next, i++) {
        if (!isfinite(c->valuedouble) || c->valuedouble <= 0) {
            jr_path_index(child, path, i);
            return jr_fail(cfg->doc, child, kPositiveError);
        }
    }
    if (jr_put(out, "spacing", jr_to_python(cfg->doc, path, spacing)) < 0) return -1;
    return jr_put(out, "num_dimensions", PyLong_FromSsize_t(*ndim));
}

/* transpose_forward/backward: permutations of the three image axes, each the other's inverse. */
static int plans_transpose(const jr_doc *doc, const cJSON *root, PyObject *out)
{
    static const char *const keys[2] = {"transpose_forward", "transpose_backward"};
    long long perm[2][3];
    const cJSON *item = NULL;
    char child[JR_PATH_MAX];

    for (int k = 0; k < 2; k++) {
        int seen[3] = {0, 0, 0};
        Py_ssize_t i = 0;
        if (jr_require(doc, "", root, keys[k], &item) < 0) return -1;
        if (plans_typed_list(doc, keys[k], item, cJSON_Number, "an integer", 3,
                             "one per image axis") < 0) {
            return -1;
        }
        for (const cJSON *c = item->child; c != NULL; c = c->next, i++) {
            jr_path_index(child, keys[k], i);
            if (jr_as_int(doc, child, c, 0, 2, &perm[k][i]) < 0) return -1;
            if (seen[perm[k][i]]++) return jr_fail(doc, keys[k], kPermutationError, (Py_ssize_t)2);
        }
        if (jr_put(out, keys[k], jr_to_python(doc, keys[k], item)) < 0) return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (perm[1][perm[0][i]] != i) return jr_fail(doc, keys[1], kNotInverseError);
    }
    return 0;
}

/* Checks that a stage name refers to an existing configuration. */
static int plans_check_stage(const jr_doc *doc, const cJSON *configurations, const char *path,
                             const cJSON *name)
{
    char names[1024];
    if (jr_expect(doc, path, name, cJSON_String, "a string") < 0) return -1;
    if (jr_find(configurations, name->valuestring) == NULL) {
        plans_list_keys(configurations, names, sizeof(names));
        return jr_fail(doc, path, kUnknownStageError, name->valuestring, names);
    }
    return 0;
}

/* previous_stage (str or null) and next_stage (str, list of str or null; always a list out,
 * as ConfigurationManager.next_stage_names). Sets *is_cascade when a previous stage exists. */
static int plans_stages(const plans_config *cfg, const cJSON *configurations, int *is_cascade,
                        PyObject *out)
{
    char path[JR_PATH_MAX], child[JR_PATH_MAX];
    const cJSON *previous = plans_config_get(cfg, "previous_stage", path);
    const cJSON *next = NULL;
    PyObject *list = NULL, *name = NULL;
    Py_ssize_t i = 0;

    *is_cascade = previous != NULL && !cJSON_IsNull(previous);
    if (*is_cascade && plans_check_stage(cfg->doc, configurations, path, previous) < 0) return -1;
    if (jr_put(out, "previous_stage",
                  *is_cascade ? jr_to_python(cfg->doc, path, previous) : Py_NewRef(Py_None)) < 0) {
        return -1;
    }
    next = plans_config_get(cfg, "next_stage", path);
    if (next == NULL || cJSON_IsNull(next)) return jr_put(out, "next_stage", Py_NewRef(Py_None));
    if (cJSON_IsString(next)) {
        if (plans_check_stage(cfg->doc, configurations, path, next) < 0) return -1;
        list = PyList_New(0);
        name = jr_to_python(cfg->doc, path, next);
        if (list == NULL || name == NULL || PyList_Append(list, name) < 0) goto bail;
        Py_CLEAR(name);
        return jr_put(out, "next_stage", list);
    }
    if (jr_expect(cfg->doc, path, next, cJSON_Array, "a string, a list of strings or null") < 0) {
        return -1;
    }
    for (const cJSON *c = next->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (plans_check_stage(cfg->doc, configurations, child, c) < 0) return -1;
    }
    return jr_put(out, "next_stage", jr_to_python(cfg->doc, path, next));
bail:
    Py_XDECREF(list);
    Py_XDECREF(name);
    return -1;
}

/* normalization_schemes and use_mask_for_norm: one entry per input image channel. Returns the
 * scheme list item through *schemes for the intensity check. */
static int plans_normalization(const plans_config *cfg, Py_ssize_t channels, const cJSON **schemes,
                               PyObject *out)
{
    char path[JR_PATH_MAX];
    const cJSON *masks = NULL;

    *schemes = plans_config_get(cfg, "normalization_schemes", path);
    if (*schemes == NULL) return jr_fail(cfg->doc, path, kMissingError);
    if (plans_typed_list(cfg->doc, path, *schemes, cJSON_String, "a string", channels,
                         "one per channel in dataset.json") < 0 ||
        jr_put(out, "normalization_schemes", jr_to_python(cfg->doc, path, *schemes)) < 0) {
        return -1;
    }
    masks = plans_config_get(cfg, "use_mask_for_norm", path);
    if (masks == NULL) return jr_fail(cfg->doc, path, kMissingError);
    if (plans_typed_list(cfg->doc, path, masks, cJSON_True, "a boolean", channels,
                         "one per channel in dataset.json") < 0) {
        return -1;
    }
    return jr_put(out, "use_mask_for_norm", jr_to_python(cfg->doc, path, masks));
}

/* foreground_intensity_properties_per_channel (legacy: ..._by_modality, as PlansManager falls
 * back): an object of per-channel objects of numbers; CTNormalization channels need theirs. */
static int plans_intensity(const jr_doc *doc, const cJSON *root, const cJSON *schemes,
                           PyObject *out)
{
    static const char *const ct_keys[4] = {"mean", "std", "percentile_00_5", "percentile_99_5"};
    const char *key = "foreground_intensity_properties_per_channel";
    const cJSON *props = jr_find(root, key);
    char path[JR_PATH_MAX], child[JR_PATH_MAX], channel_key[32];
    Py_ssize_t channel = 0;

    if (props == NULL && jr_find(root, "foreground_intensity_properties_by_modality") != NULL) {
        key = "foreground_intensity_properties_by_modality";
        props = jr_find(root, key);
    }
    if (props == NULL) return jr_fail(doc, key, kMissingError);
    if (jr_expect(doc, key, props, cJSON_Object, "an object") < 0) return -1;
    for (const cJSON *c = props->child; c != NULL; c = c->next) {
        jr_path_key(path, key, c->string);
        if (jr_expect(doc, path, c, cJSON_Object, "an object") < 0) return -1;
        for (const cJSON *v = c->child; v != NULL; v = v->next) {
            jr_path_key(child, path, v->string);
            if (jr_expect(doc, child, v, cJSON_Number, "a number") < 0) return -1;
        }
    }
    for (const cJSON *s = schemes->child; s != NULL; s = s->next, channel++) {
        const cJSON *channel_props = NULL;
        if (strcmp(s->valuestring, "CTNormalization") != 0) continue;
        snprintf(channel_key, sizeof(channel_key), "%zd", channel);
        jr_path_key(path, key, channel_key);
        channel_props = jr_find(props, channel_key);
        if (channel_props == NULL) return jr_fail(doc, path, kIntensityMissingError, channel);
        for (int k = 0; k < 4; k++) {
            if (jr_find(channel_props, ct_keys[k]) == NULL) {
                jr_path_key(child, path, ct_keys[k]);
                return jr_fail(doc, child, kIntensityKeyError, channel);
            }
        }
    }
    return jr_put(out, "foreground_intensity_properties_per_channel",
                     jr_to_python(doc, key, props));
}

/* The plans-level strings and the label manager nnU-Net would use. */
static int plans_top_level(const jr_doc *doc, const cJSON *root, PyObject *out)
{
    static const char *const keys[2] = {"dataset_name", "plans_name"};
    const cJSON *item = NULL;

    for (int k = 0; k < 2; k++) {
        if (jr_require(doc, "", root, keys[k], &item) < 0 ||
            jr_expect(doc, keys[k], item, cJSON_String, "a string") < 0 ||
            jr_put(out, keys[k], jr_to_python(doc, keys[k], item)) < 0) {
            return -1;
        }
    }
    /* The reader/writer class nnU-Net's predictor reads images with (absent in old plans). */
    item = jr_find(root, "image_reader_writer");
    if (item == NULL || cJSON_IsNull(item)) {
        if (jr_put(out, "image_reader_writer", Py_NewRef(Py_None)) < 0) return -1;
    } else if (jr_expect(doc, "image_reader_writer", item, cJSON_String, "a string") < 0 ||
               jr_put(out, "image_reader_writer", jr_to_python(doc, "image_reader_writer", item)) < 0) {
        return -1;
    }
    /* A custom LabelManager subclass could interpret labels differently: refuse, don't guess. */
    item = jr_find(root, "label_manager");
    if (item != NULL) {
        if (jr_expect(doc, "label_manager", item, cJSON_String, "a string") < 0) return -1;
        if (strcmp(item->valuestring, "LabelManager") != 0) {
            return jr_fail(doc, "label_manager", kLabelManagerError, item->valuestring);
        }
    }
    return 0;
}

/* Loads `arg` into `doc`: a bytes-like object is the JSON document itself and messages name
 * `source` (default_source when NULL); anything else is a path (str or os.PathLike), kept alive
 * in *keep (owned by the caller), whose name the messages show. Returns 0, or -1 with PlansError
 * (or TypeError for an argument of neither kind) set. */
static int plans_load_doc(jr_doc *doc, PyObject *error, PyObject *arg, const char *source,
                          const char *default_source, PyObject **keep)
{
    Py_buffer view;
    int rc;

    if (PyObject_CheckBuffer(arg)) {
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return -1;
        jr_init(doc, error, source != NULL ? source : default_source);
        rc = jr_load_buffer(doc, view.buf, (size_t)view.len, PLANS_MAX_FILE_BYTES);
        PyBuffer_Release(&view);
        return rc;
    }
    if (!PyUnicode_FSConverter(arg, keep)) return -1;
    jr_init(doc, error, PyBytes_AS_STRING(*keep));
    return jr_load(doc, PLANS_MAX_FILE_BYTES);
}

/* Loads plans.json (`arg`, see plans_load_doc) and finds its top-level object and its
 * configurations object. Returns 0, or -1 with an exception set. */
static int plans_load_plans(jr_doc *plans, PyObject *error, PyObject *arg, const char *source,
                            PyObject **keep, const cJSON **configurations)
{
    if (plans_load_doc(plans, error, arg, source, kPlansDefaultSource, keep) < 0) return -1;
    if (!cJSON_IsObject(plans->root)) {
        return jr_fail(plans, "", kRootNotObjectError, jr_type_name(plans->root));
    }
    if (jr_require(plans, "", plans->root, "configurations", configurations) < 0 ||
        jr_expect(plans, "configurations", *configurations, cJSON_Object, "an object") < 0) {
        return -1;
    }
    return 0;
}

/* Fills `out` with the resolved configuration `configuration` of the loaded documents. */
static int plans_resolve(const jr_doc *plans, const jr_doc *dataset, const cJSON *configurations,
                         const char *configuration, PyObject *out)
{
    const cJSON *schemes = NULL;
    plans_config cfg = {0};
    Py_ssize_t ndim = 0, channels = 0;
    int is_cascade = 0, rc = -1;

    cfg.doc = plans;
    cfg.requested = configuration;
    if (plans_top_level(plans, plans->root, out) < 0 ||
        plans_resolve_chain(plans, configurations, &cfg) < 0) {
        goto bail;
    }
    if (jr_put(out, "configuration", PyUnicode_FromString(configuration)) < 0 ||
        plans_geometry(&cfg, &ndim, out) < 0 || plans_transpose(plans, plans->root, out) < 0 ||
        plans_stages(&cfg, configurations, &is_cascade, out) < 0 ||
        labels_resolve(dataset, is_cascade, &channels, out) < 0 ||
        plans_normalization(&cfg, channels, &schemes, out) < 0 ||
        plans_intensity(plans, plans->root, schemes, out) < 0 ||
        plans_copy(&cfg, "batch_size", 0, out) < 0 ||
        plans_resampling(&cfg, plans, out) < 0 ||
        arch_resolve(plans, &cfg, ndim, out) < 0) {
        goto bail;
    }
    rc = 0;
bail:
    PyMem_Free(cfg.names);
    PyMem_Free(cfg.objects);
    return rc;
}

static PyObject *py_read_plans(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"plans", "dataset", "configuration", "plans_source",
                             "dataset_source", NULL};
    nx_state *st = nx_get_state(self);
    PyObject *plans_arg = NULL, *dataset_arg = NULL, *plans_path = NULL, *dataset_path = NULL;
    PyObject *out = NULL, *result = NULL;
    const char *configuration = NULL, *plans_source = NULL, *dataset_source = NULL;
    const cJSON *configurations = NULL;
    jr_doc plans, dataset;

    jr_init(&plans, st->PlansError, "");
    jr_init(&dataset, st->PlansError, "");
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOs|$zz:read_plans", kwlist, &plans_arg,
                                     &dataset_arg, &configuration, &plans_source,
                                     &dataset_source)) {
        goto bail;
    }
    if (plans_load_plans(&plans, st->PlansError, plans_arg, plans_source, &plans_path,
                         &configurations) < 0 ||
        plans_load_doc(&dataset, st->PlansError, dataset_arg, dataset_source,
                       kDatasetDefaultSource, &dataset_path) < 0) {
        goto bail;
    }
    if (!cJSON_IsObject(dataset.root)) {
        jr_fail(&dataset, "", kRootNotObjectError, jr_type_name(dataset.root));
        goto bail;
    }
    out = PyDict_New();
    if (out == NULL || plans_resolve(&plans, &dataset, configurations, configuration, out) < 0) {
        goto bail;
    }
    result = out;
    out = NULL;
bail:
    jr_release(&plans);
    jr_release(&dataset);
    Py_XDECREF(plans_path);
    Py_XDECREF(dataset_path);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_plans_configurations(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"plans", "plans_source", NULL};
    nx_state *st = nx_get_state(self);
    PyObject *plans_arg = NULL, *path = NULL, *result = NULL, *list = NULL, *name = NULL;
    const char *plans_source = NULL;
    const cJSON *configurations = NULL;
    jr_doc plans;

    jr_init(&plans, st->PlansError, "");
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$z:plans_configurations", kwlist,
                                     &plans_arg, &plans_source) ||
        plans_load_plans(&plans, st->PlansError, plans_arg, plans_source, &path,
                         &configurations) < 0) {
        goto bail;
    }
    list = PyList_New(0);
    if (list == NULL) goto bail;
    for (const cJSON *c = configurations->child; c != NULL; c = c->next) {
        name = jr_string_to_python(&plans, "configurations", c->string);
        if (name == NULL || PyList_Append(list, name) < 0) goto bail;
        Py_CLEAR(name);
    }
    result = list;
    list = NULL;
bail:
    jr_release(&plans);
    Py_XDECREF(path);
    Py_XDECREF(list);
    Py_XDECREF(name);
    return result;
}

static PyMethodDef plans_methods[] = {
    {"plans_configurations", (PyCFunction)(void (*)(void))py_plans_configurations,
     METH_VARARGS | METH_KEYWORDS,
     "plans_configurations(plans, *, plans_source=None) -> list of configuration names, in file "
     "order.\n\nplans: a path, or the JSON document as a bytes-like object."},
    {"read_plans", (PyCFunction)(void (*)(void))py_read_plans, METH_VARARGS | METH_KEYWORDS,
     "read_plans(plans, dataset, configuration, *, plans_source=None, dataset_source=None) "
     "-> dict\n\n"
     "Resolved model description of one configuration; see nnunet_export.read_model_config.\n"
     "plans / dataset: a path, or the JSON document as a bytes-like object (messages then name\n"
     "plans_source / dataset_source, by default \"plans.json (in memory)\" / \"dataset.json (in\n"
     "memory)\")."},
    {NULL, NULL, 0, NULL},
};

int nx_add_plans_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, plans_methods);
}
