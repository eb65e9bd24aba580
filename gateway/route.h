/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Where mail for a domain goes: a static route's hosts in order, a maildir
 * directory, the default smarthost ("*"), or the domain's MX records.
 */

#include "config.h"
#include "resolver.h"

typedef struct RouteResult {
        RouteKind kind;
        char *directory;                /* ROUTE_MAILDIR */
        ResolvedTarget *targets;        /* ROUTE_SMTP, in the order to try */
        size_t n_targets;
} RouteResult;

void route_result_done(RouteResult *r);

/* error as for resolver_targets_fn_t; result owned by the callback. */
typedef void (*route_fn_t)(int error, const char *errtext, RouteResult *result, void *userdata);

int route_resolve(Resolver *r, const Config *c, const char *domain, route_fn_t cb,
                  void *userdata, ResolverQuery **ret);
