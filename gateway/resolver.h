/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Asynchronous DNS on an sd-event loop (c-ares): reverse lookups with
 * forward confirmation for the inbound log, MX and address lookups for
 * delivery. One Resolver per loop (it is not thread-safe); servers from the
 * configuration ("ip" or "ip:port") or /etc/resolv.conf.
 *
 * Every lookup returns a ResolverQuery handle; resolver_query_cancel()
 * guarantees its callback is never called. Callbacks run on the loop.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <systemd/sd-event.h>

typedef struct Resolver Resolver;
typedef struct ResolverQuery ResolverQuery;

typedef struct ResolvedTarget {
        char *host;                     /* MX host or route host name */
        struct sockaddr_storage addr;   /* with port set */
        socklen_t addrlen;
        uint16_t preference;            /* MX preference, 0 for routes */
} ResolvedTarget;

void resolved_targets_free(ResolvedTarget *t, size_t n);

/* servers: NULL-terminated or NULL for the system configuration. */
int resolver_new(sd_event *e, char * const *servers, uint64_t timeout_usec, Resolver **ret);
Resolver *resolver_free(Resolver *r);   /* cancels all queries */
void resolver_query_cancel(ResolverQuery *q);
/* destroy(userdata) runs once the query no longer uses its userdata: after
 * the callback returned, or on cancel/resolver_free(). For wrappers that
 * allocate their own userdata (route.c). */
void resolver_query_set_destroy(ResolverQuery *q, void (*destroy)(void *userdata));

/* PTR for the address, then A/AAAA of that name must contain the address
 * ("verified"). name NULL when there is no PTR. Names found are
 * remembered for a minute per resolver (see resolver.c). */
typedef void (*resolver_reverse_fn_t)(const char *name, bool verified, void *userdata);
int resolver_reverse(Resolver *r, const struct sockaddr *sa, resolver_reverse_fn_t cb,
                     void *userdata, ResolverQuery **ret);

/* error: 0; -ENXIO permanent (NXDOMAIN, null MX of RFC 7505, no address
 * at all); -EAGAIN temporary (timeout, SERVFAIL). errtext describes it.
 * Targets are owned by the callee: the callback must take or free them
 * with resolved_targets_free(). */
typedef void (*resolver_targets_fn_t)(int error, const char *errtext,
                                      ResolvedTarget *targets, size_t n, void *userdata);

/* MX records sorted by preference (equal preferences shuffled), each
 * expanded to its addresses; no MX: the domain's own A/AAAA (RFC 5321 5.1). */
int resolver_mx(Resolver *r, const char *domain, uint16_t port, resolver_targets_fn_t cb,
                void *userdata, ResolverQuery **ret);
/* Each host (name or literal) expanded to addresses, in the given order.
 * n == 0 looks nothing up and completes with error 0 and no targets. */
typedef struct RouteHost RouteHost;
int resolver_hosts(Resolver *r, const RouteHost *hosts, size_t n, resolver_targets_fn_t cb,
                   void *userdata, ResolverQuery **ret);
