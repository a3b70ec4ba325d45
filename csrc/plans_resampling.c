/* The resampling settings of a configuration: for data, seg and probabilities, the function name
 * nnU-Net looks up and the keyword arguments it binds (resample_data_or_seg_to_shape's is_seg,
 * order, order_z, force_separate_z, separate_z_anisotropy_threshold). The reader checks types and
 * ranges; which function names a pipeline can reproduce is the pipeline's decision. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

/* scipy's spline orders are 0..5. */
#define RESAMPLING_MAX_ORDER 5

#define kUnknownKwargError "is not an argument of nnU-Net's resampling functions (expected is_seg, " \
                           "order, order_z, force_separate_z or separate_z_anisotropy_threshold)"
#define kThresholdError "expected a positive number"
#define kBoolOrNullError "expected true, false or null, found %s"

static const char *const kTargets[3] = {"data", "seg", "probabilities"};

/* One kwargs object (NULL: absent), checked, as {"order", "order_z", "force_separate_z",
 * "separate_z_anisotropy_threshold"} with resample_data_or_seg_to_shape's defaults (order 3, order_z 0, False, 3.0)
 * where a key is absent. */
static PyObject *resampling_kwargs(const jr_doc *doc, const char *path, const cJSON *kwargs)
{
    char child[JR_PATH_MAX];
    long long order = 3, order_z = 0;
    double threshold = 3.0;
    PyObject *force = Py_False; /* the function's own default */

    if (kwargs != NULL && jr_expect(doc, path, kwargs, cJSON_Object, "an object") < 0) return NULL;
    for (const cJSON *c = kwargs != NULL ? kwargs->child : NULL; c != NULL; c = c->next) {
        jr_path_key(child, path, c->string);
        if (strcmp(c->string, "is_seg") == 0) {
            if (!cJSON_IsBool(c)) {
                jr_fail(doc, child, kTypeError, "a boolean", jr_type_name(c));
                return NULL;
            }
        } else if (strcmp(c->string, "order") == 0) {
            if (jr_as_int(doc, child, c, 0, RESAMPLING_MAX_ORDER, &order) < 0) return NULL;
        } else if (strcmp(c->string, "order_z") == 0) {
            if (jr_as_int(doc, child, c, 0, RESAMPLING_MAX_ORDER, &order_z) < 0) return NULL;
        } else if (strcmp(c->string, "force_separate_z") == 0) {
            if (!cJSON_IsBool(c) && !cJSON_IsNull(c)) {
                jr_fail(doc, child, kBoolOrNullError, jr_type_name(c));
                return NULL;
            }
            force = cJSON_IsNull(c) ? Py_None : (cJSON_IsTrue(c) ? Py_True : Py_False);
        } else if (strcmp(c->string, "separate_z_anisotropy_threshold") == 0) {
            if (jr_expect(doc, child, c, cJSON_Number, "a number") < 0) return NULL;
            if (!isfinite(c->valuedouble) || c->valuedouble <= 0) {
                jr_fail(doc, child, kThresholdError);
                return NULL;
            }
            threshold = c->valuedouble;
        } else {
            jr_fail(doc, child, kUnknownKwargError);
            return NULL;
        }
    }
    return Py_BuildValue("{s:L,s:L,s:O,s:d}", "order", order, "order_z", order_z,
                         "force_separate_z", force, "separate_z_anisotropy_threshold", threshold);
}

/* out["resampling"] = {target: {"function": name or None, **kwargs}} for data, seg and
 * probabilities. A missing function name is None (a pipeline refuses it); missing kwargs take
 * nnU-Net's defaults. */
int plans_resampling(const plans_config *cfg, const jr_doc *doc, PyObject *out)
{
    char key[64], path[JR_PATH_MAX];
    PyObject *all = PyDict_New(), *entry = NULL, *name = NULL;
    const cJSON *item = NULL;
    int rc = -1;

    if (all == NULL) return -1;
    for (int t = 0; t < 3; t++) {
        snprintf(key, sizeof(key), "resampling_fn_%s_kwargs", kTargets[t]);
        item = plans_config_get(cfg, key, path);
        entry = resampling_kwargs(doc, path, item);
        if (entry == NULL) goto bail;
        snprintf(key, sizeof(key), "resampling_fn_%s", kTargets[t]);
        item = plans_config_get(cfg, key, path);
        if (item == NULL) {
            name = Py_NewRef(Py_None);
        } else {
            const char *s = NULL;
            if (jr_as_string(doc, path, item, &s) < 0) goto bail;
            name = jr_string_to_python(doc, path, s);
        }
        /* jr_put drops the value's reference whether it succeeds or not. */
        if (jr_put(entry, "function", name) < 0) goto bail;
        rc = jr_put(all, kTargets[t], entry);
        entry = NULL;
        if (rc < 0) goto bail;
        rc = -1;
    }
    rc = jr_put(out, "resampling", all);
    all = NULL;
bail:
    Py_XDECREF(entry);
    Py_XDECREF(all);
    return rc;
}
