/* CRC-32 (the ZIP polynomial) of checkpoint payloads, through the system libdeflate, whose
 * crc32 uses the CPU's carry-less multiply instructions where available. zlib's table-driven
 * crc32 (~2.5 GB/s here) made CRC checking dominate read_checkpoint; libdeflate's is limited by
 * memory bandwidth instead. */
#include "nnunet_export.h"

#include <libdeflate.h>

uint32_t nx_crc32(uint32_t crc, const uint8_t *p, uint64_t len)
{
    /* size_t is 64-bit on every platform the reader maps files on; the loop keeps 32-bit
     * builds correct for > 4 GiB payloads all the same. */
    while (len > 0) {
        size_t chunk = len > (uint64_t)(SIZE_MAX / 2) ? SIZE_MAX / 2 : (size_t)len;
        crc = libdeflate_crc32(crc, p, chunk);
        p += chunk;
        len -= chunk;
    }
    return crc;
}

static PyObject *py_crc32(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned int start = 0;
    uint32_t crc;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*|I:_crc32", &view, &start)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    crc = nx_crc32(start, view.buf, (uint64_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef crc_methods[] = {
    {"_crc32", py_crc32, METH_VARARGS,
     "_crc32(data, value=0) -> int: CRC-32 like zlib.crc32 (internal, for tests)."},
    {NULL, NULL, 0, NULL},
};

int nx_crc32_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, crc_methods);
}
