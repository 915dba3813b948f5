// Names the calling thread, so that /proc/<pid>/task/*/comm (the local mode's per-thread CPU rows, top -H) tells the
// addons' threads from V8's and libuv's other threads, which Node 20 leaves all named "node". Linux only; a no-op
// elsewhere. Names are cut to 15 characters. A libuv pool thread keeps the name of the last addon work it ran.
#pragma once

#if defined(__linux__)
#include <pthread.h>
#endif

namespace switchyard {

inline void name_this_thread(const char* name) {
#if defined(__linux__)
  char buf[16];
  int i = 0;
  for (; i < 15 && name[i]; ++i) buf[i] = name[i];
  buf[i] = '\0';
  pthread_setname_np(pthread_self(), buf);
#else
  (void)name;
#endif
}

}  // namespace switchyard
