/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Listening sockets: taken from systemd (sd_listen_fds_with_names, matched
 * to configured listeners by FileDescriptorName, not by order) or bound by
 * the daemon itself, IPv4 or IPv6 ("::" is dual-stack). Accepts on the main
 * loop and hands each connection to manager_new_connection().
 */

#include <stdbool.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <systemd/sd-event.h>

#include "config.h"

typedef struct Manager Manager;

/* RFC-independent: the kernel caps it at net.core.somaxconn anyway. */
#define LISTEN_BACKLOG 4096

typedef struct Listener {
        struct Listener *next;
        Manager *manager;
        char *name;
        char *address;                  /* configured address text */
        uint16_t port;
        int fd;
        bool from_systemd;
        sd_event_source *source;
        const ListenerConfig *config;   /* in manager->config */
        uint64_t n_sessions;
        char local[INET6_ADDRSTRLEN];   /* for the log: interface address */
} Listener;

/* fd >= 0: a socket passed by systemd (checked to be a listening stream
 * socket); fd < 0: bind address:port ourselves. */
int listener_new(Manager *m, const ListenerConfig *c, int fd, Listener **ret);
Listener *listener_free(Listener *l);
/* Stop accepting (shutdown) without closing systemd's socket. */
void listener_disable(Listener *l);
