/* The load generator's TLS client: see loadgen_tls.h. */
#include "loadgen_tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *client_ctx;

static void last_error(char *why, size_t cap, const char *fallback) {
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, why, cap);
    else snprintf(why, cap, "%s", fallback);
    /* SSL_get_error() reads the thread's error queue: it must be empty
     * before the next call on any connection. */
    ERR_clear_error();
}

int tls_client_init(char *why, size_t cap) {
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (!client_ctx) {
        last_error(why, cap, "SSL_CTX_new failed");
        return -1;
    }
    SSL_CTX_set_min_proto_version(client_ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    /* A full handshake per connection: nothing is resumed. */
    SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_OFF);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* A server that closes without close_notify reads as EOF, as in plain mode. */
    SSL_CTX_set_options(client_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    /* Writes of part of a buffer, retried from a moved pointer, as the
     * plain-socket path does with send(). */
    SSL_CTX_set_mode(client_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return 0;
}

SSL *tls_attach(int fd, char *why, size_t cap) {
    SSL *ssl = SSL_new(client_ctx);
    if (!ssl) {
        last_error(why, cap, "SSL_new failed");
        return NULL;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        last_error(why, cap, "SSL_set_fd failed");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

/* Why an SSL_* call returned r <= 0. */
static enum tls_status classify(SSL *ssl, int r, char *why, size_t cap) {
    int saved_errno = errno;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return TLS_EOF;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() != 0) break; /* OpenSSL queued the reason */
        if (saved_errno == 0) return TLS_EOF; /* EOF before close_notify (older OpenSSL) */
        snprintf(why, cap, "%s", strerror(saved_errno));
        return TLS_ERROR;
    default:
        break;
    }
    last_error(why, cap, "TLS error");
    return TLS_ERROR;
}

enum tls_status tls_handshake(SSL *ssl, char *why, size_t cap) {
    errno = 0;
    int r = SSL_do_handshake(ssl);
    return r == 1 ? TLS_OK : classify(ssl, r, why, cap);
}

ssize_t tls_write(SSL *ssl, const char *buf, size_t len, enum tls_status *status, char *why, size_t cap) {
    errno = 0;
    int r = SSL_write(ssl, buf, (int)len);
    if (r > 0) return r;
    *status = classify(ssl, r, why, cap);
    return -1;
}

ssize_t tls_read(SSL *ssl, char *buf, size_t cap_buf, enum tls_status *status, char *why, size_t cap) {
    errno = 0;
    int r = SSL_read(ssl, buf, (int)cap_buf);
    if (r > 0) return r;
    *status = classify(ssl, r, why, cap);
    return -1;
}

void tls_close_notify(SSL *ssl) {
    /* One try: the alert fits any socket buffer, and the reply does not matter. */
    if (SSL_shutdown(ssl) < 0) ERR_clear_error();
}

void tls_free(SSL *ssl) { SSL_free(ssl); }

const char *tls_version_name(SSL *ssl) { return SSL_get_version(ssl); }

const char *tls_cipher_name(SSL *ssl) { return SSL_get_cipher_name(ssl); }
