/* The architecture block of a configuration: its shape, the _kw_requires_import list, and the
 * in-memory conversion of old plans (before nnU-Net 2.3) that ConfigurationManager.__init__
 * performs. The arch_kwargs rules themselves live in arch_kwargs.c. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#define ARCH_MAX_SIZE 2147483647LL

#define kOldClassError "unknown architecture \"%s\": the old-plans conversion only supports " \
                       "PlainConvUNet and ResidualEncoderUNet"
#define kEmptyStagesError "expected at least one stage"
#define kImportKeyError "names \"%s\", which is not a key of arch_kwargs"

/* get_network_from_plans looks every _kw_requires_import entry up in arch_kwargs. */
static int arch_check_imports(const arch_ctx *ctx, const char *path, const cJSON *imports,
                              const cJSON *kwargs)
{
    char child[JR_PATH_MAX];
    Py_ssize_t i = 0;

    if (jr_expect(ctx->doc, path, imports, cJSON_Array, "a list") < 0) return -1;
    for (const cJSON *c = imports->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (jr_expect(ctx->doc, child, c, cJSON_String, "a string") < 0) return -1;
        if (!ctx->converted && jr_find(kwargs, c->valuestring) == NULL) {
            return jr_fail(ctx->doc, child, kImportKeyError, c->valuestring);
        }
    }
    return 0;
}

/* Attaches `child` (NULL when its creation failed) to an object under `key`, or to an array when
 * key is NULL. The parent owns it afterwards; on failure it is freed. Returns 0, or -1. */
static int arch_attach(cJSON *parent, const char *key, cJSON *child)
{
    if (child == NULL) return -1;
    if (!(key ? cJSON_AddItemToObject(parent, key, child) : cJSON_AddItemToArray(parent, child))) {
        cJSON_Delete(child);
        return -1;
    }
    return 0;
}

/* Like arch_attach, but returns the attached child (borrowed) or NULL. */
static cJSON *arch_attach_new(cJSON *parent, const char *key, cJSON *child)
{
    return arch_attach(parent, key, child) < 0 ? NULL : child;
}

/* Adds a reference to a plans value under `key`: cJSON_Delete of the block leaves it alone. */
static int arch_add_ref(cJSON *object, const char *key, const cJSON *item)
{
    return cJSON_AddItemReferenceToObject(object, key, (cJSON *)item) ? 0 : -1;
}

/* Builds the modern architecture block from old plans keys exactly as
 * ConfigurationManager.__init__ does. Returns a new cJSON tree (list values are references into
 * the plans document, which must outlive it) or NULL with an exception set. */
static cJSON *arch_convert_old(const arch_ctx *ctx, Py_ssize_t ndim)
{
    static const char *const copied[4] = {"conv_kernel_sizes", "pool_op_kernel_sizes",
                                          "n_conv_per_stage_encoder", "n_conv_per_stage_decoder"};
    static const char *const imports[4] = {"conv_op", "norm_op", "dropout_op", "nonlin"};
    char path[JR_PATH_MAX], conv[96], norm[96];
    const cJSON *class_item = NULL, *lists[4] = {NULL, NULL, NULL, NULL}, *item = NULL;
    cJSON *block = NULL, *kwargs = NULL, *features = NULL, *sub = NULL, *result = NULL;
    const char *class_name = NULL, *blocks = NULL;
    long long base, max_features, f;
    Py_ssize_t n_stages;
    int failed = 0;

    class_item = plans_config_get(ctx->cfg, "UNet_class_name", path);
    if (class_item == NULL) {
        /* Neither format: name what a modern plans file would have needed. */
        plans_config_get(ctx->cfg, "architecture", path);
        jr_fail(ctx->doc, path, kMissingError);
        goto bail;
    }
    if (jr_as_string(ctx->doc, path, class_item, &class_name) < 0) goto bail;
    if (strcmp(class_name, "PlainConvUNet") == 0) {
        blocks = "n_conv_per_stage";
        class_name = "dynamic_network_architectures.architectures.unet.PlainConvUNet";
    } else if (strcmp(class_name, "ResidualEncoderUNet") == 0) {
        blocks = "n_blocks_per_stage";
        /* nnU-Net 2.8.1 writes this module path verbatim, although dynamic-network-architectures
         * 0.4.4 keeps ResidualEncoderUNet in architectures.unet. */
        class_name = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet";
    } else {
        jr_fail(ctx->doc, path, kOldClassError, class_name);
        goto bail;
    }
    for (int k = 0; k < 4; k++) {
        lists[k] = plans_config_get(ctx->cfg, copied[k], path);
        if (lists[k] == NULL) {
            jr_fail(ctx->doc, path, kMissingError);
            goto bail;
        }
    }
    plans_config_get(ctx->cfg, "n_conv_per_stage_encoder", path);
    if (jr_expect(ctx->doc, path, lists[2], cJSON_Array, "a list") < 0) goto bail;
    n_stages = jr_array_size(lists[2]);
    if (n_stages == 0) {
        jr_fail(ctx->doc, path, kEmptyStagesError);
        goto bail;
    }
    item = plans_config_get(ctx->cfg, "UNet_base_num_features", path);
    if (item == NULL) {
        jr_fail(ctx->doc, path, kMissingError);
        goto bail;
    }
    if (jr_as_int(ctx->doc, path, item, 1, ARCH_MAX_SIZE, &base) < 0) goto bail;
    item = plans_config_get(ctx->cfg, "unet_max_num_features", path);
    if (item == NULL) {
        jr_fail(ctx->doc, path, kMissingError);
        goto bail;
    }
    if (jr_as_int(ctx->doc, path, item, 1, ARCH_MAX_SIZE, &max_features) < 0) goto bail;
    /* nnU-Net deletes num_pool_per_axis during the conversion, so it must be there. */
    if (plans_config_get(ctx->cfg, "num_pool_per_axis", path) == NULL) {
        jr_fail(ctx->doc, path, kMissingError);
        goto bail;
    }

    /* Same keys in the same order as nnU-Net's converted dict. Each child belongs to its parent as
     * soon as it is attached, so freeing `block` frees everything. */
    snprintf(conv, sizeof(conv), "torch.nn.modules.conv.Conv%zdd", ndim);
    snprintf(norm, sizeof(norm), "torch.nn.modules.instancenorm.InstanceNorm%zdd", ndim);
    block = cJSON_CreateObject();
    if (block == NULL ||
        arch_attach(block, "network_class_name", cJSON_CreateString(class_name)) < 0 ||
        (kwargs = arch_attach_new(block, "arch_kwargs", cJSON_CreateObject())) == NULL ||
        arch_attach(kwargs, "n_stages", cJSON_CreateNumber((double)n_stages)) < 0 ||
        (features = arch_attach_new(kwargs, "features_per_stage", cJSON_CreateArray())) == NULL) {
        goto nomem;
    }
    /* min(base * 2**i, max); doubling stops once past max, so nothing overflows. */
    f = base;
    for (Py_ssize_t i = 0; i < n_stages; i++) {
        if (arch_attach(features, NULL,
                        cJSON_CreateNumber((double)(f < max_features ? f : max_features))) < 0) {
            goto nomem;
        }
        if (f < max_features) f *= 2;
    }
    failed = arch_attach(kwargs, "conv_op", cJSON_CreateString(conv)) < 0 ||
             arch_add_ref(kwargs, "kernel_sizes", lists[0]) < 0 ||
             arch_add_ref(kwargs, "strides", lists[1]) < 0 ||
             arch_add_ref(kwargs, blocks, lists[2]) < 0 ||
             arch_add_ref(kwargs, "n_conv_per_stage_decoder", lists[3]) < 0 ||
             arch_attach(kwargs, "conv_bias", cJSON_CreateTrue()) < 0 ||
             arch_attach(kwargs, "norm_op", cJSON_CreateString(norm)) < 0 ||
             (sub = arch_attach_new(kwargs, "norm_op_kwargs", cJSON_CreateObject())) == NULL ||
             arch_attach(sub, "eps", cJSON_CreateNumber(1e-05)) < 0 ||
             arch_attach(sub, "affine", cJSON_CreateTrue()) < 0;
    if (failed) goto nomem;
    failed = arch_attach(kwargs, "dropout_op", cJSON_CreateNull()) < 0 ||
             arch_attach(kwargs, "dropout_op_kwargs", cJSON_CreateNull()) < 0 ||
             arch_attach(kwargs, "nonlin", cJSON_CreateString("torch.nn.LeakyReLU")) < 0 ||
             (sub = arch_attach_new(kwargs, "nonlin_kwargs", cJSON_CreateObject())) == NULL ||
             arch_attach(sub, "inplace", cJSON_CreateTrue()) < 0;
    if (failed) goto nomem;
    sub = arch_attach_new(block, "_kw_requires_import", cJSON_CreateArray());
    if (sub == NULL) goto nomem;
    for (int k = 0; k < 4; k++) {
        if (arch_attach(sub, NULL, cJSON_CreateString(imports[k])) < 0) goto nomem;
    }
    result = block;
    block = NULL;
    goto bail;
nomem:
    PyErr_NoMemory();
bail:
    cJSON_Delete(block);
    return result;
}

int arch_resolve(const jr_doc *doc, const plans_config *cfg, Py_ssize_t ndim, PyObject *out)
{
    char arch_path[JR_PATH_MAX], kwargs_path[JR_PATH_MAX], path[JR_PATH_MAX];
    const cJSON *arch = plans_config_get(cfg, "architecture", arch_path);
    const cJSON *kwargs = NULL, *class_item = NULL, *imports = NULL;
    cJSON *converted = NULL;
    PyObject *block = NULL, *value = NULL;
    arch_ctx ctx = {doc, cfg, kwargs_path, "one per patch_size axis", NULL, 0};
    int rc = -1;

    jr_path_key(kwargs_path, arch_path, "arch_kwargs");
    if (arch == NULL) {
        ctx.converted = 1;
        converted = arch_convert_old(&ctx, ndim);
        if (converted == NULL) goto bail;
        arch = converted;
        kwargs = jr_find(arch, "arch_kwargs");
    } else {
        if (jr_expect(doc, arch_path, arch, cJSON_Object, "an object") < 0 ||
            jr_require(doc, arch_path, arch, "arch_kwargs", &kwargs) < 0 ||
            jr_expect(doc, kwargs_path, kwargs, cJSON_Object, "an object") < 0) {
            goto bail;
        }
    }
    jr_path_key(path, arch_path, "network_class_name");
    if (jr_require(doc, arch_path, arch, "network_class_name", &class_item) < 0 ||
        jr_expect(doc, path, class_item, cJSON_String, "a string") < 0) {
        goto bail;
    }
    jr_path_key(path, arch_path, "_kw_requires_import");
    if (jr_require(doc, arch_path, arch, "_kw_requires_import", &imports) < 0 ||
        arch_check_imports(&ctx, path, imports, kwargs) < 0 ||
        arch_check_structure(&ctx, class_item->valuestring, kwargs, ndim) < 0) {
        goto bail;
    }
    block = PyDict_New();
    if (block == NULL) goto bail;
    value = jr_to_python(doc, path, class_item);
    if (value == NULL || PyDict_SetItemString(block, "network_class_name", value) < 0) goto bail;
    Py_CLEAR(value);
    value = jr_to_python(doc, kwargs_path, kwargs);
    if (value == NULL || PyDict_SetItemString(block, "arch_kwargs", value) < 0) goto bail;
    Py_CLEAR(value);
    value = jr_to_python(doc, path, imports);
    if (value == NULL || PyDict_SetItemString(block, "_kw_requires_import", value) < 0) goto bail;
    Py_CLEAR(value);
    if (PyDict_SetItemString(out, "architecture", block) < 0 ||
        PyDict_SetItemString(out, "converted_from_old_plans", ctx.converted ? Py_True : Py_False) < 0) {
        goto bail;
    }
    rc = 0;
bail:
    cJSON_Delete(converted);
    Py_XDECREF(block);
    Py_XDECREF(value);
    return rc;
}
