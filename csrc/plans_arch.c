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

/* The old plans keys a conversion reads, checked; borrowed from the plans document. */
typedef struct {
    const char *class_name; /* module path nnU-Net converts the bare class name to */
    const char *blocks;     /* keyword of the encoder's per-stage block counts */
    const cJSON *lists[4];  /* kernel sizes, pool kernel sizes, encoder and decoder block counts */
    Py_ssize_t n_stages;
    long long base, max_features;
} arch_old_keys;

/* Reads and checks the old plans keys of ctx->cfg into *keys. Returns 0, or -1 with PlansError. */
static int arch_old_read(const arch_ctx *ctx, arch_old_keys *keys)
{
    static const char *const copied[4] = {"conv_kernel_sizes", "pool_op_kernel_sizes",
                                          "n_conv_per_stage_encoder", "n_conv_per_stage_decoder"};
    static const char *const ints[2] = {"UNet_base_num_features", "unet_max_num_features"};
    long long *int_out[2] = {&keys->base, &keys->max_features};
    char path[JR_PATH_MAX];
    const cJSON *item = plans_config_get(ctx->cfg, "UNet_class_name", path);

    if (item == NULL) {
        /* Neither format: name what a modern plans file would have needed. */
        plans_config_get(ctx->cfg, "architecture", path);
        return jr_fail(ctx->doc, path, kMissingError);
    }
    if (jr_as_string(ctx->doc, path, item, &keys->class_name) < 0) return -1;
    if (strcmp(keys->class_name, "PlainConvUNet") == 0) {
        keys->blocks = "n_conv_per_stage";
        keys->class_name = "dynamic_network_architectures.architectures.unet.PlainConvUNet";
    } else if (strcmp(keys->class_name, "ResidualEncoderUNet") == 0) {
        keys->blocks = "n_blocks_per_stage";
        /* nnU-Net 2.8.1 writes this module path verbatim, although dynamic-network-architectures
         * 0.4.4 keeps ResidualEncoderUNet in architectures.unet. */
        keys->class_name = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet";
    } else {
        return jr_fail(ctx->doc, path, kOldClassError, keys->class_name);
    }
    for (int k = 0; k < 4; k++) {
        keys->lists[k] = plans_config_get(ctx->cfg, copied[k], path);
        if (keys->lists[k] == NULL) return jr_fail(ctx->doc, path, kMissingError);
    }
    plans_config_get(ctx->cfg, "n_conv_per_stage_encoder", path);
    if (jr_expect(ctx->doc, path, keys->lists[2], cJSON_Array, "a list") < 0) return -1;
    keys->n_stages = jr_array_size(keys->lists[2]);
    if (keys->n_stages == 0) return jr_fail(ctx->doc, path, kEmptyStagesError);
    for (int k = 0; k < 2; k++) {
        item = plans_config_get(ctx->cfg, ints[k], path);
        if (item == NULL) return jr_fail(ctx->doc, path, kMissingError);
        if (jr_as_int(ctx->doc, path, item, 1, ARCH_MAX_SIZE, int_out[k]) < 0) return -1;
    }
    /* nnU-Net deletes num_pool_per_axis during the conversion, so it must be there. */
    if (plans_config_get(ctx->cfg, "num_pool_per_axis", path) == NULL) {
        return jr_fail(ctx->doc, path, kMissingError);
    }
    return 0;
}

/* Builds the modern architecture block from old plans keys exactly as
 * ConfigurationManager.__init__ does. Returns a new cJSON tree (list values are references into
 * the plans document, which must outlive it) or NULL with an exception set. */
static cJSON *arch_convert_old(const arch_ctx *ctx, Py_ssize_t ndim)
{
    static const char *const imports[4] = {"conv_op", "norm_op", "dropout_op", "nonlin"};
    char conv[96], norm[96];
    arch_old_keys keys;
    cJSON *block = NULL, *kwargs = NULL, *features = NULL, *sub = NULL;
    long long f;

    memset(&keys, 0, sizeof keys);
    if (arch_old_read(ctx, &keys) < 0) return NULL;
    /* Same keys in the same order as nnU-Net's converted dict. Each child belongs to its parent as
     * soon as it is attached, so freeing `block` frees everything. */
    snprintf(conv, sizeof(conv), "torch.nn.modules.conv.Conv%zdd", ndim);
    snprintf(norm, sizeof(norm), "torch.nn.modules.instancenorm.InstanceNorm%zdd", ndim);
    block = cJSON_CreateObject();
    if (block == NULL ||
        arch_attach(block, "network_class_name", cJSON_CreateString(keys.class_name)) < 0 ||
        (kwargs = arch_attach_new(block, "arch_kwargs", cJSON_CreateObject())) == NULL ||
        arch_attach(kwargs, "n_stages", cJSON_CreateNumber((double)keys.n_stages)) < 0 ||
        (features = arch_attach_new(kwargs, "features_per_stage", cJSON_CreateArray())) == NULL) {
        goto bail;
    }
    /* min(base * 2**i, max); doubling stops once past max, so nothing overflows. */
    f = keys.base;
    for (Py_ssize_t i = 0; i < keys.n_stages; i++) {
        if (arch_attach(features, NULL,
                        cJSON_CreateNumber((double)(f < keys.max_features ? f : keys.max_features))) < 0) {
            goto bail;
        }
        if (f < keys.max_features) f *= 2;
    }
    if (arch_attach(kwargs, "conv_op", cJSON_CreateString(conv)) < 0 ||
        arch_add_ref(kwargs, "kernel_sizes", keys.lists[0]) < 0 ||
        arch_add_ref(kwargs, "strides", keys.lists[1]) < 0 ||
        arch_add_ref(kwargs, keys.blocks, keys.lists[2]) < 0 ||
        arch_add_ref(kwargs, "n_conv_per_stage_decoder", keys.lists[3]) < 0 ||
        arch_attach(kwargs, "conv_bias", cJSON_CreateTrue()) < 0 ||
        arch_attach(kwargs, "norm_op", cJSON_CreateString(norm)) < 0 ||
        (sub = arch_attach_new(kwargs, "norm_op_kwargs", cJSON_CreateObject())) == NULL ||
        arch_attach(sub, "eps", cJSON_CreateNumber(1e-05)) < 0 ||
        arch_attach(sub, "affine", cJSON_CreateTrue()) < 0 ||
        arch_attach(kwargs, "dropout_op", cJSON_CreateNull()) < 0 ||
        arch_attach(kwargs, "dropout_op_kwargs", cJSON_CreateNull()) < 0 ||
        arch_attach(kwargs, "nonlin", cJSON_CreateString("torch.nn.LeakyReLU")) < 0 ||
        (sub = arch_attach_new(kwargs, "nonlin_kwargs", cJSON_CreateObject())) == NULL ||
        arch_attach(sub, "inplace", cJSON_CreateTrue()) < 0 ||
        (sub = arch_attach_new(block, "_kw_requires_import", cJSON_CreateArray())) == NULL) {
        goto bail;
    }
    for (int k = 0; k < 4; k++) {
        if (arch_attach(sub, NULL, cJSON_CreateString(imports[k])) < 0) goto bail;
    }
    return block;
bail:
    /* Only allocations fail past arch_old_read. */
    cJSON_Delete(block);
    PyErr_NoMemory();
    return NULL;
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
