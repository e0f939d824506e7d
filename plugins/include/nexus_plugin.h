/*
 * The Nexus plugin ABI, version 1: what a WebAssembly plugin exports and what the host
 * gives it (docs/plugins.md). A core WebAssembly module (wasm32); no libc needed.
 *
 * The plugin exports:
 *   memory                                 its linear memory
 *   void *nexus_alloc(int len)             len bytes the host writes the arguments into
 *   int nexus_call(const char *args, int len)
 *                                          runs the tool on the arguments (a JSON object,
 *                                          UTF-8); 0 when it succeeded, with its output given
 *                                          to nexus_output (JSON); anything else is a failure,
 *                                          with its message given to nexus_output
 *
 * The host gives (module "nexus"):
 *   nexus_output(ptr, len)                 the call's output (or failure message)
 *   nexus_log(ptr, len)                    a progress message (streamed to the caller)
 *   nexus_now_ms()                         milliseconds since the Unix epoch: clock grant
 *   nexus_call_tool(name, len, args, len)  calls another tool as the plugin's caller (its
 *                                          permissions, schema checks, audit): the tools
 *                                          grant, or http for http.request alone. Returns the
 *                                          output's length n >= 0, or -(m + 1) for a failure
 *                                          whose message is m bytes; either is then copied
 *                                          out with nexus_take_result(dst)
 *   nexus_take_result(dst)                 copies the last call's output or message to dst
 *
 * Nothing else: no files, no sockets, no clock without the grant. A WASI import links but
 * is refused when called, and the call ends with PERMISSION_DENIED naming what was tried.
 */
#ifndef NEXUS_PLUGIN_H
#define NEXUS_PLUGIN_H

#define NEXUS_ABI_VERSION 1

#define NEXUS_IMPORT(name) __attribute__((import_module("nexus"), import_name(name)))
#define NEXUS_EXPORT(name) __attribute__((export_name(name)))

NEXUS_IMPORT("output") void nexus_output(const char *ptr, int len);
NEXUS_IMPORT("log") void nexus_log(const char *ptr, int len);
NEXUS_IMPORT("now_ms") long long nexus_now_ms(void);
NEXUS_IMPORT("call") int nexus_call_tool(const char *name, int name_len, const char *args, int args_len);
NEXUS_IMPORT("take_result") void nexus_take_result(char *dst);

/* A bump allocator over the module's heap, and the few C library functions a compiler may
 * call by itself. Define NEXUS_PLUGIN_IMPLEMENTATION in one file before including. */
void *nexus_alloc(int len);

#ifdef NEXUS_PLUGIN_IMPLEMENTATION
extern unsigned char __heap_base;
static unsigned long nexus_heap_top = 0;

NEXUS_EXPORT("nexus_alloc") void *nexus_alloc(int len) {
  if (nexus_heap_top == 0) nexus_heap_top = (unsigned long)&__heap_base;
  unsigned long at = (nexus_heap_top + 7) & ~7UL;
  unsigned long end = at + (unsigned long)len;
  unsigned long have = __builtin_wasm_memory_size(0) * 65536UL;
  if (end > have) {
    unsigned long pages = (end - have + 65535) / 65536;
    if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
  }
  nexus_heap_top = end;
  return (void *)at;
}

void *memcpy(void *dst, const void *src, unsigned long n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, unsigned long n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}
#endif

#endif
