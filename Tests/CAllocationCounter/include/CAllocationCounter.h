#ifndef C_ALLOCATION_COUNTER_H
#define C_ALLOCATION_COUNTER_H
#include <stdint.h>

// Counts heap allocations made by the calling thread while counting is on. The test binary's
// malloc family forwards to glibc's and counts per thread, so a test can measure one thread
// (a proxy loop, or itself) while XCTest and other threads allocate freely.
void cutover_count_allocations(int on);
uint64_t cutover_allocations(void);
// 0 in a sanitizer build, whose runtime owns malloc.
int cutover_allocation_counting_available(void);

#endif
