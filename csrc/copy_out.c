/* The pass over every touched storage after the pickle is materialised, several threads at once
 * (GIL released). A copying read (read_checkpoint(copy=True)) gives each storage a place in one
 * anonymous arena and copies its bytes there, computing each chunk's CRC-32 from the freshly
 * written (cache-hot) copy instead of in a second pass over the file; a zero-copy read only
 * checks the CRC-32s. One arena instead of one allocation per storage: a single mmap (NumPy's
 * allocator would take and give back every large storage separately), storages packed in file
 * order, and one object for all tensors to keep alive. */
#include "nnunet_export.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CPY_ALIGN 64u          /* storage start alignment (what torch's CPU allocator gives) */
#define CPY_CHUNK (256u << 10) /* copy then CRC this much at a time: stays in L2 in between */
#define CPY_MAX_THREADS 64

static const char kCpyTooLargeError[] = "checkpoint '%U': storages do not fit in the address space";

typedef struct cpy_job {
    nx_zip_entry *entry; /* borrowed from the plan's nx_zip */
    uint64_t dst;        /* offset in the arena */
    uint32_t crc;        /* computed over the copy, when verifying */
} cpy_job;

/* Shared by the workers of one nx_copy_plan_run; jobs are taken largest first. */
typedef struct {
    const nx_mapping *map; /* borrowed: the file mapping */
    uint8_t *arena;        /* borrowed: first byte of the arena; NULL: only check CRC-32s */
    cpy_job **order;       /* borrowed: jobs, largest first */
    size_t count;
    atomic_size_t next;    /* index of the next job to take */
    int verify_crc;
    uintptr_t page;        /* page size, for MADV_DONTNEED */
} cpy_work;

void nx_copy_plan_free(nx_copy_plan *plan)
{
    Py_CLEAR(plan->arena);
    PyMem_Free(plan->jobs);
    plan->jobs = NULL;
    plan->count = plan->capacity = 0;
    plan->used = 0;
}

uint8_t *nx_copy_plan_add(nx_state *st, nx_copy_plan *plan, const nx_mapping *map, nx_zip_entry *e)
{
    uint64_t at = 0;
    uint8_t *where = map->base + e->data_offset;
    if (plan->copy) {
        if (plan->arena == NULL) {
            /* The storages of one file never need more than the file's size, plus alignment. */
            uint64_t padding = 0, reserve = 0;
            if (__builtin_mul_overflow((uint64_t)CPY_ALIGN, (uint64_t)plan->max_entries + 1, &padding) ||
                __builtin_add_overflow(map->size, padding, &reserve) ||
                reserve > (uint64_t)PY_SSIZE_T_MAX) {
                PyErr_Format(st->CheckpointError, kCpyTooLargeError, map->path);
                return NULL;
            }
            plan->arena = nx_mapping_anonymous(st, map->path, reserve);
            if (plan->arena == NULL) {
                return NULL;
            }
        }
        nx_mapping *arena = (nx_mapping *)plan->arena;
        at = (plan->used + CPY_ALIGN - 1) & ~(uint64_t)(CPY_ALIGN - 1);
        if (at > arena->size || e->size > arena->size - at) {
            PyErr_Format(st->CheckpointError, kCpyTooLargeError, map->path);
            return NULL;
        }
        where = arena->base + at;
    }
    if (plan->count == plan->capacity) {
        size_t capacity = plan->capacity ? plan->capacity * 2 : 256;
        cpy_job *grown = PyMem_Realloc(plan->jobs, capacity * sizeof *grown);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        plan->jobs = grown;
        plan->capacity = capacity;
    }
    plan->jobs[plan->count++] = (cpy_job){e, at, 0};
    if (plan->copy) {
        plan->used = at + e->size;
    }
    return where;
}

static void *cpy_worker(void *arg)
{
    cpy_work *w = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&w->next, 1);
        if (i >= w->count) {
            return NULL;
        }
        cpy_job *job = w->order[i];
        const uint8_t *src = w->map->base + job->entry->data_offset;
        uint64_t size = job->entry->size;
        if (w->arena == NULL) {
            job->crc = nx_crc32(0, src, size);
            continue;
        }
        uint8_t *dst = w->arena + job->dst;
        uint32_t crc = 0;
#ifdef MADV_POPULATE_WRITE
        /* Fault the destination in with one call (Linux >= 5.14; advice only): about a quarter
         * less time than taking the page faults one by one inside memcpy. */
        uintptr_t lo = (uintptr_t)dst & ~(w->page - 1);
        (void)madvise((void *)lo, (size_t)((uintptr_t)dst + size - lo), MADV_POPULATE_WRITE);
#endif
        for (uint64_t off = 0; off < size; off += CPY_CHUNK) {
            size_t n = size - off < CPY_CHUNK ? (size_t)(size - off) : CPY_CHUNK;
            memcpy(dst + off, src + off, n);
            if (w->verify_crc) {
                crc = nx_crc32(crc, dst + off, n);
            }
        }
        job->crc = crc;
        /* Give the file pages back: only pages wholly inside this entry, whose neighbours may
         * still be copied by the other threads. Advice only. */
        uintptr_t first = ((uintptr_t)src + w->page - 1) & ~(w->page - 1);
        uintptr_t last = ((uintptr_t)src + (uintptr_t)size) & ~(w->page - 1);
        if (last > first) {
            (void)madvise((void *)first, (size_t)(last - first), MADV_DONTNEED);
        }
    }
}

static int cpy_larger_first(const void *a, const void *b)
{
    uint64_t sa = (*(cpy_job *const *)a)->entry->size, sb = (*(cpy_job *const *)b)->entry->size;
    return sa < sb ? 1 : sa > sb ? -1 : 0;
}

int nx_copy_plan_run(nx_state *st, nx_copy_plan *plan, const nx_mapping *map, int verify_crc, int threads)
{
    cpy_job **order = NULL;
    pthread_t workers[CPY_MAX_THREADS];
    int started = 0, result = -1;

    if (plan->count == 0) {
        return 0;
    }
    order = PyMem_Malloc(plan->count * sizeof *order);
    if (order == NULL) {
        PyErr_NoMemory();
        goto bail;
    }
    for (size_t i = 0; i < plan->count; i++) {
        order[i] = &plan->jobs[i];
    }
    /* Largest first keeps the threads' shares even without splitting a storage's CRC. */
    qsort(order, plan->count, sizeof *order, cpy_larger_first);
    cpy_work work = {map, plan->copy ? ((nx_mapping *)plan->arena)->base : NULL, order, plan->count, 0,
                     verify_crc, (uintptr_t)sysconf(_SC_PAGESIZE)};
    if (threads > CPY_MAX_THREADS) {
        threads = CPY_MAX_THREADS;
    }
    if ((size_t)threads > plan->count) {
        threads = (int)plan->count;
    }
    Py_BEGIN_ALLOW_THREADS
    /* A thread that cannot be started only means fewer helpers: this thread works too. */
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&workers[started], NULL, cpy_worker, &work) == 0) {
            started++;
        }
    }
    cpy_worker(&work);
    for (int i = 0; i < started; i++) {
        pthread_join(workers[i], NULL);
    }
    Py_END_ALLOW_THREADS
    /* Report the first corrupt entry in file order, whichever thread found it. */
    nx_zip_entry *bad = NULL;
    uint32_t bad_crc = 0;
    for (size_t i = 0; verify_crc && i < plan->count; i++) {
        nx_zip_entry *e = plan->jobs[i].entry;
        if (plan->jobs[i].crc != e->crc && (bad == NULL || e->data_offset < bad->data_offset)) {
            bad = e;
            bad_crc = plan->jobs[i].crc;
        }
    }
    if (bad != NULL) {
        nx_zip_crc_error(st, map, bad, bad_crc);
        goto bail;
    }
    for (size_t i = 0; verify_crc && i < plan->count; i++) {
        plan->jobs[i].entry->crc_checked = 1;
    }
    if (plan->copy) {
        nx_mapping_trim((nx_mapping *)plan->arena, plan->used);
    }
    result = 0;
bail:
    PyMem_Free(order);
    return result;
}
