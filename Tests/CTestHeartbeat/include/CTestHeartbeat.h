#ifndef CTESTHEARTBEAT_H
#define CTESTHEARTBEAT_H

/// Defined in Swift (ChatLogTestSupport, Heartbeat.swift): enqueues one empty task at each
/// priority on Swift's global executor.
void chatlog_test_heartbeat_tick(void);

#endif
