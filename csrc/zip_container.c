/* ZIP container of torch.save files, parsed from the central directory (authoritative) with every
 * offset and size checked against the file before use. Only what torch.save writes is accepted:
 * STORED entries in one archive folder, ZIP64 records when present, one disk. */
#include "nnunet_export.h"

#include <string.h>

#define ZIPR_EOCD_SIG 0x06054b50u
#define ZIPR_EOCD_SIZE 22u
#define ZIPR_LOC64_SIG 0x07064b50u
#define ZIPR_LOC64_SIZE 20u
#define ZIPR_EOCD64_SIG 0x06064b50u
#define ZIPR_EOCD64_SIZE 56u
#define ZIPR_CENTRAL_SIG 0x02014b50u
#define ZIPR_CENTRAL_SIZE 46u
#define ZIPR_LOCAL_SIG 0x04034b50u
#define ZIPR_LOCAL_SIZE 30u
#define ZIPR_MAX_COMMENT 65535u

static const char kZipLegacyError[] =
    "checkpoint '%U': legacy (pre-zip, torch < 1.6) torch.save format; re-save it with a recent "
    "torch to read it here";
static const char kZipNoEocdError[] =
    "checkpoint '%U': not a ZIP archive (no end-of-central-directory record in the last %llu "
    "bytes); torch.save files are ZIP archives";
static const char kZipRecordError[] = "checkpoint '%U': %s at byte %llu";
static const char kZipEntryError[] = "checkpoint '%U': entry '%s' (central record at byte %llu): %s";
static const char kZipCompressedError[] =
    "checkpoint '%U': entry '%s' is compressed (method %u); torch.save writes STORED entries only";
static const char kZipDuplicateError[] = "checkpoint '%U': duplicate entry name '%s'";
static const char kZipOverlapError[] =
    "checkpoint '%U': entries '%s' (bytes %llu-%llu) and '%s' (from byte %llu) overlap";
static const char kZipFolderError[] =
    "checkpoint '%U': entry '%s' is outside the archive folder '%s'; torch.save puts every "
    "entry under one folder";
static const char kZipCrcError[] =
    "checkpoint '%U': entry '%s' (payload at byte %llu, %llu bytes) fails its CRC32 check "
    "(stored 0x%08x, computed 0x%08x): the file is corrupt";
/* Reasons, after "at byte N" or the entry name */
static const char kZipEocd64MissingWhy[] =
    "ZIP64 end-of-central-directory record missing or out of place";
static const char kZipMultiDiskWhy[] = "multi-disk ZIP archives are not supported";
static const char kZipMultiDisk64Why[] = "multi-disk ZIP64 archives are not supported";
static const char kZipDirectoryOutsideWhy[] = "central directory lies outside the file";
static const char kZipEntryCountWhy[] = "central directory entry count does not fit its size";
static const char kZipLocalMissingWhy[] = "local header missing or outside the archive data";
static const char kZipLocalMismatchWhy[] = "local header does not match the central directory";
static const char kZipLocalFieldsWhy[] = "local header CRC or size differs from the central directory";
static const char kZipPayloadOverrunWhy[] = "payload runs into the next entry or past the archive data";
static const char kZipCentralTruncatedWhy[] = "central directory record missing or truncated";
static const char kZipCentralNameWhy[] = "central directory record name or extra field truncated";
static const char kZipZip64ExtraWhy[] = "malformed ZIP64 extra field";
static const char kZipEncryptedWhy[] = "encrypted entries are not supported";
static const char kZipSizesWhy[] = "stored entry with different compressed and uncompressed sizes";
static const char kZipPayloadPastWhy[] = "payload extends past the archive data";

/* True when [off, off+len) lies inside [0, limit); overflow-safe. */
static int zipr_inside(uint64_t off, uint64_t len, uint64_t limit)
{
    return off <= limit && len <= limit - off;
}

/* Printable, NUL-terminated copy of an entry name for messages (truncated, '?' for odd bytes). */
static void zipr_name(char *out, size_t cap, const char *name, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[n] = '\0';
}

static int zipr_record_error(nx_state *st, const nx_mapping *map, const char *what, uint64_t at)
{
    PyErr_Format(st->CheckpointError, kZipRecordError, map->path, what, (unsigned long long)at);
    return -1;
}

static int zipr_entry_error(nx_state *st, const nx_mapping *map, const char *name, size_t len,
                            uint64_t at, const char *what)
{
    char printable[256];
    zipr_name(printable, sizeof printable, name, len);
    PyErr_Format(st->CheckpointError, kZipEntryError, map->path, printable, (unsigned long long)at,
                 what);
    return -1;
}

static int zipr_cmp_name(const void *a, const void *b)
{
    const nx_zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0) {
        return c;
    }
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int zipr_cmp_offset(const void *a, const void *b)
{
    const nx_zip_entry *x = *(const nx_zip_entry *const *)a, *y = *(const nx_zip_entry *const *)b;
    return (x->header_offset > y->header_offset) - (x->header_offset < y->header_offset);
}

/* Locates the central directory (offset, size, count) from the (ZIP64) end records.
 * The EOCD search is bounded by the maximum comment length. Returns 0 or -1 with an error. */
static int zipr_find_directory(nx_state *st, const nx_mapping *map, uint64_t *cd_off,
                               uint64_t *cd_size, uint64_t *count)
{
    const uint8_t *b = map->base;
    uint64_t size = map->size;
    uint64_t eocd = UINT64_MAX;

    if (size >= 2 && b[0] == 0x80 && b[1] == 0x02) {
        PyErr_Format(st->CheckpointError, kZipLegacyError, map->path);
        return -1;
    }
    if (size >= ZIPR_EOCD_SIZE) {
        uint64_t lowest = size - ZIPR_EOCD_SIZE > ZIPR_MAX_COMMENT ? size - ZIPR_EOCD_SIZE - ZIPR_MAX_COMMENT : 0;
        for (uint64_t pos = size - ZIPR_EOCD_SIZE + 1; pos-- > lowest;) {
            /* the comment must end exactly at the end of the file */
            if (nx_le32(b + pos) == ZIPR_EOCD_SIG &&
                pos + ZIPR_EOCD_SIZE + nx_le16(b + pos + 20) == size) {
                eocd = pos;
                break;
            }
        }
    }
    if (eocd == UINT64_MAX) {
        PyErr_Format(st->CheckpointError, kZipNoEocdError, map->path,
                     (unsigned long long)(ZIPR_EOCD_SIZE + ZIPR_MAX_COMMENT));
        return -1;
    }
    const uint8_t *e = b + eocd;
    if (nx_le16(e + 4) != 0 || nx_le16(e + 6) != 0 || nx_le16(e + 8) != nx_le16(e + 10)) {
        return zipr_record_error(st, map, kZipMultiDiskWhy, eocd);
    }
    *count = nx_le16(e + 10);
    *cd_size = nx_le32(e + 12);
    *cd_off = nx_le32(e + 16);
    if (eocd >= ZIPR_LOC64_SIZE && nx_le32(b + eocd - ZIPR_LOC64_SIZE) == ZIPR_LOC64_SIG) {
        const uint8_t *loc = b + eocd - ZIPR_LOC64_SIZE;
        uint64_t off64 = nx_le64(loc + 8);
        if (nx_le32(loc + 4) != 0 || nx_le32(loc + 16) > 1) {
            return zipr_record_error(st, map, kZipMultiDisk64Why,
                                     eocd - ZIPR_LOC64_SIZE);
        }
        if (!zipr_inside(off64, ZIPR_EOCD64_SIZE, eocd - ZIPR_LOC64_SIZE) ||
            nx_le32(b + off64) != ZIPR_EOCD64_SIG) {
            return zipr_record_error(st, map, kZipEocd64MissingWhy, eocd - ZIPR_LOC64_SIZE);
        }
        const uint8_t *e64 = b + off64;
        if (nx_le32(e64 + 16) != 0 || nx_le32(e64 + 20) != 0 ||
            nx_le64(e64 + 24) != nx_le64(e64 + 32)) {
            return zipr_record_error(st, map, kZipMultiDisk64Why, off64);
        }
        *count = nx_le64(e64 + 32);
        *cd_size = nx_le64(e64 + 40);
        *cd_off = nx_le64(e64 + 48);
        eocd = off64; /* the directory must end before the ZIP64 record */
    }
    if (!zipr_inside(*cd_off, *cd_size, eocd)) {
        return zipr_record_error(st, map, kZipDirectoryOutsideWhy, eocd);
    }
    /* Bound the allocation by what the directory bytes can hold. */
    if (*count == 0 || *count > *cd_size / ZIPR_CENTRAL_SIZE) {
        return zipr_record_error(st, map, kZipEntryCountWhy,
                                 eocd);
    }
    return 0;
}

/* Reads ZIP64 extended sizes for fields saturated at 0xFFFFFFFF. Returns 0 or -1 (no error set). */
static int zipr_zip64_extra(const uint8_t *x, uint32_t xlen, uint64_t *usize, uint64_t *csize,
                            uint64_t *lho)
{
    uint32_t pos = 0;
    while (pos + 4 <= xlen) {
        uint16_t id = nx_le16(x + pos), len = nx_le16(x + pos + 2);
        if (pos + 4 + (uint32_t)len > xlen) {
            return -1;
        }
        if (id == 0x0001) {
            const uint8_t *f = x + pos + 4;
            uint32_t used = 0;
            uint64_t *fields[3] = {usize, csize, lho};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] == 0xFFFFFFFFu) {
                    if (used + 8 > len) {
                        return -1;
                    }
                    *fields[i] = nx_le64(f + used);
                    used += 8;
                }
            }
            return 0;
        }
        pos += 4 + (uint32_t)len;
    }
    return (*usize == 0xFFFFFFFFu || *csize == 0xFFFFFFFFu || *lho == 0xFFFFFFFFu) ? -1 : 0;
}

/* Checks one entry's local header against its central record and fills data_offset. */
static int zipr_check_local(nx_state *st, const nx_mapping *map, nx_zip_entry *e)
{
    const uint8_t *b = map->base;
    uint64_t central_at = e->central_at, cd_off = e->limit;
    if (!zipr_inside(e->header_offset, ZIPR_LOCAL_SIZE, cd_off) ||
        nx_le32(b + e->header_offset) != ZIPR_LOCAL_SIG) {
        return zipr_entry_error(st, map, e->name, e->name_len, central_at,
                                kZipLocalMissingWhy);
    }
    const uint8_t *l = b + e->header_offset;
    uint16_t flags = nx_le16(l + 6);
    uint64_t nlen = nx_le16(l + 26), xlen = nx_le16(l + 28);
    if (nx_le16(l + 8) != 0 || nlen != e->name_len ||
        !zipr_inside(e->header_offset + ZIPR_LOCAL_SIZE, nlen + xlen, cd_off) ||
        memcmp(l + ZIPR_LOCAL_SIZE, e->name, e->name_len) != 0) {
        return zipr_entry_error(st, map, e->name, e->name_len, central_at,
                                kZipLocalMismatchWhy);
    }
    /* Without a data descriptor (bit 3) the local header carries the real CRC and sizes. */
    if (!(flags & 0x0008u)) {
        uint32_t lsize = nx_le32(l + 22);
        if (nx_le32(l + 14) != e->crc || (lsize != 0xFFFFFFFFu && lsize != e->size)) {
            return zipr_entry_error(st, map, e->name, e->name_len, central_at,
                                    kZipLocalFieldsWhy);
        }
    }
    e->data_offset = e->header_offset + ZIPR_LOCAL_SIZE + nlen + xlen;
    if (!zipr_inside(e->data_offset, e->size, cd_off)) {
        return zipr_entry_error(st, map, e->name, e->name_len, central_at,
                                kZipPayloadOverrunWhy);
    }
    return 0;
}

/* Fills entries[0..count) from the central directory records at [cd_off, cd_off + cd_size):
 * names, sizes, CRCs and local header offsets, checked to be STORED, unencrypted and inside the
 * directory. Returns 0, or -1 with CheckpointError set. */
static int zipr_read_central(nx_state *st, const nx_mapping *map, uint64_t cd_off, uint64_t cd_size,
                             uint64_t count, nx_zip_entry *entries)
{
    uint64_t pos = cd_off, end = cd_off + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *c = map->base + pos;
        if (!zipr_inside(pos, ZIPR_CENTRAL_SIZE, end) || nx_le32(c) != ZIPR_CENTRAL_SIG) {
            return zipr_record_error(st, map, kZipCentralTruncatedWhy, pos);
        }
        uint16_t flags = nx_le16(c + 8), method = nx_le16(c + 10);
        uint64_t nlen = nx_le16(c + 28), xlen = nx_le16(c + 30), clen = nx_le16(c + 32);
        uint64_t csize = nx_le32(c + 20), usize = nx_le32(c + 24), lho = nx_le32(c + 42);
        if (!zipr_inside(pos + ZIPR_CENTRAL_SIZE, nlen + xlen + clen, end) || nlen == 0) {
            return zipr_record_error(st, map, kZipCentralNameWhy, pos);
        }
        nx_zip_entry *e = &entries[i];
        e->name = (const char *)c + ZIPR_CENTRAL_SIZE;
        e->name_len = (size_t)nlen;
        e->crc = nx_le32(c + 16);
        if (zipr_zip64_extra(c + ZIPR_CENTRAL_SIZE + nlen, (uint32_t)xlen, &usize, &csize, &lho) < 0) {
            return zipr_entry_error(st, map, e->name, e->name_len, pos, kZipZip64ExtraWhy);
        }
        if (method != 0) {
            char printable[256];
            zipr_name(printable, sizeof printable, e->name, e->name_len);
            PyErr_Format(st->CheckpointError, kZipCompressedError, map->path, printable,
                         (unsigned)method);
            return -1;
        }
        if (flags & 0x0001u) {
            return zipr_entry_error(st, map, e->name, e->name_len, pos, kZipEncryptedWhy);
        }
        if (csize != usize) {
            return zipr_entry_error(st, map, e->name, e->name_len, pos,
                                    kZipSizesWhy);
        }
        e->size = usize;
        e->header_offset = lho;
        e->central_at = pos;
        pos += ZIPR_CENTRAL_SIZE + nlen + xlen + clen;
    }
    return 0;
}

/* Every entry must live in the folder named by the first one ("archive/..."); sets *prefix_len
 * to the folder name's length. Returns 0, or -1 with CheckpointError set. */
static int zipr_check_folder(nx_state *st, const nx_mapping *map, const nx_zip_entry *entries,
                             uint64_t count, size_t *prefix_len)
{
    const char *slash = memchr(entries[0].name, '/', entries[0].name_len);
    *prefix_len = slash == NULL ? 0 : (size_t)(slash - entries[0].name);
    for (uint64_t i = 0; i < count; i++) {
        const nx_zip_entry *e = &entries[i];
        if (slash == NULL || e->name_len <= *prefix_len + 1 || e->name[*prefix_len] != '/' ||
            memcmp(e->name, entries[0].name, *prefix_len) != 0) {
            char printable[256], folder[256];
            zipr_name(printable, sizeof printable, e->name, e->name_len);
            zipr_name(folder, sizeof folder, entries[0].name, *prefix_len);
            PyErr_Format(st->CheckpointError, kZipFolderError, map->path, printable, folder);
            return -1;
        }
    }
    return 0;
}

/* Overlapping entries would let one payload alias another (or a header): rejects them and sets
 * each entry's `limit`. The smallest extent an entry can have is its local header without extra
 * field plus its payload; opening an entry later checks the real extent against `limit`.
 * `by_offset` is scratch space for `count` pointers. Returns 0, or -1 with CheckpointError set. */
static int zipr_check_overlaps(nx_state *st, const nx_mapping *map, nx_zip_entry *entries,
                               const nx_zip_entry **by_offset, uint64_t count, uint64_t cd_off)
{
    for (uint64_t i = 0; i < count; i++) {
        by_offset[i] = &entries[i];
    }
    qsort(by_offset, (size_t)count, sizeof *by_offset, zipr_cmp_offset);
    for (uint64_t i = 0; i < count; i++) {
        nx_zip_entry *a = (nx_zip_entry *)by_offset[i];
        a->limit = i + 1 < count ? by_offset[i + 1]->header_offset : cd_off;
        if (!zipr_inside(a->header_offset, ZIPR_LOCAL_SIZE, cd_off)) {
            return zipr_entry_error(st, map, a->name, a->name_len, a->central_at,
                                    kZipLocalMissingWhy);
        }
        if (zipr_inside(a->header_offset, ZIPR_LOCAL_SIZE + a->name_len, a->limit) &&
            zipr_inside(a->header_offset + ZIPR_LOCAL_SIZE + a->name_len, a->size, a->limit)) {
            continue;
        }
        if (i + 1 == count) {
            return zipr_entry_error(st, map, a->name, a->name_len, a->central_at,
                                    kZipPayloadPastWhy);
        }
        char na[256], nbn[256];
        const nx_zip_entry *nb = by_offset[i + 1];
        zipr_name(na, sizeof na, a->name, a->name_len);
        zipr_name(nbn, sizeof nbn, nb->name, nb->name_len);
        PyErr_Format(st->CheckpointError, kZipOverlapError, map->path, na,
                     (unsigned long long)a->header_offset,
                     (unsigned long long)(a->header_offset + ZIPR_LOCAL_SIZE + a->name_len + a->size),
                     nbn, (unsigned long long)nb->header_offset);
        return -1;
    }
    return 0;
}

/* Sorts the entries by name (for nx_zip_find) and rejects duplicate names. Returns 0, or -1 with
 * CheckpointError set. */
static int zipr_sort_names(nx_state *st, const nx_mapping *map, nx_zip_entry *entries, uint64_t count)
{
    qsort(entries, (size_t)count, sizeof *entries, zipr_cmp_name);
    for (uint64_t i = 0; i + 1 < count; i++) {
        if (zipr_cmp_name(&entries[i], &entries[i + 1]) == 0) {
            char printable[256];
            zipr_name(printable, sizeof printable, entries[i].name, entries[i].name_len);
            PyErr_Format(st->CheckpointError, kZipDuplicateError, map->path, printable);
            return -1;
        }
    }
    return 0;
}

int nx_zip_open(nx_state *st, const nx_mapping *map, nx_zip *zip)
{
    nx_zip_entry *entries = NULL;
    const nx_zip_entry **by_offset = NULL;
    uint64_t cd_off = 0, cd_size = 0, count = 0;
    size_t prefix_len = 0;
    int rc = -1;

    zip->entries = NULL;
    zip->count = 0;
    zip->prefix_len = 0;
    if (zipr_find_directory(st, map, &cd_off, &cd_size, &count) < 0) {
        goto bail;
    }
    entries = PyMem_Calloc((size_t)count, sizeof *entries);
    by_offset = PyMem_Calloc((size_t)count, sizeof *by_offset);
    if (entries == NULL || by_offset == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    if (zipr_read_central(st, map, cd_off, cd_size, count, entries) < 0 ||
        zipr_check_folder(st, map, entries, count, &prefix_len) < 0 ||
        zipr_check_overlaps(st, map, entries, by_offset, count, cd_off) < 0 ||
        zipr_sort_names(st, map, entries, count) < 0) {
        goto bail;
    }
    zip->entries = entries;
    zip->count = (size_t)count;
    zip->prefix_len = prefix_len;
    entries = NULL;
    rc = 0;
bail:
    PyMem_Free(entries);
    PyMem_Free(by_offset);
    return rc;
}

void nx_zip_close(nx_zip *zip)
{
    PyMem_Free(zip->entries);
    zip->entries = NULL;
    zip->count = 0;
}

nx_zip_entry *nx_zip_find(const nx_zip *zip, const char *suffix, size_t suffix_len)
{
    size_t lo = 0, hi = zip->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        nx_zip_entry *e = &zip->entries[mid];
        /* all names share "<folder>/", so comparing the suffixes orders them like full names */
        const char *s = e->name + zip->prefix_len + 1;
        size_t n = e->name_len - zip->prefix_len - 1;
        size_t m = n < suffix_len ? n : suffix_len;
        int c = memcmp(s, suffix, m);
        if (c == 0) {
            c = (n > suffix_len) - (n < suffix_len);
        }
        if (c == 0) {
            return e;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

void nx_zip_crc_error(nx_state *st, const nx_mapping *map, const nx_zip_entry *e, uint32_t got)
{
    char printable[256];
    zipr_name(printable, sizeof printable, e->name, e->name_len);
    PyErr_Format(st->CheckpointError, kZipCrcError, map->path, printable,
                 (unsigned long long)e->data_offset, (unsigned long long)e->size, (unsigned)e->crc,
                 (unsigned)got);
}

int nx_zip_open_entry(nx_state *st, const nx_mapping *map, nx_zip_entry *e, int verify_crc)
{
    uint32_t crc;
    if (!e->opened) {
        if (zipr_check_local(st, map, e) < 0) {
            return -1;
        }
        e->opened = 1;
    }
    if (!verify_crc || e->crc_checked) {
        return 0;
    }
    /* Pure C over file bytes (page faults included): let other threads run. */
    Py_BEGIN_ALLOW_THREADS
    crc = nx_crc32(0, map->base + e->data_offset, e->size);
    Py_END_ALLOW_THREADS
    if (crc != e->crc) {
        nx_zip_crc_error(st, map, e, crc);
        return -1;
    }
    e->crc_checked = 1;
    return 0;
}
