#ifndef CCUTOVER_TLS_H
#define CCUTOVER_TLS_H
// TLS on the system OpenSSL, as cutover uses it: server contexts (one per certificate) behind
// one front context that picks by SNI and answers ALPN, session tickets with rotating keys
// held in memory only, and non-blocking records on a socket. The Swift side (CutoverTLS)
// owns the objects and the policy; this file keeps OpenSSL's macros and callbacks in C.
#include <stddef.h>
#include <stdint.h>

typedef struct ssl_ctx_st ctls_ctx;
typedef struct ssl_st ctls_ssl;
typedef struct ctls_sni ctls_sni;

/// Loads one certificate chain (PEM, leaf first) and its key into a new server context.
/// `min_version`: 12 or 13. `ciphers`: an OpenSSL cipher string for TLS 1.2 (NULL: default).
/// NULL on failure, with the reason in `error`.
ctls_ctx *ctls_server_context(const char *chain_path, const char *key_path, int min_version, const char *ciphers,
                              int session_tickets, long session_cache, char *error, size_t error_size);
void ctls_context_free(ctls_ctx *ctx);

/// The certificate's DNS names (subjectAltName DNS entries, or the subject CN when it has no
/// SAN), separated by '\n', lowercased. Returns the length written (truncated to `size - 1`).
size_t ctls_context_names(ctls_ctx *ctx, char *out, size_t size);
/// The leaf certificate's notAfter / notBefore, in seconds since 1970.
int64_t ctls_context_not_after(ctls_ctx *ctx);
int64_t ctls_context_not_before(ctls_ctx *ctx);

/// The SNI table: exact names and `*.suffix` wildcards (one label), each with its context; an
/// optional default. Installed on `front` (the context connections are created from), whose
/// session cache and ticket keys serve every certificate.
ctls_sni *ctls_sni_new(void);
/// `name`: an exact host name or `*.example.net`. Returns 0, or -1 when out of memory.
int ctls_sni_add(ctls_sni *sni, const char *name, ctls_ctx *ctx);
void ctls_sni_set_default(ctls_sni *sni, ctls_ctx *ctx);
/// Installs SNI selection and ALPN (http/1.1 only) on `front`, which takes the table over: it
/// is freed with the front context's last reference (never call ctls_sni_free on it after).
void ctls_sni_install(ctls_sni *sni, ctls_ctx *front);
/// Which context the table picks for `name` (NULL: none): for tests and `cutover check`.
ctls_ctx *ctls_sni_lookup(ctls_sni *sni, const char *name);
/// Frees a table that was never installed.
void ctls_sni_free(ctls_sni *sni);

/// Session ticket keys: one process-wide set in memory (never on disk), shared by every
/// context so a reload keeps tickets valid. A new encryption key every `rotate_seconds`; keys
/// decrypt for `keep_seconds` after they were made. `now` is seconds on any steady clock; the
/// ticket callback uses CLOCK_MONOTONIC. Returns the number of keys held after the call.
int ctls_ticket_keys_rotate(int64_t now, int64_t rotate_seconds, int64_t keep_seconds);

/// One server connection on a non-blocking socket.
ctls_ssl *ctls_accept(ctls_ctx *front, int fd);
void ctls_free(ctls_ssl *ssl);

enum {
    CTLS_WANT_READ = -2,
    CTLS_WANT_WRITE = -3,
    CTLS_CLOSED = 0,   // close_notify, or the peer's EOF after the handshake
    CTLS_FAILED = -100, // a failure: CTLS_FAILED - reason (a CTLS_FAILURE_ value)
};
/// SSL_read / SSL_write: bytes (> 0), or one of the values above.
int ctls_read(ctls_ssl *ssl, void *buffer, int count);
int ctls_write(ctls_ssl *ssl, const void *buffer, int count);
/// Sends close_notify (once; never waits for the peer's).
void ctls_close_notify(ctls_ssl *ssl);
int ctls_handshake_done(ctls_ssl *ssl);
/// Bytes decrypted and held by OpenSSL, not yet read.
int ctls_pending(ctls_ssl *ssl);

enum {
    CTLS_FAILURE_NONE = 0,
    CTLS_FAILURE_PLAINTEXT_HTTP = 1,  // an HTTP request on the TLS port
    CTLS_FAILURE_BAD_RECORD = 2,      // not TLS, or a corrupt record
    CTLS_FAILURE_VERSION = 3,         // below min_version, or unsupported
    CTLS_FAILURE_NO_SHARED_CIPHER = 4,
    CTLS_FAILURE_NO_ALPN = 5,         // the client offered no protocol we speak (h2 only)
    CTLS_FAILURE_UNKNOWN_NAME = 6,    // SNI matched no certificate and there is no default
    CTLS_FAILURE_PEER_CLOSED = 7,     // EOF or reset in the middle of the handshake
    CTLS_FAILURE_OTHER = 8,
};

/// The negotiated protocol version's name ("TLSv1.3") and cipher's name: static strings,
/// valid for the life of the process (NULL before the handshake).
const char *ctls_version_name(ctls_ssl *ssl);
const char *ctls_cipher_name(ctls_ssl *ssl);
/// 1 when the session was resumed (ticket or cache).
int ctls_session_reused(ctls_ssl *ssl);

/// Writes a new ECDSA P-256 key (mode 0600) and a self-signed
/// certificate for `name` and 127.0.0.1, valid for `days`. 0, or -1 with the reason in `error`.
int ctls_make_self_signed(const char *chain_path, const char *key_path, const char *name, int days, char *error, size_t error_size);

/// A client context for upstream connections: certificates verified against `ca_file` (NULL:
/// not verified, `upstream_tls insecure`), TLS 1.2 or later, ALPN http/1.1.
ctls_ctx *ctls_client_context(const char *ca_file, char *error, size_t error_size);
/// A client connection on a connected non-blocking socket: SNI `server_name` (skipped for an
/// address) and, with verification, the name (or address) the certificate must carry.
ctls_ssl *ctls_connect(ctls_ctx *ctx, int fd, const char *server_name, const char *verify_name);
/// X509_V_OK (0), or why the peer's certificate was refused.
long ctls_verify_result(ctls_ssl *ssl);
/// Why the peer's certificate was refused, in OpenSSL's words (NULL: it was not).
const char *ctls_verify_error(ctls_ssl *ssl);

/// The latest OpenSSL error on this thread as text (and clears the queue).
void ctls_last_error(char *out, size_t size);

#endif
