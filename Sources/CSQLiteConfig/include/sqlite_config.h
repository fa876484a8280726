#ifndef CHATLOG_SQLITE_CONFIG_H
#define CHATLOG_SQLITE_CONFIG_H
/// Turns on SQLite's defensive mode (SQLITE_DBCONFIG_DEFENSIVE) on a connection (a `sqlite3 *`):
/// no writable_schema, no direct writes to virtual tables' shadow tables, no journal_mode=OFF.
/// Returns 1 when the mode is on afterwards, 0 when not, -1 on an SQLite error.
/// (sqlite3_db_config is variadic: Swift cannot call it.)
int chatlog_sqlite_enable_defensive(void *connection);
#endif
