/* arch_kwargs of the network classes this package builds (PlainConvUNet, ResidualEncoderUNet):
 * the structural rules their constructors assert (read_plans runs them on every plans file) and
 * the allowlist of op classes, op keywords and constructor keywords that build_network accepts
 * (`_core.check_arch_kwargs`, run on a plans block or on hand-written kwargs). The Python layer
 * only converts what passed: dotted names to classes, ints to per-stage lists. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* dna's decoder has n_stages - 1 stages and its forward indexes the first: 1 stage cannot run. */
#define ARCH_MIN_STAGES 2LL
#define ARCH_MAX_STAGES 1000LL
#define ARCH_MAX_SIZE 2147483647LL
#define ARCH_MAX_DOC_BYTES (16u * 1024u * 1024u)
#define ARCH_ALLOWED_MAX 1024

/* An ExportError from the JSON conversion, raised again as PlansError with the same text. */
#define kArchValueError "%S"
#define kArchDefaultSource "arch_kwargs"
#define kUnsupportedClassError "\"%s\" is not supported; allowed: %s"
#define kUnsupportedNameError "\"%s\" is not supported; allowed: %s"
#define kUnknownKwargError "is not an argument of %s; allowed: %s"
#define kOpKeywordError "is not a keyword %s accepts here; allowed: %s"
#define kDimMismatchError "\"%s\" is %dd, but conv_op \"%s\" is %dd"
#define kBottleneckError "missing required key (block BottleneckD needs it)"
#define kNotObjectRootError "expected an object, found %s"
#define kArchTypeError "arch_kwargs must be a dict or a bytes-like JSON document, got %.100s"

/* ---- structural rules (also run by read_plans) ---- */

/* Old plans key each converted kwarg was copied from (ConfigurationManager's conversion). */
static const char *arch_old_key(const char *name)
{
    if (strcmp(name, "strides") == 0) return "pool_op_kernel_sizes";
    if (strcmp(name, "kernel_sizes") == 0) return "conv_kernel_sizes";
    if (strcmp(name, "n_conv_per_stage") == 0 || strcmp(name, "n_blocks_per_stage") == 0) {
        return "n_conv_per_stage_encoder";
    }
    if (strcmp(name, "n_conv_per_stage_decoder") == 0) return "n_conv_per_stage_decoder";
    return NULL;
}

void arch_kw_path(const arch_ctx *ctx, const char *name, char *path)
{
    const char *old = ctx->converted ? arch_old_key(name) : NULL;
    if (old != NULL) {
        plans_config_get(ctx->cfg, old, path);
    } else {
        jr_path_key(path, ctx->kwargs_path, name);
    }
}

/* A positive integer, or (axes_ok) a list of ndim positive integers: one stage's kernel/stride. */
static int arch_check_size(const arch_ctx *ctx, const char *path, const cJSON *item, int axes_ok,
                           Py_ssize_t ndim)
{
    char child[JR_PATH_MAX];
    long long v;
    Py_ssize_t i = 0, n;

    if (!axes_ok || !cJSON_IsArray(item)) {
        return jr_as_int(ctx->doc, path, item, 1, ARCH_MAX_SIZE, &v);
    }
    n = jr_array_size(item);
    if (n != ndim) return jr_fail(ctx->doc, path, kLengthError, ndim, ctx->axes_why, n);
    for (const cJSON *c = item->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (jr_as_int(ctx->doc, child, c, 1, ARCH_MAX_SIZE, &v) < 0) return -1;
    }
    return 0;
}

/* A per-stage kwarg: one value for all stages (dynamic-network-architectures accepts an int) or
 * a list of exactly `want` entries. Absent and not required: nothing to check. */
static int arch_check_stages(const arch_ctx *ctx, const cJSON *kwargs, const char *name,
                             Py_ssize_t want, const char *why, int axes_ok, Py_ssize_t ndim,
                             int required)
{
    char path[JR_PATH_MAX], child[JR_PATH_MAX];
    const cJSON *item = jr_find(kwargs, name);
    Py_ssize_t n, i = 0;

    arch_kw_path(ctx, name, path);
    if (item == NULL || (!required && cJSON_IsNull(item))) {
        return required ? jr_fail(ctx->doc, path, kMissingError) : 0;
    }
    if (cJSON_IsNumber(item)) return arch_check_size(ctx, path, item, 0, ndim);
    if (jr_expect(ctx->doc, path, item, cJSON_Array, "a list or an integer") < 0) return -1;
    n = jr_array_size(item);
    if (n != want) return jr_fail(ctx->doc, path, kLengthError, want, why, n);
    for (const cJSON *c = item->child; c != NULL; c = c->next, i++) {
        jr_path_index(child, path, i);
        if (arch_check_size(ctx, child, c, axes_ok, ndim) < 0) return -1;
    }
    return 0;
}

/* An optional kwarg (absent or null: the constructor's default) of one JSON type when present;
 * type cJSON_True stands for either boolean. */
static int arch_check_optional(const arch_ctx *ctx, const cJSON *kwargs, const char *name,
                               int type, const char *what)
{
    char path[JR_PATH_MAX], found[96];
    const cJSON *item = jr_find(kwargs, name);
    int ok;

    if (item == NULL || cJSON_IsNull(item)) return 0;
    ok = type == cJSON_True ? cJSON_IsBool(item) : (item->type & 0xFF) == type;
    if (!ok) {
        arch_kw_path(ctx, name, path);
        jr_describe(ctx->doc, item, found, sizeof(found));
        return jr_fail(ctx->doc, path, kTypeError, what, found);
    }
    return 0;
}

/* "n_conv_per_stage" (PlainConvUNet) or "n_blocks_per_stage" (ResidualEncoderUNet) for the
 * dotted or bare class name; NULL for any other class. */
static const char *arch_blocks_key(const char *class_name)
{
    const char *dot = strrchr(class_name, '.');
    const char *short_name = dot ? dot + 1 : class_name;
    if (strcmp(short_name, "PlainConvUNet") == 0) return "n_conv_per_stage";
    if (strcmp(short_name, "ResidualEncoderUNet") == 0) return "n_blocks_per_stage";
    return NULL;
}

int arch_check_structure(const arch_ctx *ctx, const char *class_name, const cJSON *kwargs,
                         Py_ssize_t ndim)
{
    char path[JR_PATH_MAX];
    const char *blocks = arch_blocks_key(class_name);
    const cJSON *item = NULL;
    long long n_stages;
    Py_ssize_t n;

    if (blocks == NULL) return 0; /* a custom class: its kwargs are its own business */
    item = jr_find(kwargs, "n_stages");
    arch_kw_path(ctx, "n_stages", path);
    if (item == NULL) return jr_fail(ctx->doc, path, kMissingError);
    if (jr_as_int(ctx->doc, path, item, ARCH_MIN_STAGES, ARCH_MAX_STAGES, &n_stages) < 0) return -1;
    n = (Py_ssize_t)n_stages;
    if (arch_check_stages(ctx, kwargs, "features_per_stage", n, "n_stages", 0, ndim, 1) < 0 ||
        arch_check_stages(ctx, kwargs, "kernel_sizes", n, "n_stages", 1, ndim, 1) < 0 ||
        arch_check_stages(ctx, kwargs, "strides", n, "n_stages", 1, ndim, 1) < 0 ||
        arch_check_stages(ctx, kwargs, blocks, n, "n_stages", 0, ndim, 1) < 0 ||
        arch_check_stages(ctx, kwargs, "n_conv_per_stage_decoder", n - 1, "n_stages - 1", 0, ndim,
                          1) < 0) {
        return -1;
    }
    item = jr_find(kwargs, "conv_op");
    arch_kw_path(ctx, "conv_op", path);
    if (item == NULL) return jr_fail(ctx->doc, path, kMissingError);
    if (jr_expect(ctx->doc, path, item, cJSON_String, "a string") < 0) return -1;
    if (arch_check_optional(ctx, kwargs, "norm_op", cJSON_String, "a string or null") < 0 ||
        arch_check_optional(ctx, kwargs, "dropout_op", cJSON_String, "a string or null") < 0 ||
        arch_check_optional(ctx, kwargs, "nonlin", cJSON_String, "a string or null") < 0 ||
        arch_check_optional(ctx, kwargs, "norm_op_kwargs", cJSON_Object, "an object or null") < 0 ||
        arch_check_optional(ctx, kwargs, "dropout_op_kwargs", cJSON_Object, "an object or null") < 0 ||
        arch_check_optional(ctx, kwargs, "nonlin_kwargs", cJSON_Object, "an object or null") < 0 ||
        arch_check_optional(ctx, kwargs, "conv_bias", cJSON_True, "a boolean or null") < 0) {
        return -1;
    }
    return 0;
}

/* ---- allowlist (check_arch_kwargs only) ---- */

/* Rules for one op keyword's value. */
typedef enum {
    AK_BOOL,
    AK_NUMBER,          /* finite int or float */
    AK_POSITIVE,        /* finite, > 0 */
    AK_PROBABILITY,     /* finite, in [0, 1] */
    AK_OPT_PROBABILITY, /* AK_PROBABILITY or null */
    AK_POSITIVE_INT,
    AK_GELU_APPROX,     /* "none" or "tanh" */
} ak_rule;

typedef struct {
    const char *name;
    ak_rule rule;
} ak_keyword;

static const char *const ak_rule_what[] = {
    [AK_BOOL] = "a boolean",
    [AK_NUMBER] = "a finite number",
    [AK_POSITIVE] = "a positive number",
    [AK_PROBABILITY] = "a number in [0, 1]",
    [AK_OPT_PROBABILITY] = "a number in [0, 1] or null",
    [AK_POSITIVE_INT] = "a positive integer",
    [AK_GELU_APPROX] = "\"none\" or \"tanh\"",
};

static const ak_keyword ak_norm_kw[] = {{"eps", AK_POSITIVE}, {"momentum", AK_OPT_PROBABILITY},
                                        {"affine", AK_BOOL}, {"track_running_stats", AK_BOOL},
                                        {NULL, AK_BOOL}};
static const ak_keyword ak_dropout_kw[] = {{"p", AK_PROBABILITY}, {"inplace", AK_BOOL},
                                           {NULL, AK_BOOL}};
static const ak_keyword ak_leaky_kw[] = {{"negative_slope", AK_NUMBER}, {"inplace", AK_BOOL},
                                         {NULL, AK_BOOL}};
static const ak_keyword ak_inplace_kw[] = {{"inplace", AK_BOOL}, {NULL, AK_BOOL}};
static const ak_keyword ak_elu_kw[] = {{"alpha", AK_NUMBER}, {"inplace", AK_BOOL}, {NULL, AK_BOOL}};
static const ak_keyword ak_gelu_kw[] = {{"approximate", AK_GELU_APPROX}, {NULL, AK_BOOL}};
static const ak_keyword ak_prelu_kw[] = {{"num_parameters", AK_POSITIVE_INT}, {"init", AK_NUMBER},
                                         {NULL, AK_BOOL}};

/* One allowlisted class: its module (nnU-Net writes "<module>.<name>") and, for torch classes,
 * the public alias "torch.nn.<name>" is accepted too. */
typedef struct {
    const char *module;
    const char *name;
    int dim;                     /* 0: any dimension */
    const ak_keyword *keywords;  /* NULL-terminated; NULL: takes no keyword table */
} ak_class;

static const ak_class ak_conv_ops[] = {
    {"torch.nn.modules.conv", "Conv1d", 1, NULL},
    {"torch.nn.modules.conv", "Conv2d", 2, NULL},
    {"torch.nn.modules.conv", "Conv3d", 3, NULL},
    {NULL, NULL, 0, NULL},
};
static const ak_class ak_norm_ops[] = {
    {"torch.nn.modules.instancenorm", "InstanceNorm1d", 1, ak_norm_kw},
    {"torch.nn.modules.instancenorm", "InstanceNorm2d", 2, ak_norm_kw},
    {"torch.nn.modules.instancenorm", "InstanceNorm3d", 3, ak_norm_kw},
    {"torch.nn.modules.batchnorm", "BatchNorm1d", 1, ak_norm_kw},
    {"torch.nn.modules.batchnorm", "BatchNorm2d", 2, ak_norm_kw},
    {"torch.nn.modules.batchnorm", "BatchNorm3d", 3, ak_norm_kw},
    {NULL, NULL, 0, NULL},
};
/* Dropout is the identity in eval mode, so its nominal dimension does not matter. */
static const ak_class ak_dropout_ops[] = {
    {"torch.nn.modules.dropout", "Dropout", 0, ak_dropout_kw},
    {"torch.nn.modules.dropout", "Dropout1d", 0, ak_dropout_kw},
    {"torch.nn.modules.dropout", "Dropout2d", 0, ak_dropout_kw},
    {"torch.nn.modules.dropout", "Dropout3d", 0, ak_dropout_kw},
    {NULL, NULL, 0, NULL},
};
static const ak_class ak_nonlins[] = {
    {"torch.nn.modules.activation", "LeakyReLU", 0, ak_leaky_kw},
    {"torch.nn.modules.activation", "ReLU", 0, ak_inplace_kw},
    {"torch.nn.modules.activation", "ELU", 0, ak_elu_kw},
    {"torch.nn.modules.activation", "GELU", 0, ak_gelu_kw},
    {"torch.nn.modules.activation", "PReLU", 0, ak_prelu_kw},
    {"torch.nn.modules.activation", "SiLU", 0, ak_inplace_kw},
    {NULL, NULL, 0, NULL},
};
/* Residual blocks live in dna, not torch: only dna's own dotted names are accepted. */
static const ak_class ak_blocks[] = {
    {"dynamic_network_architectures.building_blocks.residual", "BasicBlockD", 0, NULL},
    {"dynamic_network_architectures.building_blocks.residual", "BottleneckD", 0, NULL},
    {NULL, NULL, 0, NULL},
};
/* Spellings of the network classes: nnU-Net's, the legacy residual_unet path its old-plans
 * conversion writes, and the bare names. */
static const char *const ak_network_classes[] = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
    "PlainConvUNet",
    "ResidualEncoderUNet",
    NULL,
};

static const char *const ak_common_kwargs[] = {
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
    "n_conv_per_stage_decoder", NULL};
static const char *const ak_optional_kwargs[] = {
    "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin",
    "nonlin_kwargs", "deep_supervision", NULL};
static const char *const ak_plain_kwargs[] = {"n_conv_per_stage", "nonlin_first", NULL};
static const char *const ak_resenc_kwargs[] = {"n_blocks_per_stage", "block", "bottleneck_channels",
                                               "stem_channels", NULL};

/* Appends `word` to the ", "-separated list in buf (ARCH_ALLOWED_MAX bytes, truncated). */
static void ak_append(char *buf, const char *prefix, const char *word)
{
    size_t used = strlen(buf);
    if (used + 1 < ARCH_ALLOWED_MAX) {
        snprintf(buf + used, ARCH_ALLOWED_MAX - used, "%s%s%s%s", used ? ", " : "",
                 prefix ? prefix : "", prefix ? "." : "", word);
    }
}

static int ak_in(const char *const *names, const char *name)
{
    for (; *names != NULL; names++) {
        if (strcmp(*names, name) == 0) return 1;
    }
    return 0;
}

/* The class of `table` named `value` (full name, or torch.nn.<name> for torch classes). */
static const ak_class *ak_lookup(const ak_class *table, const char *value)
{
    char full[256];
    for (const ak_class *c = table; c->name != NULL; c++) {
        snprintf(full, sizeof full, "%s.%s", c->module, c->name);
        if (strcmp(full, value) == 0) return c;
        snprintf(full, sizeof full, "torch.nn.%s", c->name);
        if (strncmp(c->module, "torch.", 6) == 0 && strcmp(full, value) == 0) return c;
    }
    return NULL;
}

/* Resolves kwarg `key` (a string, or null when allow_null) against `table`: *out is the class or
 * NULL for null/absent. Returns 0, or -1 with UnsupportedArchitectureError set. */
static int ak_resolve(const arch_ctx *ctx, const cJSON *kwargs, const char *key,
                      const ak_class *table, int allow_null, const ak_class **out)
{
    char path[JR_PATH_MAX], allowed[ARCH_ALLOWED_MAX] = "";
    const cJSON *item = jr_find(kwargs, key);

    *out = NULL;
    if (item == NULL || cJSON_IsNull(item)) return 0; /* structure checked required ones */
    *out = ak_lookup(table, item->valuestring);
    if (*out != NULL) return 0;
    for (const ak_class *c = table; c->name != NULL; c++) ak_append(allowed, c->module, c->name);
    if (allow_null) ak_append(allowed, NULL, "null");
    arch_kw_path(ctx, key, path);
    return jr_fail_as(ctx->doc, ctx->unsupported, path, kUnsupportedNameError, item->valuestring,
                      allowed);
}

static int ak_value_ok(const jr_doc *doc, ak_rule rule, const cJSON *v)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    switch (rule) {
    case AK_BOOL: return cJSON_IsBool(v);
    case AK_NUMBER: return isfinite(d);
    case AK_POSITIVE: return isfinite(d) && d > 0;
    case AK_OPT_PROBABILITY: if (cJSON_IsNull(v)) return 1; /* fall through */
    case AK_PROBABILITY: return isfinite(d) && d >= 0 && d <= 1;
    case AK_POSITIVE_INT: {
        char path[1] = "";
        long long n;
        int ok = jr_as_int(doc, path, v, 1, ARCH_MAX_SIZE, &n) == 0;
        if (!ok) PyErr_Clear();
        return ok;
    }
    case AK_GELU_APPROX:
        return cJSON_IsString(v) && (strcmp(v->valuestring, "none") == 0 ||
                                     strcmp(v->valuestring, "tanh") == 0);
    }
    return 0;
}

/* `key` (e.g. norm_op_kwargs) of the resolved `op`: every keyword allowlisted, every value in
 * range. Without op the kwargs are ignored, as dna ignores them. */
static int ak_check_op_kwargs(const arch_ctx *ctx, const cJSON *kwargs, const char *key,
                              const ak_class *op)
{
    char path[JR_PATH_MAX], child[JR_PATH_MAX], allowed[ARCH_ALLOWED_MAX] = "", found[96];
    const cJSON *item = jr_find(kwargs, key);

    if (op == NULL || item == NULL || cJSON_IsNull(item)) return 0;
    arch_kw_path(ctx, key, path);
    for (const cJSON *c = item->child; c != NULL; c = c->next) {
        const ak_keyword *k = op->keywords;
        while (k->name != NULL && strcmp(k->name, c->string) != 0) k++;
        jr_path_key(child, path, c->string);
        if (k->name == NULL) {
            for (k = op->keywords; k->name != NULL; k++) ak_append(allowed, NULL, k->name);
            return jr_fail_as(ctx->doc, ctx->unsupported, child, kOpKeywordError, op->name,
                              allowed);
        }
        if (!ak_value_ok(ctx->doc, k->rule, c)) {
            jr_describe(ctx->doc, c, found, sizeof found);
            return jr_fail(ctx->doc, child, kTypeError, ak_rule_what[k->rule], found);
        }
    }
    return 0;
}

/* Every key is a constructor argument of the class (PlainConvUNet or ResidualEncoderUNet). */
static int ak_check_names(const arch_ctx *ctx, const cJSON *kwargs, int resenc)
{
    const char *const *own = resenc ? ak_resenc_kwargs : ak_plain_kwargs;
    char path[JR_PATH_MAX], allowed[ARCH_ALLOWED_MAX] = "";

    for (const cJSON *c = kwargs->child; c != NULL; c = c->next) {
        if (ak_in(ak_common_kwargs, c->string) || ak_in(ak_optional_kwargs, c->string) ||
            ak_in(own, c->string)) {
            continue;
        }
        for (const char *const *n = ak_common_kwargs; *n != NULL; n++) ak_append(allowed, NULL, *n);
        ak_append(allowed, NULL, own[0]);
        for (const char *const *n = ak_optional_kwargs; *n != NULL; n++) ak_append(allowed, NULL, *n);
        for (const char *const *n = own + 1; *n != NULL; n++) ak_append(allowed, NULL, *n);
        jr_path_key(path, ctx->kwargs_path, c->string);
        return jr_fail_as(ctx->doc, ctx->unsupported, path, kUnknownKwargError,
                          resenc ? "ResidualEncoderUNet" : "PlainConvUNet", allowed);
    }
    return 0;
}

/* The keywords only ResidualEncoderUNet takes: block, bottleneck_channels, stem_channels. */
static int ak_check_resenc(const arch_ctx *ctx, const cJSON *kwargs, Py_ssize_t n_stages,
                           Py_ssize_t ndim)
{
    char path[JR_PATH_MAX];
    const ak_class *block = NULL;
    const cJSON *bottleneck = jr_find(kwargs, "bottleneck_channels");
    const cJSON *stem = jr_find(kwargs, "stem_channels");
    long long v;

    if (arch_check_optional(ctx, kwargs, "block", cJSON_String, "a string") < 0 ||
        ak_resolve(ctx, kwargs, "block", ak_blocks, 0, &block) < 0 ||
        arch_check_stages(ctx, kwargs, "bottleneck_channels", n_stages, "n_stages", 0, ndim, 0) < 0) {
        return -1;
    }
    if (block == &ak_blocks[1] && (bottleneck == NULL || cJSON_IsNull(bottleneck))) {
        arch_kw_path(ctx, "bottleneck_channels", path);
        return jr_fail(ctx->doc, path, kBottleneckError);
    }
    if (stem != NULL && !cJSON_IsNull(stem)) {
        arch_kw_path(ctx, "stem_channels", path);
        return jr_as_int(ctx->doc, path, stem, 1, ARCH_MAX_SIZE, &v);
    }
    return 0;
}

/* Everything build_network needs of `kwargs` for class `class_name`: the allowlist on top of
 * arch_check_structure, with the dimension taken from conv_op. Returns 0, or -1 with PlansError
 * or UnsupportedArchitectureError set. */
static int ak_check_buildable(const arch_ctx *ctx, const char *class_name, const cJSON *kwargs)
{
    char path[JR_PATH_MAX], allowed[ARCH_ALLOWED_MAX] = "";
    const ak_class *conv = NULL, *norm = NULL, *dropout = NULL, *nonlin = NULL;
    const cJSON *conv_item = jr_find(kwargs, "conv_op");
    const cJSON *n_stages = jr_find(kwargs, "n_stages");
    int resenc;

    if (!ak_in(ak_network_classes, class_name)) {
        for (const char *const *n = ak_network_classes; *n != NULL; n++) ak_append(allowed, NULL, *n);
        return jr_fail_as(ctx->doc, ctx->unsupported, "network_class_name", kUnsupportedClassError,
                          class_name, allowed);
    }
    resenc = strcmp(arch_blocks_key(class_name), "n_blocks_per_stage") == 0;
    if (!cJSON_IsObject(kwargs)) {
        return jr_fail(ctx->doc, ctx->kwargs_path, kNotObjectRootError, jr_type_name(kwargs));
    }
    if (ak_check_names(ctx, kwargs, resenc) < 0) return -1;
    /* The dimension comes from conv_op, so it is resolved before the per-axis checks. */
    if (conv_item == NULL) {
        arch_kw_path(ctx, "conv_op", path);
        return jr_fail(ctx->doc, path, kMissingError);
    }
    arch_kw_path(ctx, "conv_op", path);
    if (jr_expect(ctx->doc, path, conv_item, cJSON_String, "a string") < 0 ||
        ak_resolve(ctx, kwargs, "conv_op", ak_conv_ops, 0, &conv) < 0 ||
        arch_check_structure(ctx, class_name, kwargs, conv->dim) < 0 ||
        ak_resolve(ctx, kwargs, "norm_op", ak_norm_ops, 1, &norm) < 0) {
        return -1;
    }
    if (norm != NULL && norm->dim != conv->dim) {
        arch_kw_path(ctx, "norm_op", path);
        return jr_fail_as(ctx->doc, ctx->unsupported, path, kDimMismatchError,
                          jr_find(kwargs, "norm_op")->valuestring, norm->dim,
                          conv_item->valuestring, conv->dim);
    }
    if (ak_resolve(ctx, kwargs, "dropout_op", ak_dropout_ops, 1, &dropout) < 0 ||
        ak_resolve(ctx, kwargs, "nonlin", ak_nonlins, 1, &nonlin) < 0 ||
        ak_check_op_kwargs(ctx, kwargs, "norm_op_kwargs", norm) < 0 ||
        ak_check_op_kwargs(ctx, kwargs, "dropout_op_kwargs", dropout) < 0 ||
        ak_check_op_kwargs(ctx, kwargs, "nonlin_kwargs", nonlin) < 0 ||
        arch_check_optional(ctx, kwargs, "deep_supervision", cJSON_True, "a boolean or null") < 0) {
        return -1;
    }
    if (!resenc) {
        return arch_check_optional(ctx, kwargs, "nonlin_first", cJSON_True, "a boolean or null");
    }
    return ak_check_resenc(ctx, kwargs, (Py_ssize_t)n_stages->valuedouble, conv->dim);
}

/* Loads `arg` (a dict, or a bytes-like JSON document) into `doc`. Returns 0, or -1. */
static int ak_load(PyObject *module, jr_doc *doc, PyObject *arg, PyObject *source_obj)
{
    Py_buffer view;
    cJSON *tree = NULL;
    char *text = NULL;
    int rc = -1;

    if (PyObject_CheckBuffer(arg)) {
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return -1;
        rc = jr_load_buffer(doc, view.buf, (size_t)view.len, ARCH_MAX_DOC_BYTES);
        PyBuffer_Release(&view);
        return rc;
    }
    if (!PyDict_Check(arg)) {
        PyErr_Format(PyExc_TypeError, kArchTypeError, Py_TYPE(arg)->tp_name);
        return -1;
    }
    /* Through JSON text, so ints and floats (16 vs 16.0) are told apart as in a plans file. */
    tree = nx_python_to_cjson(module, arg, source_obj);
    if (tree == NULL) {
        /* A value JSON cannot hold (NaN, a class that is not allowlisted ...) is a bad kwarg. */
        PyObject *exc = nx_take_exception();
        if (exc != NULL && Py_IS_TYPE(exc, (PyTypeObject *)nx_get_state(module)->ExportError)) {
            PyErr_Format(nx_get_state(module)->PlansError, kArchValueError, exc);
            Py_DECREF(exc);
        } else if (exc != NULL) {
            nx_restore_exception(exc);
        }
        goto bail;
    }
    text = cJSON_PrintUnformatted(tree);
    if (text == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    rc = jr_load_buffer(doc, text, strlen(text), ARCH_MAX_DOC_BYTES);
bail:
    if (text != NULL) cJSON_free(text);
    cJSON_Delete(tree);
    return rc;
}

/* check_arch_kwargs(network_class_name, arch_kwargs, source="arch_kwargs") -> None */
static PyObject *py_check_arch_kwargs(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"network_class_name", "arch_kwargs", "source", NULL};
    nx_state *st = nx_get_state(module);
    PyObject *arg = NULL, *source_obj = NULL, *result = NULL;
    const char *class_name = NULL, *source = kArchDefaultSource;
    jr_doc doc;
    arch_ctx ctx = {&doc, NULL, "", "one per conv_op axis", st->UnsupportedArchitectureError, 0};

    jr_init(&doc, st->PlansError, "");
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sO|s:check_arch_kwargs", kwlist, &class_name,
                                     &arg, &source)) {
        return NULL;
    }
    jr_init(&doc, st->PlansError, source);
    source_obj = PyUnicode_FromString(source);
    if (source_obj == NULL || ak_load(module, &doc, arg, source_obj) < 0 ||
        ak_check_buildable(&ctx, class_name, doc.root) < 0) {
        goto bail;
    }
    result = Py_NewRef(Py_None);
bail:
    jr_release(&doc);
    Py_XDECREF(source_obj);
    return result;
}

static PyMethodDef arch_methods[] = {
    {"check_arch_kwargs", (PyCFunction)(void (*)(void))py_check_arch_kwargs,
     METH_VARARGS | METH_KEYWORDS,
     "check_arch_kwargs(network_class_name, arch_kwargs, source=\"arch_kwargs\") -> None\n--\n\n"
     "Check arch_kwargs (a dict, or a bytes-like JSON document) for building network_class_name "
     "with nnunet_export: PlansError for a malformed value, UnsupportedArchitectureError for a "
     "class, op or keyword outside the allowlist. Messages name `source` and the key path."},
    {NULL, NULL, 0, NULL},
};

int nx_add_arch_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, arch_methods);
}
