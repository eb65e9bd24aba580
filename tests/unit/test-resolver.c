/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Resolver and route tests against a real DNS server: unbound started
 * through tests/integration/dnsserver.py on a free 127.0.0.1 port with a
 * zone written here, and a real sd-event loop. A silent server (a bound UDP
 * socket that never answers) drives the timeout path. Without unbound the
 * DNS cases print SKIP with the reason.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "config.h"
#include "resolver.h"
#include "route.h"
#include "tap.h"
#include "util/macro.h"

/* unbound and Python start in well under a second; allow for a loaded CI. */
#define DNS_START_TIMEOUT_USEC (15 * USEC_PER_SEC)
/* Per-try timeout of the resolver that talks to unbound. */
#define LOOKUP_TIMEOUT_USEC (2 * USEC_PER_SEC)
/* Per-try timeout against the silent server; c-ares makes 2 tries, the
 * second with twice the timeout, so it gives up after about 3x this. */
#define SILENT_TIMEOUT_USEC (200 * USEC_PER_MSEC)
#define SILENT_DEADLINE_USEC (3 * SILENT_TIMEOUT_USEC + USEC_PER_SEC)
#define WAIT_USEC (10 * USEC_PER_SEC)
#define SHUFFLE_ROUNDS 24
#define EXIT_SKIP 77

static const char zone_text[] =
        "example.test. 300 IN MX 10 mx1.example.test.\n"
        "example.test. 300 IN MX 20 mx2.example.test.\n"
        "mx1.example.test. 300 IN A 192.0.2.1\n"
        "mx1.example.test. 300 IN AAAA 2001:db8::1\n"
        "mx2.example.test. 300 IN A 192.0.2.2\n"
        "implicit.example.test. 300 IN A 192.0.2.3\n"
        "nullmx.example.test. 300 IN MX 0 .\n"
        "equal.example.test. 300 IN MX 10 mx1.example.test.\n"
        "equal.example.test. 300 IN MX 10 mx2.example.test.\n"
        "partial.example.test. 300 IN MX 5 missing.example.test.\n"
        "partial.example.test. 300 IN MX 10 mx2.example.test.\n"
        "noaddr.example.test. 300 IN MX 10 missing.example.test.\n"
        "1.2.0.192.in-addr.arpa. 300 IN PTR mx1.example.test.\n"
        "7.2.0.192.in-addr.arpa. 300 IN PTR liar.example.test.\n"
        "liar.example.test. 300 IN A 192.0.2.8\n";

static pid_t dns_pid = -1;
static int dns_stdin = -1;
static char dns_dir[PATH_MAX];
static uint16_t dns_port;

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* A port free for UDP and TCP on 127.0.0.1 right now. */
static int pick_port(uint16_t *ret) {
        for (int attempt = 0; attempt < 20; attempt++) {
                _cleanup_close_ int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                _cleanup_close_ int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                socklen_t len = sizeof(sin);

                if (u < 0 || t < 0)
                        return -errno;
                if (bind(u, (struct sockaddr *) &sin, sizeof(sin)) < 0 ||
                    getsockname(u, (struct sockaddr *) &sin, &len) < 0)
                        return -errno;
                if (bind(t, (struct sockaddr *) &sin, sizeof(sin)) < 0)
                        continue;
                *ret = ntohs(sin.sin_port);
                return 0;
        }
        return -EADDRINUSE;
}

static const char *dnsserver_path(void) {
        static char path[PATH_MAX];
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        const char *slash;

        if (root) {
                snprintf(path, sizeof(path), "%s/tests/integration/dnsserver.py", root);
                if (access(path, R_OK) == 0)
                        return path;
        }
        /* __FILE__ is tests/unit/test-resolver.c as the build saw it. */
        slash = strrchr(__FILE__, '/');
        snprintf(path, sizeof(path), "%.*s/../integration/dnsserver.py",
                 slash ? (int) (slash - __FILE__) : 1, slash ? __FILE__ : ".");
        if (access(path, R_OK) == 0)
                return path;
        /* Relative __FILE__ is relative to the build directory, which is
         * the parent of the directory holding this binary. */
        if (slash && __FILE__[0] != '/') {
                char exe[PATH_MAX / 2];
                ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
                char *d;

                if (n > 0) {
                        exe[n] = '\0';
                        for (int i = 0; i < 2 && (d = strrchr(exe, '/')); i++)
                                *d = '\0';
                        snprintf(path, sizeof(path), "%s/%.*s/../integration/dnsserver.py",
                                 exe, (int) (slash - __FILE__), __FILE__);
                        if (access(path, R_OK) == 0)
                                return path;
                }
        }
        return NULL;
}

/* Returns 0 when the server answers, EXIT_SKIP-ish -ENOENT when unbound is
 * missing, other negative errno on failure. */
static int dns_start(const char *script, const char **ret_why) {
        char zone[PATH_MAX + 16], portstr[16], line[64] = "";
        int out[2], in[2], status;
        size_t got = 0;
        uint64_t deadline;
        FILE *f;

        if (!mkdtemp(strcpy(dns_dir, "/tmp/test-resolver-XXXXXX")))
                return -errno;
        snprintf(zone, sizeof(zone), "%s/zone", dns_dir);
        f = fopen(zone, "we");
        if (!f)
                return -errno;
        fputs(zone_text, f);
        if (fclose(f) != 0)
                return -EIO;

        if (pick_port(&dns_port) < 0)
                return -EADDRINUSE;
        snprintf(portstr, sizeof(portstr), "%u", dns_port);

        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0)
                return -errno;
        dns_pid = fork();
        if (dns_pid < 0)
                return -errno;
        if (dns_pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0)
                        _exit(127);
                execlp("python3", "python3", script, "--zone", zone, "--port", portstr,
                       "--stdin-eof", (char *) NULL);
                _exit(127);
        }
        close(out[1]);
        close(in[0]);
        dns_stdin = in[1];

        deadline = now_usec() + DNS_START_TIMEOUT_USEC;
        while (!strchr(line, '\n')) {
                struct pollfd p = { .fd = out[0], .events = POLLIN };
                uint64_t n = now_usec();
                ssize_t k;

                if (n >= deadline || poll(&p, 1, (int) ((deadline - n) / 1000)) <= 0) {
                        close(out[0]);
                        *ret_why = "dnsserver.py did not become ready";
                        return -ETIMEDOUT;
                }
                k = read(out[0], line + got, sizeof(line) - 1 - got);
                if (k <= 0)
                        break;
                got += (size_t) k;
                line[got] = '\0';
                if (got == sizeof(line) - 1)
                        break;
        }
        close(out[0]);

        if (strncmp(line, "ready ", 6) == 0)
                return 0;

        if (waitpid(dns_pid, &status, 0) == dns_pid) {
                dns_pid = -1;
                if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) {
                        *ret_why = "unbound is not installed";
                        return -ENOENT;
                }
                if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
                        *ret_why = "python3 could not be run";
                        return -ENOENT;
                }
        }
        *ret_why = "dnsserver.py failed to start unbound";
        return -EIO;
}

static void dns_stop(void) {
        char zone[PATH_MAX + 16];

        if (dns_pid > 0) {
                (void) kill(dns_pid, SIGTERM);
                (void) waitpid(dns_pid, NULL, 0);
                dns_pid = -1;
        }
        dns_stdin = safe_close(dns_stdin);
        if (dns_dir[0]) {
                snprintf(zone, sizeof(zone), "%s/zone", dns_dir);
                (void) unlink(zone);
                (void) rmdir(dns_dir);
        }
}

/* ---- callback plumbing ---- */

typedef struct Result {
        unsigned calls;
        int error;
        char errtext[512];
        ResolvedTarget *targets;
        size_t n;
        RouteResult route;
        bool have_route;
        char *name;
        bool verified;
} Result;

static void result_done(Result *r) {
        resolved_targets_free(r->targets, r->n);
        route_result_done(&r->route);
        free(r->name);
        *r = (Result) {};
}

static void on_targets(int error, const char *errtext, ResolvedTarget *targets, size_t n, void *userdata) {
        Result *r = userdata;

        r->calls++;
        r->error = error;
        snprintf(r->errtext, sizeof(r->errtext), "%s", errtext ? errtext : "");
        resolved_targets_free(r->targets, r->n);
        r->targets = targets;
        r->n = n;
}

static void on_reverse(const char *name, bool verified, void *userdata) {
        Result *r = userdata;

        r->calls++;
        free(r->name);
        r->name = name ? strdup(name) : NULL;
        r->verified = verified;
}

static void on_route(int error, const char *errtext, RouteResult *result, void *userdata) {
        Result *r = userdata;

        r->calls++;
        r->error = error;
        snprintf(r->errtext, sizeof(r->errtext), "%s", errtext ? errtext : "");
        if (result) {
                route_result_done(&r->route);
                r->route = *result;     /* moves the members */
                r->have_route = true;
        }
}

/* Runs the loop until r->calls becomes non-zero or the time is up. */
static void run_until_called(sd_event *e, Result *r, uint64_t timeout) {
        uint64_t deadline = now_usec() + timeout;

        while (r->calls == 0) {
                uint64_t n = now_usec();
                if (n >= deadline)
                        return;
                (void) sd_event_run(e, deadline - n);
        }
}

/* Runs the loop for a fixed time (to let late callbacks arrive). */
static void run_for(sd_event *e, uint64_t usec) {
        uint64_t deadline = now_usec() + usec;

        for (uint64_t n = now_usec(); n < deadline; n = now_usec())
                (void) sd_event_run(e, deadline - n);
}

static const char *addr_str(const ResolvedTarget *t, char *buf, size_t len) {
        const void *a = t->addr.ss_family == AF_INET
                ? (const void *) &((const struct sockaddr_in *) &t->addr)->sin_addr
                : (const void *) &((const struct sockaddr_in6 *) &t->addr)->sin6_addr;

        if (!inet_ntop(t->addr.ss_family, a, buf, (socklen_t) len))
                snprintf(buf, len, "?");
        return buf;
}

static uint16_t addr_port(const ResolvedTarget *t) {
        return ntohs(t->addr.ss_family == AF_INET
                     ? ((const struct sockaddr_in *) &t->addr)->sin_port
                     : ((const struct sockaddr_in6 *) &t->addr)->sin6_port);
}

static int mx_lookup(sd_event *e, Resolver *res, const char *domain, uint16_t port, Result *r) {
        int k;

        *r = (Result) {};
        k = resolver_mx(res, domain, port, on_targets, r, NULL);
        if (k < 0)
                return k;
        /* Never re-entered from the call itself. */
        if (r->calls != 0)
                return -EBADE;
        run_until_called(e, r, WAIT_USEC);
        return r->calls == 1 ? 0 : -ETIMEDOUT;
}

/* ---- cases ---- */

static void test_mx_order(sd_event *e, Resolver *res) {
        char buf[INET6_ADDRSTRLEN], b2[INET6_ADDRSTRLEN];
        Result r;

        is_int(mx_lookup(e, res, "example.test", 2525, &r), 0, "MX lookup completes once");
        is_int(r.error, 0, "MX lookup succeeds (%s)", r.errtext);
        is_int(r.n, 3, "two MX hosts expand to three addresses");
        if (r.n == 3) {
                is_str(r.targets[0].host, "mx1.example.test", "preference 10 host first");
                is_str(r.targets[1].host, "mx1.example.test", "both of its addresses next");
                is_str(r.targets[2].host, "mx2.example.test", "preference 20 host last");
                is_int(r.targets[0].preference, 10, "preference carried");
                is_int(r.targets[2].preference, 20, "second preference carried");
                addr_str(&r.targets[0], buf, sizeof(buf));
                addr_str(&r.targets[1], b2, sizeof(b2));
                ok((streq(buf, "192.0.2.1") && streq(b2, "2001:db8::1")) ||
                   (streq(buf, "2001:db8::1") && streq(b2, "192.0.2.1")),
                   "mx1 has its A and AAAA (%s, %s)", buf, b2);
                is_str(addr_str(&r.targets[2], buf, sizeof(buf)), "192.0.2.2", "mx2 address");
                ok(addr_port(&r.targets[0]) == 2525 && addr_port(&r.targets[1]) == 2525 &&
                   addr_port(&r.targets[2]) == 2525, "port set on every address");
        }
        result_done(&r);
}

static void test_mx_shuffle(sd_event *e, Resolver *res) {
        unsigned first_mx1 = 0, first_mx2 = 0, good = 0;

        for (unsigned i = 0; i < SHUFFLE_ROUNDS; i++) {
                Result r;

                if (mx_lookup(e, res, "equal.example.test", 25, &r) == 0 && r.error == 0 && r.n == 3) {
                        good++;
                        if (streq(r.targets[0].host, "mx1.example.test"))
                                first_mx1++;
                        else if (streq(r.targets[0].host, "mx2.example.test"))
                                first_mx2++;
                }
                result_done(&r);
        }
        is_int(good, SHUFFLE_ROUNDS, "equal-preference lookups all succeed");
        ok(first_mx1 > 0 && first_mx2 > 0,
           "equal preferences are shuffled (mx1 first %u times, mx2 first %u times)", first_mx1, first_mx2);
}

static void test_mx_special(sd_event *e, Resolver *res) {
        char buf[INET6_ADDRSTRLEN];
        Result r;

        is_int(mx_lookup(e, res, "implicit.example.test", 2525, &r), 0, "implicit MX completes");
        is_int(r.error, 0, "no MX but an A record: implicit MX (%s)", r.errtext);
        is_int(r.n, 1, "implicit MX has one address");
        if (r.n == 1) {
                is_str(r.targets[0].host, "implicit.example.test", "implicit MX host is the domain");
                is_str(addr_str(&r.targets[0], buf, sizeof(buf)), "192.0.2.3", "implicit MX address");
                is_int(addr_port(&r.targets[0]), 2525, "implicit MX port");
                is_int(r.targets[0].preference, 0, "implicit MX preference 0 (RFC 5321 5.1)");
        }
        result_done(&r);

        is_int(mx_lookup(e, res, "nullmx.example.test", 25, &r), 0, "null MX completes");
        is_int(r.error, -ENXIO, "null MX is permanent");
        ok(strstr(r.errtext, "null MX") != NULL, "null MX reported as such (%s)", r.errtext);
        ok(r.targets == NULL && r.n == 0, "null MX has no targets");
        result_done(&r);

        is_int(mx_lookup(e, res, "nope.example.test", 25, &r), 0, "NXDOMAIN completes");
        is_int(r.error, -ENXIO, "NXDOMAIN is permanent (%s)", r.errtext);
        result_done(&r);

        is_int(mx_lookup(e, res, "partial.example.test", 25, &r), 0, "partial MX completes");
        is_int(r.error, 0, "an unresolvable MX host is skipped (%s)", r.errtext);
        ok(r.n == 1 && streq(r.targets[0].host, "mx2.example.test"), "only the resolvable host remains");
        result_done(&r);

        is_int(mx_lookup(e, res, "noaddr.example.test", 25, &r), 0, "MX without address completes");
        is_int(r.error, -ENXIO, "no address at all is permanent (%s)", r.errtext);
        result_done(&r);

        r = (Result) {};
        is_int(resolver_mx(res, "bad..domain", 25, on_targets, &r, NULL), -EINVAL, "invalid domain refused");
        is_int(resolver_mx(res, "example.test", 0, on_targets, &r, NULL), -EINVAL, "port 0 refused");
}

static void test_silent(sd_event *e) {
        _cleanup_close_ int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sin);
        char server[32];
        char *servers[] = { server, NULL };
        Resolver *res = NULL;
        ResolverQuery *q = NULL;
        Result r = {}, r2 = {}, r3 = {};
        uint64_t start, took;

        if (fd < 0 || bind(fd, (struct sockaddr *) &sin, sizeof(sin)) < 0 ||
            getsockname(fd, (struct sockaddr *) &sin, &len) < 0) {
                ok(0, "silent server socket: %m");
                return;
        }
        snprintf(server, sizeof(server), "127.0.0.1:%u", ntohs(sin.sin_port));
        is_int(resolver_new(e, servers, SILENT_TIMEOUT_USEC, &res), 0, "resolver for silent server");
        if (!res)
                return;

        start = now_usec();
        is_int(resolver_mx(res, "example.test", 25, on_targets, &r, NULL), 0, "MX query sent to silent server");
        /* A second query that is cancelled at once and must stay silent
         * although c-ares times it out later. */
        is_int(resolver_mx(res, "example.test", 25, on_targets, &r2, &q), 0, "second query started");
        resolver_query_cancel(q);
        run_until_called(e, &r, SILENT_DEADLINE_USEC + USEC_PER_SEC);
        took = now_usec() - start;
        is_int(r.calls, 1, "silent server: callback runs once");
        is_int(r.error, -EAGAIN, "silent server: temporary failure (%s)", r.errtext);
        ok(took <= SILENT_DEADLINE_USEC, "gave up within the timeout (%llu ms)",
           (unsigned long long) (took / USEC_PER_MSEC));
        run_for(e, SILENT_TIMEOUT_USEC);
        is_int(r2.calls, 0, "cancelled query: callback never runs");

        /* Freeing the resolver with a query in flight: no callback, no leak
         * (c-ares reports ARES_EDESTRUCTION during ares_destroy). */
        is_int(resolver_mx(res, "example.test", 25, on_targets, &r3, NULL), 0, "query in flight at free");
        /* Not in /etc/hosts, so the PTR question goes to the silent server. */
        inet_pton(AF_INET, "192.0.2.77", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r3, NULL), 0,
               "reverse in flight at free");
        run_for(e, 20 * USEC_PER_MSEC);
        res = resolver_free(res);
        run_for(e, 20 * USEC_PER_MSEC);
        is_int(r3.calls, 0, "resolver_free: pending callbacks never run");
        result_done(&r);
        result_done(&r2);
        result_done(&r3);
}

static void test_reverse(sd_event *e, Resolver *res) {
        struct sockaddr_in sin = { .sin_family = AF_INET };
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
        Result r = {};

        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "reverse 127.0.0.1 started");
        is_int(r.calls, 0, "reverse answered from /etc/hosts still waits for the loop");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.calls, 1, "reverse callback runs once");
        is_str(r.name, "localhost", "127.0.0.1 is localhost");
        ok(r.verified, "localhost forward-confirms 127.0.0.1");
        result_done(&r);

        inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6.sin6_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin6, on_reverse, &r, NULL), 0, "reverse v4-mapped started");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.calls == 1 && r.name && streq(r.name, "localhost") && r.verified,
           "v4-mapped client verified as localhost");
        result_done(&r);

        inet_pton(AF_INET, "192.0.2.1", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "reverse via DNS started");
        run_until_called(e, &r, WAIT_USEC);
        is_str(r.name, "mx1.example.test", "PTR from the DNS server");
        ok(r.verified, "PTR name forward-confirms");
        result_done(&r);

        inet_pton(AF_INET, "192.0.2.7", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "reverse (liar) started");
        run_until_called(e, &r, WAIT_USEC);
        is_str(r.name, "liar.example.test", "PTR name returned");
        ok(!r.verified, "PTR name whose A differs is not verified");
        result_done(&r);

        inet_pton(AF_INET, "192.0.2.99", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "reverse (no PTR) started");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.calls == 1 && !r.name && !r.verified, "no PTR: name NULL, not verified");
        result_done(&r);
}

static void test_cancel(sd_event *e, Resolver *res) {
        RouteHost lit[] = { { .host = (char *) "192.0.2.50", .port = 25 } };
        ResolverQuery *q = NULL;
        Result r = {}, witness = {};

        /* Cancelled while the DNS answer is outstanding. */
        is_int(resolver_mx(res, "example.test", 25, on_targets, &r, &q), 0, "MX started for cancel");
        resolver_query_cancel(q);
        is_int(mx_lookup(e, res, "implicit.example.test", 25, &witness), 0, "a later query completes");
        run_for(e, 100 * USEC_PER_MSEC);
        is_int(r.calls, 0, "cancel before the answer: callback never runs");
        result_done(&witness);

        /* Cancelled after the result is ready but before the loop ran it. */
        is_int(resolver_hosts(res, lit, 1, on_targets, &r, &q), 0, "literal hosts started");
        resolver_query_cancel(q);
        run_for(e, 100 * USEC_PER_MSEC);
        is_int(r.calls, 0, "cancel of a ready result: callback never runs");
        result_done(&r);
}

static void test_hosts(sd_event *e, Resolver *res) {
        RouteHost hosts[] = {
                { .host = (char *) "192.0.2.9", .port = 26 },
                { .host = (char *) "[2001:db8::9]", .port = 27 },
                { .host = (char *) "missing.example.test", .port = 29 },
                { .host = (char *) "mx2.example.test", .port = 28 },
        };
        RouteHost bad[] = { { .host = (char *) "missing.example.test", .port = 25 } };
        char buf[INET6_ADDRSTRLEN];
        Result r = {};

        is_int(resolver_hosts(res, hosts, ELEMENTSOF(hosts), on_targets, &r, NULL), 0, "hosts started");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.error, 0, "hosts resolve (%s)", r.errtext);
        is_int(r.n, 3, "literals and a name, unresolvable skipped");
        if (r.n == 3) {
                ok(streq(addr_str(&r.targets[0], buf, sizeof(buf)), "192.0.2.9") && addr_port(&r.targets[0]) == 26,
                   "IPv4 literal first with its port");
                ok(streq(addr_str(&r.targets[1], buf, sizeof(buf)), "2001:db8::9") && addr_port(&r.targets[1]) == 27,
                   "bracketed IPv6 literal second with its port");
                ok(streq(addr_str(&r.targets[2], buf, sizeof(buf)), "192.0.2.2") && addr_port(&r.targets[2]) == 28 &&
                   streq(r.targets[2].host, "mx2.example.test"), "name resolved last with its port");
        }
        result_done(&r);

        is_int(resolver_hosts(res, bad, 1, on_targets, &r, NULL), 0, "unresolvable host started");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.error, -ENXIO, "no address for any host is permanent (%s)", r.errtext);
        result_done(&r);
}

static void test_route(sd_event *e, Resolver *res) {
        RouteHost hosts[] = {
                { .host = (char *) "192.0.2.9", .port = 2526 },
                { .host = (char *) "mx1.example.test", .port = 0 },
        };
        RouteConfig routes[] = {
                { .domain = (char *) "local.test", .kind = ROUTE_MAILDIR, .directory = (char *) "/var/lib/tlsgw/mail" },
                { .domain = (char *) "routed.test", .kind = ROUTE_SMTP, .hosts = hosts, .n_hosts = ELEMENTSOF(hosts) },
        };
        Config c = {
                .routes = routes,
                .n_routes = ELEMENTSOF(routes),
                .queue.smtp_port = 2525,
        };
        ResolverQuery *q = NULL;
        char buf[INET6_ADDRSTRLEN];
        Result r = {};

        is_int(route_resolve(res, &c, "local.test", on_route, &r, NULL), 0, "maildir route started");
        is_int(r.calls, 0, "maildir route answers on the loop");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.error, 0, "maildir route succeeds");
        ok(r.have_route && r.route.kind == ROUTE_MAILDIR, "maildir route kind");
        is_str(r.route.directory, "/var/lib/tlsgw/mail", "maildir directory copied");
        ok(r.route.n_targets == 0, "maildir route has no targets");
        result_done(&r);

        is_int(route_resolve(res, &c, "routed.test", on_route, &r, NULL), 0, "static route started");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.error, 0, "static route resolves (%s)", r.errtext);
        ok(r.have_route && r.route.kind == ROUTE_SMTP && !r.route.directory, "static route kind");
        is_int(r.route.n_targets, 3, "literal plus the name's two addresses");
        if (r.route.n_targets == 3) {
                ok(streq(addr_str(&r.route.targets[0], buf, sizeof(buf)), "192.0.2.9") &&
                   addr_port(&r.route.targets[0]) == 2526, "literal host first, its own port");
                ok(streq(r.route.targets[1].host, "mx1.example.test") && addr_port(&r.route.targets[1]) == 2525 &&
                   addr_port(&r.route.targets[2]) == 2525, "named host next, queue port when none given");
        }
        result_done(&r);

        is_int(route_resolve(res, &c, "example.test", on_route, &r, NULL), 0, "MX route started");
        run_until_called(e, &r, WAIT_USEC);
        is_int(r.error, 0, "no route: MX lookup (%s)", r.errtext);
        ok(r.have_route && r.route.kind == ROUTE_SMTP && r.route.n_targets == 3 &&
           streq(r.route.targets[0].host, "mx1.example.test") && addr_port(&r.route.targets[0]) == 2525,
           "MX targets on the queue's SMTP port");
        result_done(&r);

        is_int(route_resolve(res, &c, "nope.example.test", on_route, &r, NULL), 0, "MX route (NXDOMAIN) started");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.error == -ENXIO && !r.have_route, "route error passed through without a result (%s)", r.errtext);
        result_done(&r);

        /* Cancelling a route frees its context (checked by ASan). */
        is_int(route_resolve(res, &c, "local.test", on_route, &r, &q), 0, "route for cancel started");
        resolver_query_cancel(q);
        run_for(e, 50 * USEC_PER_MSEC);
        is_int(r.calls, 0, "cancelled route: callback never runs");
        result_done(&r);
}

/* Last: stops the DNS server. A name found is answered from the cache
 * without it; "no PTR" and failures are not remembered. */
static void test_reverse_cache(sd_event *e, const char *server) {
        char srv[32];
        char *servers[] = { srv, NULL };
        struct sockaddr_in sin = { .sin_family = AF_INET };
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
        Resolver *res = NULL;
        Result r = {};
        uint64_t start, took;

        snprintf(srv, sizeof srv, "%s", server);
        is_int(resolver_new(e, servers, SILENT_TIMEOUT_USEC, &res), 0, "cache: resolver");
        if (!res)
                return;
        inet_pton(AF_INET, "192.0.2.1", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "cache: first lookup");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.name && streq(r.name, "mx1.example.test") && r.verified, "cache: answered by DNS");
        result_done(&r);
        inet_pton(AF_INET, "192.0.2.99", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0, "cache: lookup without PTR");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.calls == 1 && !r.name, "cache: no PTR");
        result_done(&r);

        dns_stop();

        start = now_usec();
        inet_pton(AF_INET6, "::ffff:192.0.2.1", &sin6.sin6_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin6, on_reverse, &r, NULL), 0,
               "cache: same client again (v4-mapped), server gone");
        is_int(r.calls, 0, "cache: a cached answer still waits for the loop");
        run_until_called(e, &r, WAIT_USEC);
        took = now_usec() - start;
        ok(r.calls == 1 && r.name && streq(r.name, "mx1.example.test") && r.verified,
           "cache: name and verification from the cache");
        ok(took < SILENT_TIMEOUT_USEC, "cache: without asking (%llu ms)", (unsigned long long) (took / USEC_PER_MSEC));
        result_done(&r);

        inet_pton(AF_INET, "192.0.2.7", &sin.sin_addr);
        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0,
               "cache: unknown client, server gone");
        run_until_called(e, &r, WAIT_USEC);
        ok(r.calls == 1 && !r.name, "cache: nothing cached for it, no name");
        result_done(&r);
        res = resolver_free(res);

        /* A server that never answers: each lookup waits for the timeout
         * again, so the failure was not remembered. */
        {
                _cleanup_close_ int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                struct sockaddr_in ss = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                socklen_t len = sizeof(ss);

                if (fd < 0 || bind(fd, (struct sockaddr *) &ss, sizeof(ss)) < 0 ||
                    getsockname(fd, (struct sockaddr *) &ss, &len) < 0) {
                        ok(0, "cache: silent server socket: %m");
                        return;
                }
                snprintf(srv, sizeof srv, "127.0.0.1:%u", ntohs(ss.sin_port));
                is_int(resolver_new(e, servers, SILENT_TIMEOUT_USEC, &res), 0, "cache: resolver for a silent server");
                if (!res)
                        return;
                for (int round = 0; round < 2; round++) {
                        start = now_usec();
                        is_int(resolver_reverse(res, (struct sockaddr *) &sin, on_reverse, &r, NULL), 0,
                               "cache: silent server, lookup %d", round);
                        run_until_called(e, &r, WAIT_USEC);
                        took = now_usec() - start;
                        ok(r.calls == 1 && !r.name && took >= SILENT_TIMEOUT_USEC,
                           "cache: timed out after %llu ms, so it asked (%d)",
                           (unsigned long long) (took / USEC_PER_MSEC), round);
                        result_done(&r);
                }
        }
        res = resolver_free(res);
}

int main(void) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        char server[32];
        char *servers[] = { server, NULL };
        char *bad_servers[] = { (char *) "not-an-address", NULL };
        Resolver *res = NULL, *tmp = NULL;
        const char *script, *why = NULL;
        int k;

        (void) signal(SIGPIPE, SIG_IGN);
        if (sd_event_new(&e) < 0) {
                ok(0, "sd_event_new");
                return tap_done();
        }

        is_int(resolver_new(e, bad_servers, LOOKUP_TIMEOUT_USEC, &tmp), -EINVAL, "server must be an address");
        ok(!tmp, "nothing returned on failure");
        {
                char *v6[] = { (char *) "::1", (char *) "[::1]:5353", (char *) "127.0.0.1", NULL };

                is_int(resolver_new(e, v6, LOOKUP_TIMEOUT_USEC, &tmp), 0, "IPv6 and default-port servers accepted");
                tmp = resolver_free(tmp);
        }

        test_silent(e);

        script = dnsserver_path();
        ok(script != NULL, "tests/integration/dnsserver.py found");
        if (!script)
                return tap_done();

        k = dns_start(script, &why);
        if (k == -ENOENT) {
                tap_skip("MX, reverse, hosts and route lookups", why);
                dns_stop();
                return tap_done();
        }
        ok(k == 0, "unbound test server answers on 127.0.0.1:%u%s%s", dns_port, why ? ": " : "", why ?: "");
        if (k < 0) {
                dns_stop();
                return tap_done();
        }

        snprintf(server, sizeof(server), "127.0.0.1:%u", dns_port);
        is_int(resolver_new(e, servers, LOOKUP_TIMEOUT_USEC, &res), 0, "resolver_new with a configured server");
        if (res) {
                test_mx_order(e, res);
                test_mx_shuffle(e, res);
                test_mx_special(e, res);
                test_reverse(e, res);
                test_cancel(e, res);
                test_hosts(e, res);
                test_route(e, res);
                res = resolver_free(res);
                test_reverse_cache(e, server);
        }

        dns_stop();
        return tap_done();
}
