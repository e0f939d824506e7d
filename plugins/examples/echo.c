/* echo: returns {"echo": ARGS, "bytes": N}, the arguments it was called with and their
 * length, after logging a progress message. The plugin the tests and the benchmark run. */
#define NEXUS_PLUGIN_IMPLEMENTATION
#include "nexus_plugin.h"

static int put(char *out, int at, const char *s) {
  while (*s) out[at++] = *s++;
  return at;
}

static int put_int(char *out, int at, int v) {
  char digits[12];
  int n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  while (n > 0) out[at++] = digits[--n];
  return at;
}

NEXUS_EXPORT("nexus_call") int nexus_call(const char *args, int len) {
  static const char hello[] = "echoing";
  nexus_log(hello, sizeof hello - 1);
  char *out = nexus_alloc(len + 32);
  if (!out) {
    static const char oom[] = "out of memory";
    nexus_output(oom, sizeof oom - 1);
    return 1;
  }
  int at = put(out, 0, "{\"echo\":");
  memcpy(out + at, args, (unsigned long)len);
  at += len;
  at = put(out, at, ",\"bytes\":");
  at = put_int(out, at, len);
  out[at++] = '}';
  nexus_output(out, at);
  return 0;
}
