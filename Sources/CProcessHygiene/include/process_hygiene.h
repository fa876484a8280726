#ifndef CHATLOG_PROCESS_HYGIENE_H
#define CHATLOG_PROCESS_HYGIENE_H
/// Disables core dumps (RLIMIT_CORE = 0) and, on Linux, marks the process not dumpable
/// (prctl PR_SET_DUMPABLE 0), which also hides /proc/<pid>/environ and mem from other processes
/// of the same user. Returns 0 when both took effect. (prctl is variadic: Swift cannot call it.)
int chatlog_disable_core_dumps(void);
/// Whether the process is currently dumpable (1), not (0), or unknown (-1).
int chatlog_is_dumpable(void);
/// The calling thread's kernel id (Linux: gettid, as in /proc/self/task/ID); -1 elsewhere.
int chatlog_current_thread_id(void);
/// Names the calling thread (at most 15 bytes shown, Linux: PR_SET_NAME). 0 on success.
int chatlog_name_current_thread(const char *name);
/// Raises the calling thread's nice value to `nice` (Linux: per thread); a thread already at it or
/// above is left as it is. 0 on success, -1 (errno) otherwise.
int chatlog_set_current_thread_nice(int nice);
/// The nice value of the process's main thread (what `nice` and systemd's Nice= set); 0 if unknown.
int chatlog_process_nice(void);
/// Returns the heap's free pages to the system (glibc malloc_trim(0); elsewhere nothing). 1 when
/// memory was released.
int chatlog_release_free_heap(void);
#endif
