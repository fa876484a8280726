#ifndef CHATLOG_PROCESS_HYGIENE_H
#define CHATLOG_PROCESS_HYGIENE_H
/// Disables core dumps (RLIMIT_CORE = 0) and, on Linux, marks the process not dumpable
/// (prctl PR_SET_DUMPABLE 0), which also hides /proc/<pid>/environ and mem from other processes
/// of the same user. Returns 0 when both took effect. (prctl is variadic: Swift cannot call it.)
int chatlog_disable_core_dumps(void);
/// Whether the process is currently dumpable (1), not (0), or unknown (-1).
int chatlog_is_dumpable(void);
#endif
