/* Counts malloc, calloc and realloc calls; bench/core_cost.py reads the count through ctypes (mcount()).
 * With PYTHONMALLOC=malloc every Python object allocation goes through malloc, so the count is the
 * interpreter's allocations. Build: gcc -O2 -shared -fPIC -o /tmp/libmcount.so bench/mcount.c -ldl
 * calloc is served from a static buffer while dlsym itself resolves the real calloc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
static unsigned long long n_alloc = 0;
static void *(*real_malloc)(size_t) = 0;
static void *(*real_calloc)(size_t, size_t) = 0;
static void *(*real_realloc)(void *, size_t) = 0;
/* dlsym may call calloc: serve it from a static buffer while resolving. */
static char boot[4096]; static size_t boot_used = 0;
void *malloc(size_t n) { if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc"); __atomic_add_fetch(&n_alloc, 1, __ATOMIC_RELAXED); return real_malloc(n); }
void *calloc(size_t a, size_t b) {
  if (!real_calloc) { static int resolving = 0; if (resolving) { void *p = boot + boot_used; boot_used += (a*b + 15) & ~15UL; return p; } resolving = 1; real_calloc = dlsym(RTLD_NEXT, "calloc"); resolving = 0; }
  __atomic_add_fetch(&n_alloc, 1, __ATOMIC_RELAXED); return real_calloc(a, b); }
void *realloc(void *p, size_t n) { if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc"); __atomic_add_fetch(&n_alloc, 1, __ATOMIC_RELAXED); return real_realloc(p, n); }
unsigned long long mcount(void) { return __atomic_load_n(&n_alloc, __ATOMIC_RELAXED); }
