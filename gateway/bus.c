/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The system bus connection of tlsgwd: connect (DBUS_SYSTEM_BUS_ADDRESS is
 * honoured by sd-bus), attach to the main loop, let every bus-*.c module
 * register its own interfaces (one vtable per path and interface), then
 * take the well-known name, so that nobody reaches a half-registered
 * service. The caller checks shared by all modules live here too.
 *
 * Not here: any method or property (bus-manager.c, bus-cert.c,
 * bus-objects.c, bus-queue.c). A daemon that cannot reach the bus or own
 * the name logs a warning and keeps relaying mail. Returns negative errno.
 */

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "manager.h"
#include "util/macro.h"

/* getpwuid_r()/getgrnam_r() buffers: sysconf() may say "no limit"; group
 * entries with many members need more, so the buffer grows up to this. */
#define BUS_NSS_BUFFER_MAX (1024U * 1024U)

int bus_open(Manager *m) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        if (m->bus)
                return 0;

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                log_warning_errno(r, "Cannot connect to the system bus; gwctl will not reach this daemon "
                                  "(mail is relayed as usual): %m");
                return 0;
        }
        (void) sd_bus_set_description(bus, "tlsgwd");
        r = sd_bus_attach_event(bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Cannot attach the bus to the event loop: %m");

        r = bus_manager_register(m, bus);
        if (r < 0)
                return log_error_errno(r, "Cannot register the manager interface: %m");
        r = bus_cert_register(m, bus);
        if (r < 0)
                return log_error_errno(r, "Cannot register the certificate interfaces: %m");
        /* Also adds the ObjectManager on BUS_PATH. */
        r = bus_objects_register(m, bus);
        if (r < 0)
                return log_error_errno(r, "Cannot register the configuration objects: %m");
        r = bus_queue_register(m, bus);
        if (r < 0)
                return log_error_errno(r, "Cannot register the queue interfaces: %m");

        r = sd_bus_request_name(bus, BUS_NAME, 0);
        if (r < 0)
                log_warning_errno(r, "Cannot own the bus name %s; gwctl will not reach this daemon "
                                  "(is another tlsgwd running, or is the policy file missing?): %m", BUS_NAME);
        else
                log_debug("Bus name %s acquired.", BUS_NAME);

        m->bus = TAKE_PTR(bus);
        return 0;
}

void bus_close(Manager *m) {
        if (!m || !m->bus)
                return;
        /* Flushes replies and signals still queued, then drops every slot
         * (and with them the modules' userdata). */
        m->bus = sd_bus_flush_close_unref(m->bus);
}

static int bus_sender_creds(sd_bus_message *msg, uint64_t mask, sd_bus_creds **ret) {
        /* AUGMENT: the bus driver tells the peer's PID and UID; the rest
         * (effective IDs, supplementary groups) comes from /proc of that
         * PID, which is as good as the driver can do on the classic bus. */
        return sd_bus_query_sender_creds(msg, mask | SD_BUS_CREDS_AUGMENT, ret);
}

static int nss_buffer(size_t *size, char **buf) {
        long s = sysconf(_SC_GETPW_R_SIZE_MAX);
        size_t n = *size ? *size * 2 : (s > 0 ? (size_t) s : 4096);

        if (n > BUS_NSS_BUFFER_MAX)
                return -ERANGE;
        free(*buf);
        *buf = malloc(n);
        if (!*buf)
                return -ENOMEM;
        *size = n;
        return 0;
}

static int group_gid(const char *name, gid_t *ret) {
        _cleanup_free_ char *buf = NULL;
        struct group gr, *result = NULL;
        size_t size = 0;
        int r;

        for (;;) {
                r = nss_buffer(&size, &buf);
                if (r < 0)
                        return r;
                r = getgrnam_r(name, &gr, buf, size, &result);
                if (r != ERANGE)
                        break;
        }
        if (r != 0)
                return -r;
        if (!result)
                return -ENOENT;
        *ret = gr.gr_gid;
        return 0;
}

static bool creds_in_group(sd_bus_creds *creds, gid_t gid) {
        const gid_t *gids = NULL;
        gid_t egid;
        int n;

        if (sd_bus_creds_get_egid(creds, &egid) >= 0 && egid == gid)
                return true;
        n = sd_bus_creds_get_supplementary_gids(creds, &gids);
        for (int i = 0; i < n; i++)
                if (gids[i] == gid)
                        return true;
        return false;
}

int bus_check_admin(Manager *m, sd_bus_message *msg, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        const char *group = m->config ? m->config->admin_group : NULL;
        uid_t euid;
        gid_t gid = 0;
        int r;

        r = bus_sender_creds(msg, SD_BUS_CREDS_EUID | SD_BUS_CREDS_EGID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0) {
                log_debug_errno(r, "Cannot identify the caller %s: %m", sd_bus_message_get_sender(msg) ?: "(unknown)");
                sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "The caller cannot be identified, so it may not change the gateway configuration.");
                return -EPERM;
        }
        if (euid == 0)
                return 0;
        if (!isempty(group)) {
                r = group_gid(group, &gid);
                if (r >= 0 && creds_in_group(creds, gid))
                        return 0;
                if (r < 0)
                        log_debug_errno(r, "Admin group '%s' cannot be resolved: %m", group);
                sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Changing the gateway configuration requires root or membership of group '%s'.",
                                  group);
        } else
                sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Changing the gateway configuration requires root.");
        return -EPERM;
}

int bus_caller(sd_bus_message *msg, uid_t *ret_uid, char **ret_name) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        _cleanup_free_ char *buf = NULL;
        struct passwd pw, *result = NULL;
        size_t size = 0;
        char *name;
        uid_t uid;
        int r;

        r = bus_sender_creds(msg, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return r;

        if (ret_name) {
                for (;;) {
                        r = nss_buffer(&size, &buf);
                        if (r < 0)
                                break;
                        r = getpwuid_r(uid, &pw, buf, size, &result);
                        if (r != ERANGE)
                                break;
                }
                if (r == 0 && result && !isempty(pw.pw_name))
                        name = strdup(pw.pw_name);
                else if (asprintf(&name, "uid %u", (unsigned) uid) < 0)
                        name = NULL;
                if (!name)
                        return -ENOMEM;
                *ret_name = name;
        }
        if (ret_uid)
                *ret_uid = uid;
        return 0;
}
