/* JSON documents for the plans reader: reading a file with a size limit, parsing it with cJSON
 * (no global error state), typed access that names the file and the key path in every error,
 * and conversion of cJSON values to Python objects the way Python's json module would build them.
 *
 * Every failing function here sets the document's exception (PlansError) and returns -1 / NULL. */
#include "nnunet_export.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* "<file>: <reason>" and "<file>: <key path>: <reason>" */
#define kFileReasonFormat "%s: %s"
#define kPathReasonFormat "%s: %s: %s"
#define kOpenError "%s: cannot open: %s"
#define kNotRegularError "%s: not a regular file"
#define kTooLargeError "%s: file is %lld bytes, more than the %lld bytes allowed for a JSON file"
#define kBufferTooLargeError "%s: document is %zu bytes, more than the %zu bytes allowed for JSON"
#define kReadError "%s: cannot read: %s"
#define kShortReadError "%s: file changed size while it was read"
#define kSyntaxError "%s:%zu:%zu: malformed JSON: parsing stopped at this position"
#define kTrailingError "%s:%zu:%zu: malformed JSON: unexpected data after the top-level value"
#define kDuplicateKeyError "duplicate key \"%s\" (JSON allows it, but which value counts is ambiguous)"
#define kNotIntegerError "expected an integer, found %s"
#define kIntRangeError "expected an integer from %lld to %lld, found %s"
#define kBadUtf8Error "string is not valid UTF-8"
#define kHugeIntError "integer %s cannot be represented exactly (more than 2**53 in magnitude)"

/* 2**53: beyond it a double no longer holds every integer, so the value in the file was lost. */
#define JR_EXACT_INT_LIMIT 9007199254740992.0

const char *jr_type_name(const cJSON *item)
{
    if (item == NULL) return "nothing";
    switch (item->type & 0xFF) {
    case cJSON_False:
    case cJSON_True: return "a boolean";
    case cJSON_NULL: return "null";
    case cJSON_Number: return "a number";
    case cJSON_String: return "a string";
    case cJSON_Array: return "a list";
    case cJSON_Object: return "an object";
    default: return "an invalid value";
    }
}

void jr_path_key(char *buf, const char *parent, const char *key)
{
    /* snprintf truncates long paths safely; a truncated path in a message is still useful. */
    if (parent == NULL || parent[0] == '\0') {
        snprintf(buf, JR_PATH_MAX, "%s", key);
    } else {
        snprintf(buf, JR_PATH_MAX, "%s.%s", parent, key);
    }
}

void jr_path_index(char *buf, const char *parent, Py_ssize_t index)
{
    snprintf(buf, JR_PATH_MAX, "%s[%zd]", parent, index);
}

static int jr_vfail(const jr_doc *doc, PyObject *type, const char *path, const char *fmt,
                    va_list ap)
{
    char detail[1024];

    vsnprintf(detail, sizeof(detail), fmt, ap);
    if (path == NULL || path[0] == '\0') {
        PyErr_Format(type, kFileReasonFormat, doc->file, detail);
    } else {
        PyErr_Format(type, kPathReasonFormat, doc->file, path, detail);
    }
    return -1;
}

int jr_fail(const jr_doc *doc, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    jr_vfail(doc, doc->error, path, fmt, ap);
    va_end(ap);
    return -1;
}

int jr_fail_as(const jr_doc *doc, PyObject *type, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    jr_vfail(doc, type, path, fmt, ap);
    va_end(ap);
    return -1;
}

static int jr_written_as_float(const jr_doc *doc, const cJSON *item);

void jr_describe(const jr_doc *doc, const cJSON *item, char *buf, size_t n)
{
    if (cJSON_IsNumber(item)) {
        snprintf(buf, n, "%.17g", item->valuedouble);
        /* 16.0 in the file: say so, or "expected an integer, found 16" reads as a contradiction */
        if (jr_written_as_float(doc, item) && strpbrk(buf, ".eni") == NULL) {
            strncat(buf, ".0", n - strlen(buf) - 1);
        }
    } else if (cJSON_IsString(item) && strlen(item->valuestring) < 64) {
        snprintf(buf, n, "\"%s\"", item->valuestring);
    } else {
        snprintf(buf, n, "%s", jr_type_name(item));
    }
}

/* Line and column (both from 1, column in bytes) of byte `offset` of the text. */
static void jr_line_column(const char *text, size_t offset, size_t *line, size_t *column)
{
    size_t l = 1, line_start = 0;
    for (size_t i = 0; i < offset; i++) {
        if (text[i] == '\n') {
            l++;
            line_start = i + 1;
        }
    }
    *line = l;
    *column = offset - line_start + 1;
}

/* Reads the whole regular file into a NUL-terminated heap buffer. Returns 0, or -1 with the
 * exception set. On success *out (owned, PyMem) and *size are set. */
static int jr_read_file(const jr_doc *doc, size_t max_bytes, char **out, size_t *size)
{
    int fd = -1, rc = -1;
    char *buf = NULL;
    struct stat st;
    size_t want, got = 0;

    fd = open(doc->file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        PyErr_Format(doc->error, kOpenError, doc->file, strerror(errno));
        goto bail;
    }
    if (fstat(fd, &st) != 0) {
        PyErr_Format(doc->error, kReadError, doc->file, strerror(errno));
        goto bail;
    }
    if (!S_ISREG(st.st_mode)) {
        PyErr_Format(doc->error, kNotRegularError, doc->file);
        goto bail;
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size > (unsigned long long)max_bytes) {
        PyErr_Format(doc->error, kTooLargeError, doc->file, (long long)st.st_size,
                     (long long)max_bytes);
        goto bail;
    }
    want = (size_t)st.st_size;
    /* +1 for the terminating NUL cJSON's trailing-data check reads; max_bytes keeps it small. */
    buf = PyMem_Malloc(want + 1);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    while (got < want) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            PyErr_Format(doc->error, kReadError, doc->file, strerror(errno));
            goto bail;
        }
        if (r == 0) {
            PyErr_Format(doc->error, kShortReadError, doc->file);
            goto bail;
        }
        got += (size_t)r;
    }
    buf[want] = '\0';
    *out = buf;
    *size = want;
    buf = NULL;
    rc = 0;
bail:
    PyMem_Free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

static int jr_compare_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const cJSON *const *)a;
    uintptr_t y = (uintptr_t) * (const cJSON *const *)b;
    return (x > y) - (x < y);
}

/* Appends number nodes in document order. Returns the new count, or (size_t)-1 when there are
 * more nodes than `cap`, which cannot happen when `cap` counted the same tree. */
static size_t jr_collect_numbers(const cJSON *item, const cJSON **out, size_t n, size_t cap)
{
    for (; item != NULL; item = item->next) {
        if (cJSON_IsNumber(item)) {
            if (n >= cap) return (size_t)-1;
            out[n++] = item;
        } else if (item->child != NULL) {
            n = jr_collect_numbers(item->child, out, n, cap);
            if (n == (size_t)-1) return n;
        }
    }
    return n;
}

/* Python's json module makes a float of a number written with a fraction or an exponent and an
 * int otherwise; cJSON keeps only a double. Numbers appear in the text in the same order as in a
 * depth-first walk of the tree, so one scan of the text tells which number nodes were written as
 * floats. Returns 0, or -1 with an exception set. */
static int jr_mark_float_nodes(jr_doc *doc)
{
    const cJSON **numbers = NULL;
    size_t count = 0, n_numbers, n_float = 0, index = 0;
    int rc = -1, in_string = 0;
    const char *t = doc->text;

    for (size_t i = 0; i < doc->size; i++) {
        char c = t[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            count++;
            while (i + 1 < doc->size && strchr("+-.eE0123456789", t[i + 1]) != NULL && t[i + 1] != '\0') i++;
        }
    }
    if (count == 0) return 0;
    if (count > PY_SSIZE_T_MAX / sizeof(*numbers)) {
        PyErr_NoMemory();
        goto bail;
    }
    numbers = PyMem_Malloc(count * sizeof(*numbers));
    if (numbers == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    n_numbers = jr_collect_numbers(doc->root, numbers, 0, count);
    if (n_numbers != count) {
        /* The scan and the parser disagree: never guess, keep the tree's own view of numbers. */
        rc = 0;
        goto bail;
    }
    in_string = 0;
    for (size_t i = 0; i < doc->size; i++) {
        char c = t[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            int is_float = 0;
            for (; i < doc->size && c != '\0' && strchr("+-.eE0123456789", c) != NULL; c = t[++i]) {
                if (c == '.' || c == 'e' || c == 'E') is_float = 1;
            }
            i--;
            if (is_float) numbers[n_float++] = numbers[index];
            index++;
        }
    }
    qsort(numbers, n_float, sizeof(*numbers), jr_compare_ptr);
    doc->float_nodes = numbers;
    doc->n_float_nodes = n_float;
    numbers = NULL;
    rc = 0;
bail:
    PyMem_Free(numbers);
    return rc;
}

/* True when the number was written with a fraction or exponent. Nodes that are not from the
 * document (built by the old-plans conversion) are found in no list and count as written as
 * integers; callers treat non-integral values as floats anyway. */
static int jr_written_as_float(const jr_doc *doc, const cJSON *item)
{
    if (doc->float_nodes == NULL) return 0;
    return bsearch(&item, doc->float_nodes, doc->n_float_nodes, sizeof(*doc->float_nodes),
                   jr_compare_ptr) != NULL;
}

/* Rejects duplicate keys anywhere in the tree: cJSON lookups return the first, Python's json the
 * last, so a document with duplicates would mean different things to nnU-Net and to us. */
static int jr_check_duplicates(const jr_doc *doc, const cJSON *item, const char *path)
{
    char child_path[JR_PATH_MAX];
    Py_ssize_t index = 0;

    if (!cJSON_IsObject(item) && !cJSON_IsArray(item)) return 0;
    for (const cJSON *c = item->child; c != NULL; c = c->next, index++) {
        if (cJSON_IsObject(item)) {
            for (const cJSON *d = item->child; d != c; d = d->next) {
                if (strcmp(d->string, c->string) == 0) {
                    return jr_fail(doc, path, kDuplicateKeyError, c->string);
                }
            }
            jr_path_key(child_path, path, c->string);
        } else {
            jr_path_index(child_path, path, index);
        }
        if (jr_check_duplicates(doc, c, child_path) < 0) return -1;
    }
    return 0;
}

void jr_init(jr_doc *doc, PyObject *error, const char *file)
{
    memset(doc, 0, sizeof(*doc));
    doc->error = error;
    doc->file = file;
}

/* Parses doc->text (doc->size bytes, NUL-terminated). Returns 0, or -1 with the exception set. */
static int jr_parse(jr_doc *doc)
{
    const char *end = NULL;
    size_t line, column, offset;

    /* cJSON also records a failure in a process-global; callers hold the GIL, which serialises
     * them, and nothing here reads that global: the position comes from `end`. */
    doc->root = cJSON_ParseWithLengthOpts(doc->text, doc->size, &end, 0);
    if (end == NULL || end < doc->text || end > doc->text + doc->size) {
        end = doc->text + doc->size;
    }
    offset = (size_t)(end - doc->text);
    if (doc->root == NULL) {
        jr_line_column(doc->text, offset, &line, &column);
        PyErr_Format(doc->error, kSyntaxError, doc->file, line, column);
        return -1;
    }
    /* Only whitespace may follow the value; an embedded NUL byte also counts as trailing data. */
    while (offset < doc->size && strchr(" \t\r\n", doc->text[offset]) != NULL &&
           doc->text[offset] != '\0') {
        offset++;
    }
    if (offset != doc->size) {
        jr_line_column(doc->text, offset, &line, &column);
        PyErr_Format(doc->error, kTrailingError, doc->file, line, column);
        return -1;
    }
    if (jr_check_duplicates(doc, doc->root, "") < 0) return -1;
    return jr_mark_float_nodes(doc);
}

int jr_load(jr_doc *doc, size_t max_bytes)
{
    if (jr_read_file(doc, max_bytes, &doc->text, &doc->size) < 0) return -1;
    return jr_parse(doc);
}

int jr_load_buffer(jr_doc *doc, const char *data, size_t len, size_t max_bytes)
{
    if (len > max_bytes) {
        PyErr_Format(doc->error, kBufferTooLargeError, doc->file, len, max_bytes);
        return -1;
    }
    /* A private NUL-terminated copy: cJSON reads one byte past the value, and the caller's buffer
     * may change once the GIL is released elsewhere. */
    doc->text = PyMem_Malloc(len + 1);
    if (doc->text == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(doc->text, data, len);
    doc->text[len] = '\0';
    doc->size = len;
    return jr_parse(doc);
}

void jr_release(jr_doc *doc)
{
    cJSON_Delete(doc->root);
    doc->root = NULL;
    PyMem_Free(doc->text);
    doc->text = NULL;
    PyMem_Free((void *)doc->float_nodes);
    doc->float_nodes = NULL;
}

const cJSON *jr_find(const cJSON *object, const char *key)
{
    if (!cJSON_IsObject(object)) return NULL;
    return cJSON_GetObjectItemCaseSensitive(object, key);
}

int jr_require(const jr_doc *doc, const char *parent_path, const cJSON *object, const char *key,
               const cJSON **out)
{
    char path[JR_PATH_MAX];
    *out = jr_find(object, key);
    if (*out == NULL) {
        jr_path_key(path, parent_path, key);
        return jr_fail(doc, path, kMissingError);
    }
    return 0;
}

int jr_expect(const jr_doc *doc, const char *path, const cJSON *item, int type, const char *what)
{
    if (item == NULL || (item->type & 0xFF) != type) {
        return jr_fail(doc, path, kTypeError, what, jr_type_name(item));
    }
    return 0;
}

int jr_as_int(const jr_doc *doc, const char *path, const cJSON *item, long long min, long long max,
              long long *out)
{
    char found[96];
    double d;

    if (!cJSON_IsNumber(item)) {
        return jr_fail(doc, path, kNotIntegerError, jr_type_name(item));
    }
    d = item->valuedouble;
    jr_describe(doc, item, found, sizeof(found));
    /* Python's json gives a float for 3.0; nnU-Net would then fail on it as a size, and so do we. */
    if (!isfinite(d) || d != floor(d) || jr_written_as_float(doc, item)) {
        return jr_fail(doc, path, kNotIntegerError, found);
    }
    /* Compare as doubles before casting: casting an out-of-range double is undefined behaviour. */
    if (d < (double)min || d > (double)max) {
        return jr_fail(doc, path, kIntRangeError, min, max, found);
    }
    *out = (long long)d;
    return 0;
}

int jr_as_string(const jr_doc *doc, const char *path, const cJSON *item, const char **out)
{
    if (jr_expect(doc, path, item, cJSON_String, "a string") < 0) return -1;
    *out = item->valuestring;
    return 0;
}

Py_ssize_t jr_array_size(const cJSON *array)
{
    Py_ssize_t n = 0;
    for (const cJSON *c = array->child; c != NULL; c = c->next) n++;
    return n;
}

int jr_put(PyObject *out, const char *key, PyObject *value)
{
    int rc;
    if (value == NULL) return -1;
    rc = PyDict_SetItemString(out, key, value);
    Py_DECREF(value);
    return rc;
}

PyObject *jr_string_to_python(const jr_doc *doc, const char *path, const char *s)
{
    PyObject *result = PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "strict");
    if (result == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        jr_fail(doc, path, kBadUtf8Error);
    }
    return result;
}

PyObject *jr_to_python(const jr_doc *doc, const char *path, const cJSON *item)
{
    PyObject *result = NULL, *value = NULL, *key = NULL;
    char child_path[JR_PATH_MAX];
    char found[96];
    Py_ssize_t index = 0;
    int failed = 0;

    if (Py_EnterRecursiveCall(" while converting JSON")) return NULL;
    switch (item->type & 0xFF) {
    case cJSON_False: result = Py_NewRef(Py_False); break;
    case cJSON_True: result = Py_NewRef(Py_True); break;
    case cJSON_NULL: result = Py_NewRef(Py_None); break;
    case cJSON_Number:
        if (!isfinite(item->valuedouble) || item->valuedouble != floor(item->valuedouble) ||
            jr_written_as_float(doc, item)) {
            result = PyFloat_FromDouble(item->valuedouble);
        } else if (fabs(item->valuedouble) > JR_EXACT_INT_LIMIT) {
            jr_describe(doc, item, found, sizeof(found));
            jr_fail(doc, path, kHugeIntError, found);
        } else {
            /* Integral and within +-2**53: the cast is exact and defined. */
            result = PyLong_FromLongLong((long long)item->valuedouble);
        }
        break;
    case cJSON_String: result = jr_string_to_python(doc, path, item->valuestring); break;
    case cJSON_Array:
        result = PyList_New(0);
        for (const cJSON *c = item->child; result != NULL && c != NULL; c = c->next, index++) {
            jr_path_index(child_path, path, index);
            value = jr_to_python(doc, child_path, c);
            if (value == NULL || PyList_Append(result, value) < 0) {
                failed = 1;
                goto bail;
            }
            Py_CLEAR(value);
        }
        break;
    case cJSON_Object:
        result = PyDict_New();
        for (const cJSON *c = item->child; result != NULL && c != NULL; c = c->next) {
            jr_path_key(child_path, path, c->string);
            key = jr_string_to_python(doc, child_path, c->string);
            value = key == NULL ? NULL : jr_to_python(doc, child_path, c);
            if (value == NULL || PyDict_SetItem(result, key, value) < 0) {
                failed = 1;
                goto bail;
            }
            Py_CLEAR(key);
            Py_CLEAR(value);
        }
        break;
    default:
        jr_fail(doc, path, kTypeError, "a JSON value", jr_type_name(item));
        break;
    }
bail:
    Py_LeaveRecursiveCall();
    Py_XDECREF(key);
    Py_XDECREF(value);
    if (failed) Py_CLEAR(result);
    return result;
}
