/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Builds the SSL_CTX set of a configuration; see tls-contexts.h.
 *
 * kTLS is asked of OpenSSL only when the kernel has it (ktls_available(),
 * probed once per process, the same answer the daemon reports): otherwise
 * every handshake would try two setsockopt() calls that can only fail. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktls.h"
#include "tls-contexts.h"
#include "tls.h"
#include "util/macro.h"

static int load_certs(CertStore *cs, char * const *names, Certificate ***ret, size_t *ret_n, char **ret_error) {
        Certificate **certs;
        size_t n = strv_length(names);
        int r;

        certs = calloc(MAX(n, (size_t) 1), sizeof *certs);
        if (!certs)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *why = NULL;

                r = certstore_load(cs, names[i], &certs[i], &why);
                if (r < 0) {
                        if (ret_error && asprintf(ret_error, "certificate '%s': %s", names[i],
                                                  why ?: strerror(-r)) < 0)
                                *ret_error = NULL;
                        for (size_t j = 0; j < i; j++)
                                certificate_unref(certs[j]);
                        free(certs);
                        return r;
                }
        }
        *ret = certs;
        *ret_n = n;
        return 0;
}

static void free_certs(Certificate **certs, size_t n) {
        for (size_t i = 0; i < n; i++)
                certificate_unref(certs[i]);
        free(certs);
}

static int build_listener(const Config *c, const ListenerConfig *l, CertStore *cs,
                          SSL_CTX **ret, bool *ret_demo, char **ret_error) {
        static char * const demo[] = { (char *) CERTSTORE_DEMO_NAME, NULL };
        _cleanup_free_ char *why = NULL;
        Certificate **certs = NULL;
        size_t n = 0;
        bool use_demo = strv_length(l->certificates) == 0;
        TlsSettings s = {
                .min_version = l->tls_min_version,
                .ciphers = l->tls_ciphers,
                .ciphersuites = l->tls_ciphersuites,
                .groups = l->tls_groups,
                .ktls = l->ktls && ktls_available(),
        };
        int r;

        if (use_demo) {
                bool created;
                r = certstore_ensure_demo(cs, c->hostname, &created);
                if (r < 0) {
                        if (ret_error && asprintf(ret_error, "listener '%s': cannot create the demo certificate: %s",
                                                  l->name, strerror(-r)) < 0)
                                *ret_error = NULL;
                        return r;
                }
        }

        r = load_certs(cs, use_demo ? demo : l->certificates, &certs, &n, &why);
        if (r >= 0) {
                free(why);
                why = NULL;
                r = tls_server_ctx_new(&s, certs, n, l->client_ca, ret, &why);
        }
        free_certs(certs, n);
        if (r < 0) {
                if (ret_error && asprintf(ret_error, "listener '%s': %s", l->name, why ?: strerror(-r)) < 0)
                        *ret_error = NULL;
                return r;
        }
        *ret_demo = use_demo;
        return 0;
}

static int build_destination(const Config *c, const DestinationConfig *d, CertStore *cs,
                             SSL_CTX **ret, char **ret_error) {
        const TlsClientConfig *tc = &c->tls_client;
        _cleanup_(certificate_unrefp) Certificate *client = NULL;
        _cleanup_free_ char *why = NULL;
        TlsSettings s = {
                .min_version = d->tls_min_version ?: tc->min_version,
                .ciphers = tc->ciphers,
                .ciphersuites = tc->ciphersuites,
                .groups = tc->groups,
                .ktls = d->ktls && ktls_available(),
        };
        int r;

        if (tc->certificate) {
                r = certstore_load(cs, tc->certificate, &client, &why);
                if (r < 0)
                        goto fail;
        }
        r = tls_client_ctx_new(&s, d->ca_file ?: tc->ca_file, client, ret, &why);
        if (r >= 0)
                return 0;
fail:
        if (ret_error && asprintf(ret_error, "destination '%s': %s", d->domain, why ?: strerror(-r)) < 0)
                *ret_error = NULL;
        return r;
}

int tls_contexts_build(const Config *c, CertStore *cs, TlsContexts **ret, char **ret_error) {
        TlsContexts *t;
        int r;

        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        t->listeners = calloc(MAX(c->n_listeners, (size_t) 1), sizeof *t->listeners);
        t->listener_demo = calloc(MAX(c->n_listeners, (size_t) 1), sizeof *t->listener_demo);
        t->destinations = calloc(MAX(c->n_destinations, (size_t) 1), sizeof *t->destinations);
        if (!t->listeners || !t->listener_demo || !t->destinations) {
                r = -ENOMEM;
                goto fail;
        }
        t->n_listeners = c->n_listeners;
        t->n_destinations = c->n_destinations;

        for (size_t i = 0; i < c->n_listeners; i++) {
                r = build_listener(c, &c->listeners[i], cs, &t->listeners[i], &t->listener_demo[i], ret_error);
                if (r < 0)
                        goto fail;
        }
        for (size_t i = 0; i < c->n_destinations; i++) {
                if (c->destinations[i].tls == TLS_OUT_NONE)
                        continue;
                r = build_destination(c, &c->destinations[i], cs, &t->destinations[i], ret_error);
                if (r < 0)
                        goto fail;
        }
        *ret = t;
        return 0;
fail:
        tls_contexts_free(t);
        return r;
}

TlsContexts *tls_contexts_free(TlsContexts *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; t->listeners && i < t->n_listeners; i++)
                SSL_CTX_free(t->listeners[i]);
        for (size_t i = 0; t->destinations && i < t->n_destinations; i++)
                SSL_CTX_free(t->destinations[i]);
        free(t->listeners);
        free(t->listener_demo);
        free(t->destinations);
        free(t);
        return NULL;
}

static SSL_CTX *ctx_ref(SSL_CTX *ctx) {
        if (ctx)
                SSL_CTX_up_ref(ctx);
        return ctx;
}

SSL_CTX *tls_contexts_listener(const TlsContexts *t, const Config *c, const ListenerConfig *l) {
        size_t i = (size_t) (l - c->listeners);
        return t && i < t->n_listeners ? ctx_ref(t->listeners[i]) : NULL;
}

SSL_CTX *tls_contexts_destination(const TlsContexts *t, const Config *c, const DestinationConfig *d) {
        size_t i = (size_t) (d - c->destinations);
        return t && i < t->n_destinations ? ctx_ref(t->destinations[i]) : NULL;
}
