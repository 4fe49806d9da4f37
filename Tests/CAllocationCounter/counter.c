// Linked into the test executable, these definitions take the place of glibc's malloc family
// for the whole process; each forwards to glibc's own entry point (__libc_*) and adds one to a
// thread-local count while that thread has counting on.
#include "CAllocationCounter.h"
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static __thread int counting;
static __thread uint64_t allocations;

void cutover_count_allocations(int on) { counting = on; }
uint64_t cutover_allocations(void) { return allocations; }

#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define CUTOVER_SANITIZED 1
#endif
#endif

#ifdef CUTOVER_SANITIZED
// Under a sanitizer its runtime owns malloc: nothing is counted (the tests that need the count
// skip themselves).
int cutover_allocation_counting_available(void) { return 0; }
#else
int cutover_allocation_counting_available(void) { return 1; }

void *malloc(size_t size) {
    if (counting) allocations++;
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    if (counting) allocations++;
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    if (counting) allocations++;
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    if (counting) allocations++;
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (counting) allocations++;
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    if (counting) allocations++;
    void *pointer = __libc_memalign(alignment, size);
    if (!pointer) return ENOMEM;
    *out = pointer;
    return 0;
}
#endif
