#include "CCutoverTLS.h"
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <ctype.h>

static void set_error(char *error, size_t size, const char *what) {
    if (!error || size == 0) return;
    unsigned long code = ERR_get_error();
    // The innermost reason is the most useful one ("no such file", "key values mismatch").
    unsigned long last = code;
    while (code) { last = code; code = ERR_get_error(); }
    if (last) {
        char reason[256];
        ERR_error_string_n(last, reason, sizeof reason);
        const char *text = ERR_reason_error_string(last);
        snprintf(error, size, "%s: %s", what, text ? text : reason);
    } else {
        snprintf(error, size, "%s", what);
    }
    ERR_clear_error();
}

void ctls_last_error(char *out, size_t size) { set_error(out, size, "OpenSSL"); }

// MARK: Session ticket keys

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t made;
} ticket_key;

#define TICKET_KEYS 4
static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key ticket_keys[TICKET_KEYS];  // newest first
static int ticket_count = 0;
static const int64_t ticket_rotate = 12 * 3600, ticket_keep = 24 * 3600;

static int64_t steady_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec;
}

static int rotate_locked(int64_t now, int64_t rotate_seconds, int64_t keep_seconds) {
    // Forget keys past their keeping time, then make a new one when the newest is due.
    while (ticket_count > 0 && now - ticket_keys[ticket_count - 1].made >= keep_seconds) ticket_count--;
    if (ticket_count == 0 || now - ticket_keys[0].made >= rotate_seconds) {
        ticket_key fresh;
        if (RAND_bytes(fresh.name, sizeof fresh.name) != 1 || RAND_bytes(fresh.aes, sizeof fresh.aes) != 1 ||
            RAND_bytes(fresh.hmac, sizeof fresh.hmac) != 1) {
            return ticket_count;  // no randomness now: keep what there is (tickets are an optimisation)
        }
        fresh.made = now;
        if (ticket_count == TICKET_KEYS) ticket_count--;
        memmove(&ticket_keys[1], &ticket_keys[0], sizeof(ticket_key) * (size_t)ticket_count);
        ticket_keys[0] = fresh;
        ticket_count++;
    }
    return ticket_count;
}

int ctls_ticket_keys_rotate(int64_t now, int64_t rotate_seconds, int64_t keep_seconds) {
    pthread_mutex_lock(&ticket_lock);
    int count = rotate_locked(now, rotate_seconds, keep_seconds);
    pthread_mutex_unlock(&ticket_lock);
    return count;
}

static int ticket_callback(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cipher,
                           EVP_MAC_CTX *mac, int encrypt) {
    (void)ssl;
    pthread_mutex_lock(&ticket_lock);
    rotate_locked(steady_seconds(), ticket_rotate, ticket_keep);
    int result = 0;
    ticket_key key;
    int index = -1;
    if (encrypt) {
        if (ticket_count > 0) index = 0;
    } else {
        for (int i = 0; i < ticket_count; i++) {
            if (memcmp(ticket_keys[i].name, key_name, 16) == 0) { index = i; break; }
        }
    }
    if (index >= 0) key = ticket_keys[index];
    pthread_mutex_unlock(&ticket_lock);
    if (index < 0) return 0;  // encrypt: no ticket this time; decrypt: unknown key, a full handshake follows

    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof key.hmac);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (encrypt) {
        if (RAND_bytes(iv, 16) != 1) return 0;
        memcpy(key_name, key.name, 16);
        if (EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1) return -1;
        result = 1;
    } else {
        if (EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1) return -1;
        result = index == 0 ? 1 : 2;  // 2: valid, but issue a ticket under the current key
    }
    if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
    return result;
}

// MARK: Contexts

static const unsigned char session_id_context[] = "cutover";

static int no_passphrase(char *buffer, int size, int writing, void *data) {
    (void)buffer; (void)size; (void)writing; (void)data;
    return 0;
}

ctls_ctx *ctls_server_context(const char *chain_path, const char *key_path, int min_version, const char *ciphers,
                              int session_tickets, long session_cache, char *error, size_t error_size) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { set_error(error, error_size, "cannot create a TLS context"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    // Writes return after each record (the loop keeps writing), buffers move between calls
    // (the I/O buffers compact), and an idle connection gives its record buffers back.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    if (!session_tickets) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    // TLS 1.3 sends tickets after the handshake; one is enough for a browser tab's connections.
    SSL_CTX_set_num_tickets(ctx, session_tickets ? 1 : 0);
    // Sessions resume only under the certificate and settings they were made with: the
    // context id is a digest of both (a ticket made for one name never resumes under another
    // certificate, nor under a reload's stricter ciphers).
    {
        char material[4096];
        snprintf(material, sizeof material, "cutover|%s|%s|%d|%s", chain_path, key_path, min_version, ciphers ? ciphers : "");
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int length = 0;
        if (EVP_Digest(material, strlen(material), digest, &length, EVP_sha256(), NULL) == 1) {
            SSL_CTX_set_session_id_context(ctx, digest, length > SSL_MAX_SID_CTX_LENGTH ? SSL_MAX_SID_CTX_LENGTH : length);
        } else {
            SSL_CTX_set_session_id_context(ctx, session_id_context, sizeof session_id_context - 1);
        }
    }
    // An encrypted key is refused with an error, never a prompt on the terminal.
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (session_cache > 0) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, session_cache);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_callback);
    if (ciphers && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        set_error(error, error_size, "ciphers: no usable cipher in the list");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, chain_path) != 1) {
        set_error(error, error_size, "cannot load the certificate chain");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
        set_error(error, error_size, "cannot load the private key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_error(error, error_size, "the private key does not match the certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void ctls_context_free(ctls_ctx *ctx) { SSL_CTX_free(ctx); }

static void append_name(char *out, size_t size, size_t *used, const unsigned char *name, int length) {
    if (length <= 0) return;
    if (*used > 0 && *used + 1 < size) out[(*used)++] = '\n';
    for (int i = 0; i < length && *used + 1 < size; i++) out[(*used)++] = (char)tolower(name[i]);
    out[*used] = 0;
}

size_t ctls_context_names(ctls_ctx *ctx, char *out, size_t size) {
    size_t used = 0;
    if (size == 0) return 0;
    out[0] = 0;
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (!leaf) return 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    int dns = 0;
    if (names) {
        for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
            GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
            if (name->type != GEN_DNS) continue;
            append_name(out, size, &used, ASN1_STRING_get0_data(name->d.dNSName), ASN1_STRING_length(name->d.dNSName));
            dns++;
        }
        GENERAL_NAMES_free(names);
    }
    if (dns == 0) {
        // No DNS SAN: the subject's common name, as clients did before SANs.
        X509_NAME *subject = X509_get_subject_name(leaf);
        int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
        if (index >= 0) {
            ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
            append_name(out, size, &used, ASN1_STRING_get0_data(cn), ASN1_STRING_length(cn));
        }
    }
    return used;
}

static int64_t asn1_seconds(const ASN1_TIME *time) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!time || ASN1_TIME_to_tm(time, &tm) != 1) return 0;
    return (int64_t)timegm(&tm);
}

int64_t ctls_context_not_after(ctls_ctx *ctx) {
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    return leaf ? asn1_seconds(X509_get0_notAfter(leaf)) : 0;
}

int64_t ctls_context_not_before(ctls_ctx *ctx) {
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    return leaf ? asn1_seconds(X509_get0_notBefore(leaf)) : 0;
}

// MARK: SNI and ALPN

typedef struct {
    char *name;  // lowercased; "*.example.net" keeps its "*."
    SSL_CTX *ctx;
    int owned;   // the table holds a reference (not for the front context: it owns the table)
} sni_entry;

struct ctls_sni {
    sni_entry *entries;
    int count;
    int capacity;
    SSL_CTX *fallback;
    int fallback_owned;
};

// Once installed, the table belongs to its front context (ex_data): it lives exactly as long as
// the front does — as long as the proxy or any connection started from it holds a reference —
// so a handshake in flight during a reload still finds it.
static int sni_index = -1;
static pthread_once_t sni_index_once = PTHREAD_ONCE_INIT;
static void sni_release(void *parent, void *table, CRYPTO_EX_DATA *data, int index, long argl, void *argp) {
    (void)parent; (void)data; (void)index; (void)argl; (void)argp;
    ctls_sni_free(table);
}
static void sni_make_index(void) { sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_release); }

ctls_sni *ctls_sni_new(void) { return calloc(1, sizeof(ctls_sni)); }

int ctls_sni_add(ctls_sni *sni, const char *name, ctls_ctx *ctx) {
    if (sni->count == sni->capacity) {
        int capacity = sni->capacity ? sni->capacity * 2 : 8;
        sni_entry *grown = realloc(sni->entries, sizeof(sni_entry) * (size_t)capacity);
        if (!grown) return -1;
        sni->entries = grown;
        sni->capacity = capacity;
    }
    char *copy = strdup(name);
    if (!copy) return -1;
    for (char *c = copy; *c; c++) *c = (char)tolower((unsigned char)*c);
    SSL_CTX_up_ref(ctx);
    sni->entries[sni->count++] = (sni_entry){copy, ctx, 1};
    return 0;
}

void ctls_sni_set_default(ctls_sni *sni, ctls_ctx *ctx) {
    if (ctx) SSL_CTX_up_ref(ctx);
    if (sni->fallback && sni->fallback_owned) SSL_CTX_free(sni->fallback);
    sni->fallback = ctx;
    sni->fallback_owned = ctx != NULL;
}

ctls_ctx *ctls_sni_lookup(ctls_sni *sni, const char *name) {
    if (!name || !*name) return sni->fallback;
    char lowered[256];
    size_t length = strlen(name);
    if (length >= sizeof lowered) return sni->fallback;
    for (size_t i = 0; i <= length; i++) lowered[i] = (char)tolower((unsigned char)name[i]);
    if (length > 0 && lowered[length - 1] == '.') lowered[--length] = 0;  // a trailing root dot
    for (int i = 0; i < sni->count; i++) {
        if (sni->entries[i].name[0] != '*' && strcmp(sni->entries[i].name, lowered) == 0) return sni->entries[i].ctx;
    }
    // A wildcard covers exactly one label: "*.example.net" matches "a.example.net" only.
    const char *dot = strchr(lowered, '.');
    if (dot && dot != lowered) {
        for (int i = 0; i < sni->count; i++) {
            const char *pattern = sni->entries[i].name;
            if (pattern[0] == '*' && pattern[1] == '.' && strcmp(pattern + 1, dot) == 0) return sni->entries[i].ctx;
        }
    }
    return sni->fallback;
}

void ctls_sni_free(ctls_sni *sni) {
    if (!sni) return;
    for (int i = 0; i < sni->count; i++) {
        free(sni->entries[i].name);
        if (sni->entries[i].owned) SSL_CTX_free(sni->entries[i].ctx);
    }
    free(sni->entries);
    if (sni->fallback && sni->fallback_owned) SSL_CTX_free(sni->fallback);
    free(sni);
}

static int servername_callback(SSL *ssl, int *alert, void *arg) {
    ctls_sni *sni = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *chosen = ctls_sni_lookup(sni, name);
    if (!chosen) {
        SSL_set_app_data(ssl, (void *)(intptr_t)CTLS_FAILURE_UNKNOWN_NAME);
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (chosen != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, chosen) != chosen) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_callback(SSL *ssl, const unsigned char **out, unsigned char *out_length, const unsigned char *in,
                         unsigned int in_length, void *arg) {
    (void)arg;
    // Walk the client's list (length-prefixed names) for http/1.1; anything else is refused
    // with no_application_protocol rather than answered in a protocol we do not speak.
    unsigned int offset = 0;
    while (offset < in_length) {
        unsigned int length = in[offset];
        if (offset + 1 + length > in_length) break;
        if (length == 8 && memcmp(in + offset + 1, "http/1.1", 8) == 0) {
            *out = in + offset + 1;
            *out_length = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        offset += 1 + length;
    }
    SSL_set_app_data(ssl, (void *)(intptr_t)CTLS_FAILURE_NO_ALPN);
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

void ctls_sni_install(ctls_sni *sni, ctls_ctx *front) {
    // The front owns the table: the table's references to the front would be a cycle.
    for (int i = 0; i < sni->count; i++) {
        if (sni->entries[i].ctx == front && sni->entries[i].owned) {
            sni->entries[i].owned = 0;
            SSL_CTX_free(front);
        }
    }
    if (sni->fallback == front && sni->fallback_owned) {
        sni->fallback_owned = 0;
        SSL_CTX_free(front);
    }
    pthread_once(&sni_index_once, sni_make_index);
    SSL_CTX_set_ex_data(front, sni_index, sni);
    SSL_CTX_set_tlsext_servername_callback(front, servername_callback);
    SSL_CTX_set_tlsext_servername_arg(front, sni);
    // OpenSSL reads ALPN from the context chosen by SNI: every certificate's context answers.
    SSL_CTX_set_alpn_select_cb(front, alpn_callback, NULL);
    for (int i = 0; i < sni->count; i++) SSL_CTX_set_alpn_select_cb(sni->entries[i].ctx, alpn_callback, NULL);
    if (sni->fallback) SSL_CTX_set_alpn_select_cb(sni->fallback, alpn_callback, NULL);
}

// MARK: Connections

ctls_ssl *ctls_accept(ctls_ctx *front, int fd) {
    SSL *ssl = SSL_new(front);
    if (!ssl) { ERR_clear_error(); return NULL; }
    if (SSL_set_fd(ssl, fd) != 1) { ERR_clear_error(); SSL_free(ssl); return NULL; }
    SSL_set_accept_state(ssl);
    return ssl;
}

void ctls_free(ctls_ssl *ssl) { SSL_free(ssl); }

static int classify(SSL *ssl, int error) {
    intptr_t noted = (intptr_t)SSL_get_app_data(ssl);
    unsigned long code = ERR_peek_last_error();
    ERR_clear_error();
    if (noted) return (int)noted;
    if (error == SSL_ERROR_SYSCALL || error == SSL_ERROR_ZERO_RETURN) return CTLS_FAILURE_PEER_CLOSED;
    switch (ERR_GET_REASON(code)) {
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
        return CTLS_FAILURE_PLAINTEXT_HTTP;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_BAD_PACKET_LENGTH:
    case SSL_R_LENGTH_MISMATCH:
    case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
    case SSL_R_BAD_RECORD_TYPE:
    case SSL_R_UNEXPECTED_RECORD:
    case SSL_R_UNEXPECTED_MESSAGE:
    case SSL_R_LENGTH_TOO_SHORT:
    case SSL_R_BAD_LENGTH:
    case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
    case SSL_R_DATA_LENGTH_TOO_LONG:
        return CTLS_FAILURE_BAD_RECORD;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        return CTLS_FAILURE_VERSION;
    case SSL_R_NO_SHARED_CIPHER:
        return CTLS_FAILURE_NO_SHARED_CIPHER;
    case SSL_R_NO_APPLICATION_PROTOCOL:
        return CTLS_FAILURE_NO_ALPN;
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return CTLS_FAILURE_PEER_CLOSED;
    default:
        return CTLS_FAILURE_OTHER;
    }
}

static int outcome(SSL *ssl, int result) {
    if (result > 0) return result;
    int error = SSL_get_error(ssl, result);
    switch (error) {
    case SSL_ERROR_WANT_READ:
        return CTLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return CTLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        if (SSL_is_init_finished(ssl)) return CTLS_CLOSED;
        return CTLS_FAILED - classify(ssl, error);
    case SSL_ERROR_SYSCALL:
        // A reset or a socket error (an EOF without close_notify is ZERO_RETURN here, with
        // SSL_OP_IGNORE_UNEXPECTED_EOF: HTTP framing, not close_notify, says whether a message
        // was complete). The session is unusable: no close_notify may follow.
        SSL_set_quiet_shutdown(ssl, 1);
        return CTLS_FAILED - classify(ssl, error);
    default:
        SSL_set_quiet_shutdown(ssl, 1);
        return CTLS_FAILED - classify(ssl, error);
    }
}

// Each call starts with an empty error queue (it is per thread, and a loop serves many
// connections): SSL_get_error must not blame this connection for another's leftover error.
int ctls_read(ctls_ssl *ssl, void *buffer, int count) {
    ERR_clear_error();
    return outcome(ssl, SSL_read(ssl, buffer, count));
}

int ctls_write(ctls_ssl *ssl, const void *buffer, int count) {
    ERR_clear_error();
    return outcome(ssl, SSL_write(ssl, buffer, count));
}

void ctls_close_notify(ctls_ssl *ssl) {
    ERR_clear_error();
    if (SSL_is_init_finished(ssl) && !SSL_get_quiet_shutdown(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN)) {
        if (SSL_shutdown(ssl) < 0) {
            // The peer is gone already: still a clean end, so the session stays resumable.
            SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        }
    }
    ERR_clear_error();
}

int ctls_handshake_done(ctls_ssl *ssl) { return SSL_is_init_finished(ssl); }
int ctls_pending(ctls_ssl *ssl) { return SSL_pending(ssl); }
const char *ctls_version_name(ctls_ssl *ssl) { return SSL_is_init_finished(ssl) ? SSL_get_version(ssl) : NULL; }
const char *ctls_cipher_name(ctls_ssl *ssl) {
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    return cipher ? SSL_CIPHER_get_name(cipher) : NULL;
}
int ctls_session_reused(ctls_ssl *ssl) { return SSL_session_reused(ssl); }

// MARK: Self-signed certificates (cutover demo --tls)

int ctls_make_self_signed(const char *chain_path, const char *key_path, const char *name, int days, char *error, size_t error_size) {
    ERR_clear_error();
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *certificate = X509_new();
    int ok = 0;
    FILE *out = NULL;
    if (!key || !certificate) goto done;
    ASN1_INTEGER *serial = X509_get_serialNumber(certificate);
    unsigned char random[8];
    if (RAND_bytes(random, sizeof random) != 1) goto done;
    uint64_t number = 0;
    for (size_t i = 0; i < sizeof random; i++) number = (number << 8) | random[i];
    ASN1_INTEGER_set_uint64(serial, number >> 1);
    X509_set_version(certificate, 2);
    X509_gmtime_adj(X509_getm_notBefore(certificate), -60);
    X509_gmtime_adj(X509_getm_notAfter(certificate), (long)days * 86400);
    X509_set_pubkey(certificate, key);
    X509_NAME *subject = X509_get_subject_name(certificate);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(certificate, subject);
    char san[512];
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1", name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, certificate, certificate, NULL, NULL, 0);
    X509_EXTENSION *extension = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (!extension) goto done;
    X509_add_ext(certificate, extension, -1);
    X509_EXTENSION_free(extension);
    if (!X509_sign(certificate, key, EVP_sha256())) goto done;
    {
        // The key is readable by its owner only, whatever the umask.
        int fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) goto done;
        fchmod(fd, 0600);
        out = fdopen(fd, "w");
        if (!out) { close(fd); goto done; }
    }
    if (!PEM_write_PrivateKey(out, key, NULL, NULL, 0, NULL, NULL)) goto done;
    fclose(out);
    out = fopen(chain_path, "w");
    if (!out || !PEM_write_X509(out, certificate)) goto done;
    ok = 1;
done:
    if (out) fclose(out);
    if (!ok) set_error(error, error_size, "cannot make a self-signed certificate");
    X509_free(certificate);
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

// MARK: Upstream (client) connections

ctls_ctx *ctls_client_context(const char *ca_file, char *error, size_t error_size) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { set_error(error, error_size, "cannot create a TLS context"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            set_error(error, error_size, "cannot load the CA file");
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

ctls_ssl *ctls_connect(ctls_ctx *ctx, int fd, const char *server_name, const char *verify_name) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl) { ERR_clear_error(); return NULL; }
    if (SSL_set_fd(ssl, fd) != 1) { ERR_clear_error(); SSL_free(ssl); return NULL; }
    SSL_set_connect_state(ssl);
    // SNI only for names (RFC 6066: never an IP address literal).
    if (server_name && *server_name && !strchr(server_name, ':') && strspn(server_name, "0123456789.") != strlen(server_name)) {
        if (SSL_set_tlsext_host_name(ssl, server_name) != 1) goto refuse;
    }
    if (verify_name && *verify_name) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        // An address is checked against the certificate's IP entries, a name against its DNS ones.
        if (X509_VERIFY_PARAM_set1_ip_asc(param, verify_name) != 1) {
            ERR_clear_error();
            // Never fail open: no name to check means no connection.
            if (SSL_set1_host(ssl, verify_name) != 1) goto refuse;
        }
    }
    ERR_clear_error();
    return ssl;
refuse:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

long ctls_verify_result(ctls_ssl *ssl) { return SSL_get_verify_result(ssl); }

const char *ctls_verify_error(ctls_ssl *ssl) {
    if (SSL_get_verify_mode(ssl) == SSL_VERIFY_NONE) return NULL;  // insecure: nothing was judged
    long result = SSL_get_verify_result(ssl);
    return result == X509_V_OK ? NULL : X509_verify_cert_error_string(result);
}
