/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The TLS contexts of one configuration: a server context per listener
 * (its certificates from the store, or the demo certificate) and a client
 * context per destination control entry. Built on the main thread when a
 * configuration is applied; sessions take their own reference to the
 * SSL_CTX they start with, so replacing the set (reload, certificate
 * change) affects new handshakes only and never an established session.
 * Returns negative errno with *ret_error naming the object and problem.
 */

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "certstore.h"
#include "config.h"

typedef struct TlsContexts {
        SSL_CTX **listeners;            /* parallel to Config.listeners */
        bool *listener_demo;            /* serves the demo certificate */
        size_t n_listeners;
        SSL_CTX **destinations;         /* parallel to Config.destinations; NULL for tls none */
        size_t n_destinations;
} TlsContexts;

int tls_contexts_build(const Config *c, CertStore *cs, TlsContexts **ret, char **ret_error);
TlsContexts *tls_contexts_free(TlsContexts *t);

/* New references (or NULL). */
SSL_CTX *tls_contexts_listener(const TlsContexts *t, const Config *c, const ListenerConfig *l);
SSL_CTX *tls_contexts_destination(const TlsContexts *t, const Config *c, const DestinationConfig *d);
