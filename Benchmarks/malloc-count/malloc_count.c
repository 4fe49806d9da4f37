// Counts heap allocations of a process, for "allocations per request" in the benchmarks.
//
// Build: cc -O2 -shared -fPIC -o malloc_count.so malloc_count.c -ldl -lpthread
// Use:   LD_PRELOAD=./malloc_count.so MALLOC_COUNT_FILE=/tmp/count cutover run ...
// Every 100 ms a helper thread writes the running total of malloc/calloc/realloc/
// posix_memalign/aligned_alloc/memalign calls to MALLOC_COUNT_FILE; a benchmark reads it
// before and after a load run and divides the difference by the requests served.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong allocations;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

// dlsym itself may call calloc before real_calloc is known: serve it from a static arena.
static char bootstrap[4096];
static size_t bootstrap_used;

static void resolve(void) {
    if (real_malloc) return;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_malloc = dlsym(RTLD_NEXT, "malloc");
}

void *malloc(size_t size) {
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_malloc(size);
}

void *calloc(size_t count, size_t size) {
    if (!real_calloc) {
        size_t bytes = (count * size + 15) & ~(size_t)15;
        if (bootstrap_used + bytes > sizeof bootstrap) return NULL;
        void *pointer = bootstrap + bootstrap_used;
        bootstrap_used += bytes;
        memset(pointer, 0, bytes);
        return pointer;
    }
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_realloc(pointer, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_posix_memalign(out, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_aligned_alloc(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_memalign(alignment, size);
}

void free(void *pointer) {
    static void (*real_free)(void *);
    if ((char *)pointer >= bootstrap && (char *)pointer < bootstrap + sizeof bootstrap) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(pointer);
}

static void *reporter(void *argument) {
    const char *path = argument;
    char temporary[4096];
    snprintf(temporary, sizeof temporary, "%s.tmp", path);
    for (;;) {
        FILE *file = fopen(temporary, "w");
        if (file) {
            fprintf(file, "%lu\n", atomic_load(&allocations));
            fclose(file);
            rename(temporary, path);
        }
        usleep(100000);
    }
    return NULL;
}

__attribute__((constructor)) static void start_reporter(void) {
    resolve();
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path) return;
    pthread_t thread;
    pthread_create(&thread, NULL, reporter, strdup(path));
    pthread_detach(thread);
}
