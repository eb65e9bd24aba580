/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Where mail for a domain goes. The configuration decides (config_find_route:
 * exact domain, else "*", else none); this module turns that decision into
 * something deliverable: a maildir directory, the static route's hosts
 * expanded to addresses in the configured order, or, with no route, the
 * domain's MX records (RFC 5321 5.1) on the queue's SMTP port.
 *
 * It does not connect, retry or log; the queue does. Every outcome is
 * delivered on the event loop, through the resolver, so a caller is never
 * re-entered from route_resolve() and can always cancel with
 * resolver_query_cancel().
 *
 * The callback gets error 0 and a RouteResult, or a negative errno as for
 * resolver_targets_fn_t (-ENXIO permanent, -EAGAIN temporary) with a text
 * and result NULL. The RouteResult struct lives only for the duration of
 * the callback; its members belong to the callback, which copies the struct
 * (that moves them) or calls route_result_done().
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "util/macro.h"

/* RFC 5321 4.5.4.1 / 6.1: the standard SMTP port when a route host or the
 * queue configuration does not say otherwise. */
#define ROUTE_SMTP_PORT_DEFAULT 25

typedef struct RouteContext {
        route_fn_t cb;
        void *userdata;
        RouteKind kind;
        char *directory;
} RouteContext;

void route_result_done(RouteResult *r) {
        if (!r)
                return;
        free(r->directory);
        resolved_targets_free(r->targets, r->n_targets);
        *r = (RouteResult) {};
}

static void route_context_free(void *p) {
        RouteContext *ctx = p;

        if (!ctx)
                return;
        free(ctx->directory);
        free(ctx);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(RouteContext *, route_context_free);

static void route_on_targets(int error, const char *errtext, ResolvedTarget *targets, size_t n,
                             void *userdata) {
        RouteContext *ctx = userdata;
        RouteResult result;

        if (error < 0) {
                resolved_targets_free(targets, n);
                ctx->cb(error, errtext, NULL, ctx->userdata);
                return;
        }

        result = (RouteResult) {
                .kind = ctx->kind,
                .directory = TAKE_PTR(ctx->directory),
                .targets = targets,
                .n_targets = n,
        };
        ctx->cb(0, NULL, &result, ctx->userdata);
        /* ctx itself is freed by the resolver through route_context_free(). */
}

int route_resolve(Resolver *r, const Config *c, const char *domain, route_fn_t cb,
                  void *userdata, ResolverQuery **ret) {
        _cleanup_(route_context_freep) RouteContext *ctx = NULL;
        _cleanup_free_ RouteHost *hosts = NULL;
        const RouteConfig *route;
        ResolverQuery *q;
        uint16_t default_port;
        int k;

        if (!r || !c || isempty(domain) || !cb)
                return -EINVAL;

        default_port = c->queue.smtp_port > 0 ? c->queue.smtp_port : ROUTE_SMTP_PORT_DEFAULT;

        ctx = calloc(1, sizeof(*ctx));
        if (!ctx)
                return -ENOMEM;
        ctx->cb = cb;
        ctx->userdata = userdata;

        route = config_find_route(c, domain);
        if (!route) {
                ctx->kind = ROUTE_SMTP;
                k = resolver_mx(r, domain, default_port, route_on_targets, ctx, &q);
        } else if (route->kind == ROUTE_MAILDIR) {
                if (isempty(route->directory))
                        return -EINVAL;
                ctx->kind = ROUTE_MAILDIR;
                ctx->directory = strdup(route->directory);
                if (!ctx->directory)
                        return -ENOMEM;
                /* No lookup; the resolver delivers the answer on the loop. */
                k = resolver_hosts(r, NULL, 0, route_on_targets, ctx, &q);
        } else if (route->kind == ROUTE_SMTP) {
                if (route->n_hosts == 0 || !route->hosts)
                        return -EINVAL;
                hosts = calloc(route->n_hosts, sizeof(*hosts));
                if (!hosts)
                        return -ENOMEM;
                /* The resolver copies the names; only ports are filled in. */
                for (size_t i = 0; i < route->n_hosts; i++)
                        hosts[i] = (RouteHost) {
                                .host = route->hosts[i].host,
                                .port = route->hosts[i].port > 0 ? route->hosts[i].port : default_port,
                        };
                ctx->kind = ROUTE_SMTP;
                k = resolver_hosts(r, hosts, route->n_hosts, route_on_targets, ctx, &q);
        } else
                return -EINVAL;
        if (k < 0)
                return k;

        resolver_query_set_destroy(q, route_context_free);
        TAKE_PTR(ctx);
        if (ret)
                *ret = q;
        return 0;
}
