#include "process_hygiene.h"
#include <errno.h>
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

int chatlog_disable_core_dumps(void) {
    struct rlimit none = {0, 0};
    int status = setrlimit(RLIMIT_CORE, &none);
#if defined(__linux__)
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) status = -1;
#endif
    return status;
}

int chatlog_is_dumpable(void) {
#if defined(__linux__)
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
#else
    return -1;
#endif
}

int chatlog_current_thread_id(void) {
#if defined(__linux__)
    return (int)syscall(SYS_gettid);
#else
    return -1;
#endif
}

int chatlog_name_current_thread(const char *name) {
#if defined(__linux__)
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
#else
    (void)name;
    return -1;
#endif
}

int chatlog_set_current_thread_nice(int nice) {
#if defined(__linux__)
    // PRIO_PROCESS with a thread id: Linux applies the nice value to that thread alone. A thread
    // already at that nice value or above (the whole process started niced) is left as it is.
    id_t thread = (id_t)syscall(SYS_gettid);
    errno = 0;
    int current = getpriority(PRIO_PROCESS, thread);
    if (errno == 0 && current >= nice) return 0;
    return setpriority(PRIO_PROCESS, thread, nice);
#else
    (void)nice;
    return -1;
#endif
}

int chatlog_release_free_heap(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

int chatlog_process_nice(void) {
#if defined(__linux__)
    errno = 0;
    int value = getpriority(PRIO_PROCESS, (id_t)getpid());
    return errno == 0 ? value : 0;
#else
    return 0;
#endif
}
