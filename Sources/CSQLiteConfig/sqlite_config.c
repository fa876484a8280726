#include "sqlite_config.h"
#include <sqlite3.h>

int chatlog_sqlite_enable_defensive(void *connection) {
    int enabled = 0;
    if (sqlite3_db_config((sqlite3 *)connection, SQLITE_DBCONFIG_DEFENSIVE, 1, &enabled) != SQLITE_OK) return -1;
    return enabled;
}
