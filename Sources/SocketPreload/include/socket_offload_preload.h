/*
 * socket_offload_preload.h — libsocket-offload-preload.so, loaded with LD_PRELOAD (or through
 * socket-offload-run): it interposes libc's socket calls so that an unmodified program's AF_INET and
 * AF_INET6 stream and datagram sockets are the stack's. It exports libc's names only; see preload.c
 * and the README ("Running unmodified programs").
 *
 * Environment: SOCKET_SERVER_PATH (the server), SOCKET_OFFLOAD_TYPES ("tcp", "udp" or "tcp,udp":
 * which sockets go to the stack; the others stay on the kernel), SOCKET_OFFLOAD_CLIENT_LIBRARY (the
 * client library's path; default: libSocketClientDynamic.so next to this library).
 */
#ifndef SOCKET_OFFLOAD_PRELOAD_H
#define SOCKET_OFFLOAD_PRELOAD_H
#endif
