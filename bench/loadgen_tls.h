/*
 * The load generator's TLS client (OpenSSL), kept apart so that loadgen.c
 * sees four non-blocking calls and never OpenSSL's error model.
 *
 * Every call works on a non-blocking socket and never blocks: when OpenSSL
 * needs the socket to become readable or writable first, the call says so
 * (TLS_WANT_READ / TLS_WANT_WRITE) and is to be repeated, with the same
 * arguments, once epoll reports it.  A failure fills `why` with one line.
 */
#ifndef LOADGEN_TLS_H
#define LOADGEN_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct ssl_st SSL;

enum tls_status { TLS_OK, TLS_WANT_READ, TLS_WANT_WRITE, TLS_EOF, TLS_ERROR };

/* The one client context: no certificate verification (the bench's server
 * certificate is self-signed and made at run time), no SNI, and no session
 * cache, so every connection pays a full handshake.  0, or -1 and why. */
int tls_client_init(char *why, size_t cap);

/* A client-side TLS session on a connected socket; NULL and why on failure. */
SSL *tls_attach(int fd, char *why, size_t cap);

enum tls_status tls_handshake(SSL *ssl, char *why, size_t cap);

/* Bytes moved (> 0), or -1 with *status saying to wait, or that the peer
 * closed (TLS_EOF, with or without close_notify), or an error (why). */
ssize_t tls_write(SSL *ssl, const char *buf, size_t len, enum tls_status *status, char *why, size_t cap);
ssize_t tls_read(SSL *ssl, char *buf, size_t cap_buf, enum tls_status *status, char *why, size_t cap);

/* Sends close_notify (once, without waiting for the server's), as a polite
 * client does before it closes. */
void tls_close_notify(SSL *ssl);

void tls_free(SSL *ssl);

/* What the handshake agreed, e.g. "TLSv1.3" and "TLS_AES_256_GCM_SHA384". */
const char *tls_version_name(SSL *ssl);
const char *tls_cipher_name(SSL *ssl);

#endif
