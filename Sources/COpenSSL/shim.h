#ifndef COPENSSL_SHIM_H
#define COPENSSL_SHIM_H
// The system OpenSSL (libssl-dev), as a Swift module. cutover's own C code on top of it is
// CCutoverTLS: OpenSSL's macros and callbacks do not cross into Swift.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#endif
