/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The D-Bus service org.tlsgw.Gateway1 (docs/dbus-api.md is the reference).
 *
 * bus.c connects to the system bus on the main loop, registers every
 * bus-*.c module and requests the name; a daemon without a bus keeps
 * serving mail (a warning is logged). Handlers run on the main thread and
 * call manager_*() / staging_*() / certstore_*(); they hold no state of
 * their own. Methods that change state or reveal secrets call
 * bus_check_admin() first.
 */

#include <stdbool.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

typedef struct Manager Manager;

#define BUS_NAME                "org.tlsgw.Gateway1"
#define BUS_PATH                "/org/tlsgw/Gateway1"
#define BUS_IFACE_MANAGER       "org.tlsgw.Gateway1.Manager"
#define BUS_IFACE_CERTIFICATE   "org.tlsgw.Gateway1.Certificate"      /* per certificate object */
#define BUS_IFACE_CERTIFICATES  "org.tlsgw.Gateway1.Certificates"     /* store methods on BUS_PATH */
#define BUS_IFACE_QUEUE         "org.tlsgw.Gateway1.Queue"
#define BUS_IFACE_DIAGNOSTICS   "org.tlsgw.Gateway1.Diagnostics"
#define BUS_ERROR_INVALID       "org.tlsgw.Gateway1.Error.Invalid"
#define BUS_ERROR_NOT_FOUND     "org.tlsgw.Gateway1.Error.NotFound"
#define BUS_ERROR_EXISTS        "org.tlsgw.Gateway1.Error.Exists"
#define BUS_ERROR_IN_USE        "org.tlsgw.Gateway1.Error.InUse"
#define BUS_ERROR_NOTHING_PENDING "org.tlsgw.Gateway1.Error.NothingPending"
#define BUS_ERROR_PENDING_BY_OTHER "org.tlsgw.Gateway1.Error.PendingByOther"
#define BUS_ERROR_APPLY_FAILED  "org.tlsgw.Gateway1.Error.ApplyFailed"
#define BUS_ERROR_BAD_PASSWORD  "org.tlsgw.Gateway1.Error.BadPassword"
#define BUS_ERROR_FAILED        "org.tlsgw.Gateway1.Error.Failed"

/* Connects, registers, requests the name. Returns <0 only for programming
 * errors; no bus is a warning and 0. */
int bus_open(Manager *m);
void bus_close(Manager *m);

/* Root, or a member of the configured admin_group; otherwise sets
 * AccessDenied in *error and returns -EPERM. */
int bus_check_admin(Manager *m, sd_bus_message *msg, sd_bus_error *error);
/* The caller's UID and user name ("uid N" when it has none). */
int bus_caller(sd_bus_message *msg, uid_t *ret_uid, char **ret_name);

/* Registration of each module's objects: bus-manager.c (Manager
 * interface, staging, history), bus-cert.c (Certificates interface and
 * certificate objects), bus-objects.c (configuration objects, global,
 * ObjectManager), bus-queue.c (Queue and Diagnostics interfaces). */
int bus_manager_register(Manager *m, sd_bus *bus);
int bus_cert_register(Manager *m, sd_bus *bus);
int bus_objects_register(Manager *m, sd_bus *bus);
int bus_queue_register(Manager *m, sd_bus *bus);

/* After a commit/reload: PropertiesChanged / InterfacesAdded / -Removed for
 * the configuration objects and the manager's properties. */
void bus_objects_config_changed(Manager *m);
void bus_manager_emit_changed(Manager *m, const char *property);
/* After a certificate operation. */
void bus_cert_emit_changed(Manager *m, const char *name);
