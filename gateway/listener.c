/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Listening sockets and accept. A passed fd is verified to be a listening
 * TCP socket; a bound one gets SO_REUSEADDR and, for "::", dual-stack.
 * Accepts are batched per wake-up so one busy listener cannot starve the
 * loop. Returns negative errno; logs only accept failures.
 */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <systemd/sd-daemon.h>

#include "listener.h"
#include "log.h"
#include "manager.h"
#include "util/macro.h"
#include "util/parse.h"

/* Connections taken per wake-up before yielding to other sources. */
#define LISTENER_ACCEPT_BATCH 64

static int listener_on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Listener *l = userdata;

        for (unsigned i = 0; i < LISTENER_ACCEPT_BATCH; i++) {
                struct sockaddr_storage peer;
                socklen_t peerlen = sizeof peer;
                int cfd;

                cfd = accept4(fd, (struct sockaddr *) &peer, &peerlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                return 0;
                        /* EMFILE/ENFILE/ENOBUFS: log and keep serving; the
                         * pending connection stays in the backlog. */
                        log_warning_errno(-errno, "Listener %s: accept failed: %m", l->name);
                        return 0;
                }
                manager_new_connection(l->manager, l, cfd, (struct sockaddr *) &peer, peerlen);
        }
        return 0;
}

static int listener_bind(const ListenerConfig *c, int *ret_fd) {
        struct sockaddr_storage sa;
        socklen_t salen;
        _cleanup_close_ int fd = -EBADF;
        int one = 1, zero = 0, r;

        r = sockaddr_parse(c->address, c->port, &sa, &salen);
        if (r < 0)
                return r;

        fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0)
                return -errno;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
                return -errno;
        if (sa.ss_family == AF_INET6 &&
            IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *) &sa)->sin6_addr) &&
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, salen) < 0)
                return -errno;
        if (listen(fd, LISTEN_BACKLOG) < 0)
                return -errno;

        *ret_fd = TAKE_FD(fd);
        return 0;
}

int listener_new(Manager *m, const ListenerConfig *c, int fd, Listener **ret) {
        Listener *l;
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int r;

        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->manager = m;
        l->fd = -EBADF;
        l->name = strdup(c->name);
        l->address = strdup(c->address);
        if (!l->name || !l->address) {
                r = -ENOMEM;
                goto fail;
        }
        l->port = c->port;
        l->config = c;

        if (fd >= 0) {
                r = sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1);
                if (r < 0)
                        goto fail;
                if (r == 0) {
                        r = -ENOTSOCK;
                        goto fail;
                }
                l->fd = fd;
                l->from_systemd = true;
                r = fcntl(fd, F_GETFL);
                if (r < 0 || fcntl(fd, F_SETFL, r | O_NONBLOCK) < 0) {
                        r = -errno;
                        goto fail;
                }
        } else {
                r = listener_bind(c, &l->fd);
                if (r < 0)
                        goto fail;
        }

        if (getsockname(l->fd, (struct sockaddr *) &sa, &salen) == 0)
                sockaddr_to_string((struct sockaddr *) &sa, l->local, sizeof l->local);
        else
                snprintf(l->local, sizeof l->local, "%s", c->address);

        r = sd_event_add_io(m->event, &l->source, l->fd, EPOLLIN, listener_on_accept, l);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(l->source, l->name);

        *ret = l;
        return 0;
fail:
        if (l->from_systemd)
                l->fd = -EBADF;         /* the caller still owns it */
        listener_free(l);
        return r;
}

void listener_disable(Listener *l) {
        if (l)
                l->source = sd_event_source_disable_unref(l->source);
}

Listener *listener_free(Listener *l) {
        if (!l)
                return NULL;
        listener_disable(l);
        safe_close(l->fd);
        free(l->name);
        free(l->address);
        free(l);
        return NULL;
}
