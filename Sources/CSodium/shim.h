#ifndef CHATLOG_CSODIUM_SHIM_H
#define CHATLOG_CSODIUM_SHIM_H
// The whole of libsodium, as Debian's libsodium-dev installs it. No code here: chatlog's
// Swift side calls the C API directly (see Sources/ChatLog/Crypto/Sodium.swift).
#include <sodium.h>
#endif
