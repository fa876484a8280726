// Starts, when the test process loads, a thread that calls chatlog_test_heartbeat_tick every
// 250 ms (ChatLogTestSupport/Heartbeat.swift says why). A constructor, because Swift Testing has
// no hook that runs before every suite of every test target.
#define _GNU_SOURCE
#include "CTestHeartbeat.h"

#include <pthread.h>
#include <time.h>

static void *heartbeat(void *unused) {
    (void)unused;
    struct timespec pause = {0, 250 * 1000 * 1000};
    for (;;) {
        nanosleep(&pause, NULL);
        chatlog_test_heartbeat_tick();
    }
    return NULL;
}

__attribute__((constructor)) static void chatlog_test_heartbeat_start(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, heartbeat, NULL) == 0) {
        pthread_setname_np(thread, "chatlog-beat");  // the name a test looks for in /proc/self/task
        pthread_detach(thread);
    }
}
