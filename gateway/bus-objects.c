/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Read-only D-Bus views of the running configuration (docs/dbus-api.md,
 * "Configuration objects"): one object per listener, mail flow policy,
 * sender group, route, destination, HTTPS interface and LDAP profile under
 * /org/tlsgw/Gateway1/<kind>/<name>, the global settings at
 * /org/tlsgw/Gateway1/global, and the ObjectManager on /org/tlsgw/Gateway1.
 *
 * Every property is described once, in one table per kind (name, D-Bus
 * type, field offset or a function computing it); the same table builds the
 * sd-bus vtable, answers property reads and renders each object for change
 * detection after a commit or reload. Objects are looked up in m->config at
 * each call: no pointer into a Config survives a configuration swap.
 *
 * What it does not do: it changes nothing (staging lives in bus-manager.c)
 * and never exposes a secret (an LDAP profile shows only whether it has a
 * bind password). It does not log above debug.
 *
 * Returns negative errno from registration; emission errors after a commit
 * are not the caller's concern and are only logged at debug level.
 */

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "bus.h"
#include "config.h"
#include "listener.h"
#include "log.h"
#include "manager.h"
#include "util/macro.h"
#include "util/parse.h"

#define BUS_IFACE_GLOBAL        "org.tlsgw.Gateway1.Global"
#define BUS_PATH_GLOBAL         BUS_PATH "/global"

/* The largest property table (the listener has 20); the vtables are built
 * into fixed static storage from the tables at registration. */
#define OBJECT_PROPS_MAX 24

/* A RouteHost as "host:port" or "[v6]:port": 253 octets of name (RFC 1035
 * 2.3.4), brackets, colon and five digits. */
#define ROUTE_HOST_STRLEN (253 + 2 + 1 + 5 + 1)

/* One property value, as computed from a configuration object. */
typedef struct PropValue {
        const char *s;                  /* 's'; NULL reads as "" */
        char **strv;                    /* 'as', NULL-terminated; NULL reads as empty */
        char **strv_owned;              /* freed by prop_value_done() */
        uint64_t u;                     /* 'q', 'u', 't' */
        bool b;                         /* 'b' */
} PropValue;

typedef int (*prop_compute_t)(Manager *m, const void *obj, PropValue *ret);

typedef struct PropDesc {
        const char *name;               /* CamelCase of the file's key */
        const char *signature;          /* "s", "as", "q", "u", "t" or "b" */
        size_t offset;                  /* of the field read when compute is NULL */
        prop_compute_t compute;         /* for enums, lists of structs, derived values */
        bool live;                      /* runtime state, not configuration: no signal */
} PropDesc;

typedef struct ObjectKind {
        const char *kind;               /* path component, also the ConfigKind string */
        const char *interface;
        const PropDesc *props;
        size_t n_props;
        bool global;                    /* the Config itself, one fixed object */
        /* Where the objects are in a Config: an array of elem_size
         * structs at array_offset with its count at count_offset; the
         * name (path component) is the string at name_offset. */
        size_t array_offset;
        size_t count_offset;
        size_t elem_size;
        size_t name_offset;
} ObjectKind;

/* ---- value helpers ---- */

static void prop_value_done(PropValue *v) {
        strv_free(v->strv_owned);
        v->strv_owned = NULL;
}

static const void *field_at(const void *obj, size_t offset) {
        return (const uint8_t *) obj + offset;
}

static int prop_read_field(const PropDesc *p, const void *obj, PropValue *ret) {
        const void *f = field_at(obj, p->offset);

        switch (p->signature[0]) {
        case 's':
                ret->s = *(char * const *) f;
                return 0;
        case 'a':
                ret->strv = *(char ** const *) f;
                return 0;
        case 'q':
                ret->u = *(const uint16_t *) f;
                return 0;
        case 'u':
                ret->u = *(const uint32_t *) f;
                return 0;
        case 't':
                ret->u = *(const uint64_t *) f;
                return 0;
        case 'b':
                ret->b = *(const bool *) f;
                return 0;
        default:
                return -EINVAL;
        }
}

static int prop_value(Manager *m, const PropDesc *p, const void *obj, PropValue *ret) {
        *ret = (PropValue) {};
        if (p->compute)
                return p->compute(m, obj, ret);
        return prop_read_field(p, obj, ret);
}

/* ---- computed properties ---- */

static int listener_tls(Manager *m, const void *obj, PropValue *ret) {
        ret->s = tls_inbound_to_string(((const ListenerConfig *) obj)->tls);
        return 0;
}

/* Open sessions of the listener of that name, read from the manager's
 * live listener list at call time. */
static int listener_sessions(Manager *m, const void *obj, PropValue *ret) {
        const ListenerConfig *lc = obj;

        ret->u = 0;
        if (!m)
                return 0;
        for (const Listener *l = m->listeners; l; l = l->next)
                if (l->name && lc->name && streq(l->name, lc->name))
                        ret->u += l->n_sessions;
        return 0;
}

static int policy_action(Manager *m, const void *obj, PropValue *ret) {
        ret->s = policy_action_to_string(((const MailFlowPolicy *) obj)->action);
        return 0;
}

/* -1 inherits the listener's mode: shown as "". */
static int policy_tls(Manager *m, const void *obj, PropValue *ret) {
        const MailFlowPolicy *p = obj;

        ret->s = p->tls < 0 ? "" : tls_inbound_to_string((TlsInbound) p->tls);
        return 0;
}

static int sender_group_sources(Manager *m, const void *obj, PropValue *ret) {
        const SenderGroup *sg = obj;
        _cleanup_strv_free_ char **l = NULL;

        l = calloc(sg->n_sources + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < sg->n_sources; i++) {
                char buf[CIDR_STRLEN];

                l[i] = strdup(cidr_to_string(&sg->sources[i], buf, sizeof(buf)) ?: "");
                if (!l[i])
                        return -ENOMEM;
        }
        ret->strv = ret->strv_owned = TAKE_PTR(l);
        return 0;
}

/* Position in match order (the file's order), 1 = tried first. */
static int sender_group_order(Manager *m, const void *obj, PropValue *ret) {
        const SenderGroup *sg = obj;

        ret->u = 0;
        if (m && m->config && m->config->n_sender_groups > 0 &&
            sg >= m->config->sender_groups && sg < m->config->sender_groups + m->config->n_sender_groups)
                ret->u = (uint64_t) (sg - m->config->sender_groups) + 1;
        return 0;
}

static int route_kind(Manager *m, const void *obj, PropValue *ret) {
        ret->s = route_kind_to_string(((const RouteConfig *) obj)->kind);
        return 0;
}

static int route_hosts(Manager *m, const void *obj, PropValue *ret) {
        const RouteConfig *r = obj;
        _cleanup_strv_free_ char **l = NULL;

        l = calloc(r->n_hosts + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < r->n_hosts; i++) {
                const char *h = r->hosts[i].host ?: "";
                char buf[ROUTE_HOST_STRLEN];

                /* An IPv6 literal needs brackets before the port, as in
                 * the file's "[IPV6]:PORT" form. */
                (void) snprintf(buf, sizeof(buf), strchr(h, ':') ? "[%s]:%u" : "%s:%u",
                                h, (unsigned) r->hosts[i].port);
                l[i] = strdup(buf);
                if (!l[i])
                        return -ENOMEM;
        }
        ret->strv = ret->strv_owned = TAKE_PTR(l);
        return 0;
}

static int destination_tls(Manager *m, const void *obj, PropValue *ret) {
        ret->s = tls_outbound_to_string(((const DestinationConfig *) obj)->tls);
        return 0;
}

/* The secret itself never leaves the daemon (docs/dbus-api.md). */
static int ldap_has_bind_password(Manager *m, const void *obj, PropValue *ret) {
        ret->b = !isempty(((const LdapConfig *) obj)->bind_password);
        return 0;
}

/* ---- the property tables ---- */

#define FIELD(n, sig, type, member) { .name = n, .signature = sig, .offset = offsetof(type, member) }
#define COMPUTED(n, sig, fn) { .name = n, .signature = sig, .compute = fn }

static const PropDesc listener_props[] = {
        FIELD("Name",                   "s",  ListenerConfig, name),
        FIELD("Address",                "s",  ListenerConfig, address),
        FIELD("Port",                   "q",  ListenerConfig, port),
        FIELD("Hostname",               "s",  ListenerConfig, hostname),
        FIELD("AcceptedDomains",        "as", ListenerConfig, accepted_domains),
        FIELD("DefaultPolicy",          "s",  ListenerConfig, default_policy_name),
        COMPUTED("Tls",                 "s",  listener_tls),
        FIELD("Certificates",           "as", ListenerConfig, certificates),
        FIELD("TlsMinVersion",          "s",  ListenerConfig, tls_min_version),
        FIELD("ClientCa",               "s",  ListenerConfig, client_ca),
        FIELD("Ktls",                   "b",  ListenerConfig, ktls),
        FIELD("MaxConnections",         "u",  ListenerConfig, max_connections),
        FIELD("MaxConnectionsPerIp",    "u",  ListenerConfig, max_connections_per_ip),
        FIELD("MaxLine",                "u",  ListenerConfig, limits.max_line),
        FIELD("MaxRecipients",          "u",  ListenerConfig, limits.max_recipients),
        FIELD("MaxMessageSize",         "t",  ListenerConfig, limits.max_message_size),
        FIELD("MaxErrors",              "u",  ListenerConfig, limits.max_errors),
        FIELD("IdleTimeout",            "t",  ListenerConfig, limits.idle_timeout),
        FIELD("DataTimeout",            "t",  ListenerConfig, limits.data_timeout),
        { .name = "Sessions", .signature = "t", .compute = listener_sessions, .live = true },
};

static const PropDesc policy_props[] = {
        FIELD("Name",                   "s",  MailFlowPolicy, name),
        COMPUTED("Action",              "s",  policy_action),
        COMPUTED("Tls",                 "s",  policy_tls),
        FIELD("MaxRecipients",          "u",  MailFlowPolicy, limits.max_recipients),
        FIELD("MaxMessageSize",         "t",  MailFlowPolicy, limits.max_message_size),
        FIELD("MaxConnectionsPerIp",    "u",  MailFlowPolicy, max_connections_per_ip),
};

static const PropDesc sender_group_props[] = {
        FIELD("Name",                   "s",  SenderGroup, name),
        FIELD("Policy",                 "s",  SenderGroup, policy_name),
        COMPUTED("Sources",             "as", sender_group_sources),
        COMPUTED("Order",               "u",  sender_group_order),
};

static const PropDesc route_props[] = {
        FIELD("Domain",                 "s",  RouteConfig, domain),
        COMPUTED("Kind",                "s",  route_kind),
        COMPUTED("Hosts",               "as", route_hosts),
        FIELD("Directory",              "s",  RouteConfig, directory),
};

static const PropDesc destination_props[] = {
        FIELD("Domain",                 "s",  DestinationConfig, domain),
        COMPUTED("Tls",                 "s",  destination_tls),
        FIELD("Ktls",                   "b",  DestinationConfig, ktls),
        FIELD("CaFile",                 "s",  DestinationConfig, ca_file),
        FIELD("TlsMinVersion",          "s",  DestinationConfig, tls_min_version),
        FIELD("MaxConnections",         "u",  DestinationConfig, max_connections),
        FIELD("MaxMessagesPerConnection", "u", DestinationConfig, max_messages_per_connection),
        FIELD("MaxRecipientsPerMessage", "u", DestinationConfig, max_recipients_per_message),
};

static const PropDesc https_props[] = {
        FIELD("Name",                   "s",  HttpsConfig, name),
        FIELD("Address",                "s",  HttpsConfig, address),
        FIELD("Port",                   "q",  HttpsConfig, port),
        FIELD("Hostname",               "s",  HttpsConfig, hostname),
        FIELD("Certificate",            "s",  HttpsConfig, certificate),
};

static const PropDesc ldap_props[] = {
        FIELD("Name",                   "s",  LdapConfig, name),
        FIELD("Uri",                    "s",  LdapConfig, uri),
        FIELD("Base",                   "s",  LdapConfig, base),
        FIELD("BindDn",                 "s",  LdapConfig, bind_dn),
        COMPUTED("HasBindPassword",     "b",  ldap_has_bind_password),
        FIELD("CaFile",                 "s",  LdapConfig, ca_file),
        FIELD("Certificate",            "s",  LdapConfig, certificate),
};

static const PropDesc global_props[] = {
        FIELD("Hostname",               "s",  Config, hostname),
        FIELD("AlertRecipients",        "as", Config, alert_recipients),
        FIELD("AdminGroup",             "s",  Config, admin_group),
        FIELD("TlsClientCertificate",   "s",  Config, tls_client.certificate),
        FIELD("TlsClientCaFile",        "s",  Config, tls_client.ca_file),
        FIELD("TlsAlertsEnabled",       "b",  Config, tls_alert_enabled),
        FIELD("TlsAlertInterval",       "t",  Config, tls_alert_interval),
        FIELD("QueueLifetime",          "t",  Config, queue.lifetime),
        FIELD("RetryMin",               "t",  Config, queue.retry_min),
        FIELD("RetryMax",               "t",  Config, queue.retry_max),
};

#define KIND(k, iface, table, type, array, count, key)                  \
        {                                                               \
                .kind = k,                                              \
                .interface = "org.tlsgw.Gateway1." iface,               \
                .props = table,                                         \
                .n_props = ELEMENTSOF(table),                           \
                .array_offset = offsetof(Config, array),                \
                .count_offset = offsetof(Config, count),                \
                .elem_size = sizeof(type),                              \
                .name_offset = offsetof(type, key),                     \
        }

/* Indexed by ConfigKind; the global object comes last. */
static const ObjectKind object_kinds[] = {
        [CONFIG_KIND_LISTENER]     = KIND("listener", "Listener", listener_props, ListenerConfig,
                                          listeners, n_listeners, name),
        [CONFIG_KIND_POLICY]       = KIND("policy", "MailFlowPolicy", policy_props, MailFlowPolicy,
                                          policies, n_policies, name),
        [CONFIG_KIND_SENDER_GROUP] = KIND("sendergroup", "SenderGroup", sender_group_props, SenderGroup,
                                          sender_groups, n_sender_groups, name),
        [CONFIG_KIND_ROUTE]        = KIND("route", "Route", route_props, RouteConfig,
                                          routes, n_routes, domain),
        [CONFIG_KIND_DESTINATION]  = KIND("destination", "Destination", destination_props, DestinationConfig,
                                          destinations, n_destinations, domain),
        [CONFIG_KIND_HTTPS]        = KIND("https", "HttpsInterface", https_props, HttpsConfig,
                                          https, n_https, name),
        [CONFIG_KIND_LDAP]         = KIND("ldap", "LdapProfile", ldap_props, LdapConfig,
                                          ldap, n_ldap, name),
        [_CONFIG_KIND_MAX] = {
                .kind = "global",
                .interface = BUS_IFACE_GLOBAL,
                .props = global_props,
                .n_props = ELEMENTSOF(global_props),
                .global = true,
        },
};

#define N_OBJECT_KINDS ELEMENTSOF(object_kinds)

/* ---- module state ---- */

/* One rendered object: its path and each property's value as text (NULL
 * for live properties, which are not compared). */
typedef struct ObjectSnapshot {
        char *path;
        const ObjectKind *kind;
        char **values;                  /* kind->n_props entries */
} ObjectSnapshot;

typedef struct Snapshot {
        ObjectSnapshot *objects;
        size_t n_objects;
} Snapshot;

/* One daemon has one Manager and one bus; the vtables point into this
 * storage and must outlive every slot, so they are static, built once. */
static sd_bus_vtable vtable_storage[N_OBJECT_KINDS][OBJECT_PROPS_MAX + 2];
static bool vtables_built;

typedef struct ObjectsState {
        Manager *manager;
        sd_bus *bus;                    /* not a reference: the state lives as long as the bus */
        Snapshot snapshot;              /* what subscribers were last told */
} ObjectsState;

static ObjectsState *objects_state;

/* ---- locating objects in a Config ---- */

static size_t kind_count(const ObjectKind *k, const Config *c) {
        if (!c)
                return 0;
        if (k->global)
                return 1;
        return *(const size_t *) field_at(c, k->count_offset);
}

static const void *kind_item(const ObjectKind *k, const Config *c, size_t i) {
        if (k->global)
                return c;
        return (const uint8_t *) *(void * const *) field_at(c, k->array_offset) + i * k->elem_size;
}

static const char *kind_item_name(const ObjectKind *k, const void *obj) {
        return *(char * const *) field_at(obj, k->name_offset);
}

static int kind_prefix(const ObjectKind *k, char *buf, size_t len) {
        int n = snprintf(buf, len, "%s/%s", BUS_PATH, k->kind);

        return n < 0 || (size_t) n >= len ? -ENAMETOOLONG : 0;
}

/* Longest kind prefix: BUS_PATH + "/" + "destination". */
#define KIND_PREFIX_MAX (sizeof(BUS_PATH) + 16)

static int kind_object_path(const ObjectKind *k, const void *obj, char **ret) {
        char prefix[KIND_PREFIX_MAX];
        int r;

        if (k->global) {
                char *p = strdup(BUS_PATH_GLOBAL);
                if (!p)
                        return -ENOMEM;
                *ret = p;
                return 0;
        }
        r = kind_prefix(k, prefix, sizeof(prefix));
        if (r < 0)
                return r;
        return sd_bus_path_encode(prefix, kind_item_name(k, obj) ?: "", ret);
}

static const void *kind_find(const ObjectKind *k, const Config *c, const char *name) {
        size_t n = kind_count(k, c);

        for (size_t i = 0; i < n; i++) {
                const void *obj = kind_item(k, c, i);
                const char *s = kind_item_name(k, obj);

                if (s && streq(s, name))
                        return obj;
        }
        return NULL;
}

static const ObjectKind *kind_by_interface(const char *interface) {
        for (size_t i = 0; i < N_OBJECT_KINDS; i++)
                if (streq(object_kinds[i].interface, interface))
                        return &object_kinds[i];
        return NULL;
}

static const PropDesc *kind_prop(const ObjectKind *k, const char *name) {
        for (size_t i = 0; i < k->n_props; i++)
                if (streq(k->props[i].name, name))
                        return &k->props[i];
        return NULL;
}

/* ---- sd-bus callbacks ---- */

static int append_value(sd_bus_message *reply, const PropDesc *p, const PropValue *v) {
        switch (p->signature[0]) {
        case 's':
                return sd_bus_message_append_basic(reply, 's', v->s ?: "");
        case 'a':
                return sd_bus_message_append_strv(reply, v->strv);
        case 'q': {
                uint16_t q = (uint16_t) v->u;
                return sd_bus_message_append_basic(reply, 'q', &q);
        }
        case 'u': {
                uint32_t u = (uint32_t) v->u;
                return sd_bus_message_append_basic(reply, 'u', &u);
        }
        case 't':
                return sd_bus_message_append_basic(reply, 't', &v->u);
        case 'b': {
                int b = v->b;
                return sd_bus_message_append_basic(reply, 'b', &b);
        }
        default:
                return -EINVAL;
        }
}

/* One getter for every property: the tables say what to read. userdata
 * is the object found by object_find() (or the Manager for the global
 * object, whose Config is read at call time). */
static int property_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                        sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = objects_state ? objects_state->manager : NULL;
        const ObjectKind *k;
        const PropDesc *p;
        const void *obj = userdata;
        PropValue v;
        int r;

        k = kind_by_interface(interface);
        if (!k)
                return -ENOENT;
        p = kind_prop(k, property);
        if (!p)
                return -ENOENT;
        if (k->global) {
                Manager *gm = userdata;
                obj = gm->config;
                m = gm;
        }
        if (!obj)
                return sd_bus_error_setf(error, BUS_ERROR_NOT_FOUND, "No configuration is loaded.");

        r = prop_value(m, p, obj, &v);
        if (r < 0)
                return r;
        r = append_value(reply, p, &v);
        prop_value_done(&v);
        return r;
}

/* Resolves /org/tlsgw/Gateway1/<kind>/<escaped name> in the running
 * configuration; 0 (no such object) for anything else, including deeper
 * paths. */
static int object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                       void **ret_found, sd_bus_error *error) {
        const ObjectKind *k = userdata;
        Manager *m = objects_state ? objects_state->manager : NULL;
        char prefix[KIND_PREFIX_MAX];
        _cleanup_free_ char *name = NULL;
        const void *obj;
        int r;

        if (!m || !m->config)
                return 0;
        r = kind_prefix(k, prefix, sizeof(prefix));
        if (r < 0)
                return r;
        r = sd_bus_path_decode(path, prefix, &name);
        if (r <= 0)
                return r;
        obj = kind_find(k, m->config, name);
        if (!obj)
                return 0;
        *ret_found = (void *) obj;
        return 1;
}

static int object_enumerate(sd_bus *bus, const char *prefix, void *userdata, char ***ret_nodes,
                            sd_bus_error *error) {
        const ObjectKind *k = userdata;
        Manager *m = objects_state ? objects_state->manager : NULL;
        _cleanup_strv_free_ char **l = NULL;
        size_t n;
        int r;

        n = m ? kind_count(k, m->config) : 0;
        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = kind_object_path(k, kind_item(k, m->config, i), &l[i]);
                if (r < 0)
                        return r;
        }
        *ret_nodes = TAKE_PTR(l);
        return 0;
}

/* ---- vtables from the tables ---- */

static int vtables_build(void) {
        if (vtables_built)
                return 0;

        for (size_t i = 0; i < N_OBJECT_KINDS; i++) {
                const ObjectKind *k = &object_kinds[i];
                sd_bus_vtable *v = vtable_storage[i];
                size_t j = 0;

                if (k->n_props > OBJECT_PROPS_MAX)
                        return -E2BIG;

                v[j++] = (sd_bus_vtable) SD_BUS_VTABLE_START(0);
                for (size_t p = 0; p < k->n_props; p++) {
                        /* Configuration changes only by a commit or reload,
                         * after which PropertiesChanged lists what changed
                         * as invalidated (values can be large lists);
                         * live counters emit nothing. */
                        uint64_t flags = k->props[p].live ? 0 : SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION;

                        v[j++] = (sd_bus_vtable) SD_BUS_PROPERTY(k->props[p].name, k->props[p].signature,
                                                                 property_get, 0, flags);
                }
                v[j++] = (sd_bus_vtable) SD_BUS_VTABLE_END;
        }

        vtables_built = true;
        return 0;
}

/* ---- snapshots and change signals ---- */

static int prop_render(Manager *m, const PropDesc *p, const void *obj, char **ret) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        PropValue v;
        FILE *f;
        int r;

        r = prop_value(m, p, obj, &v);
        if (r < 0)
                return r;

        f = open_memstream(&text, &size);
        if (!f) {
                prop_value_done(&v);
                return -ENOMEM;
        }
        switch (p->signature[0]) {
        case 's':
                fputs(v.s ?: "", f);
                break;
        case 'a':
                /* Each element terminated by the ASCII unit separator,
                 * which no configuration value contains, so ["a b"] and
                 * ["a", "b"] render differently. */
                for (char **i = v.strv; i && *i; i++) {
                        fputs(*i, f);
                        fputc('\x1f', f);
                }
                break;
        case 'b':
                fputs(v.b ? "true" : "false", f);
                break;
        default:
                fprintf(f, "%" PRIu64, v.u);
                break;
        }
        prop_value_done(&v);
        if (fclose(f) != 0 || !text)
                return -ENOMEM;
        *ret = TAKE_PTR(text);
        return 0;
}

static void object_snapshot_done(ObjectSnapshot *o) {
        if (o->values)
                for (size_t i = 0; i < o->kind->n_props; i++)
                        free(o->values[i]);
        free(o->values);
        free(o->path);
        *o = (ObjectSnapshot) {};
}

static void snapshot_done(Snapshot *s) {
        for (size_t i = 0; i < s->n_objects; i++)
                object_snapshot_done(&s->objects[i]);
        free(s->objects);
        *s = (Snapshot) {};
}

static int object_snapshot_build(Manager *m, const ObjectKind *k, const void *obj, ObjectSnapshot *ret) {
        ObjectSnapshot o = { .kind = k };
        int r;

        r = kind_object_path(k, obj, &o.path);
        if (r < 0)
                return r;
        o.values = calloc(k->n_props, sizeof(char *));
        if (!o.values) {
                object_snapshot_done(&o);
                return -ENOMEM;
        }
        for (size_t i = 0; i < k->n_props; i++) {
                if (k->props[i].live)
                        continue;
                r = prop_render(m, &k->props[i], obj, &o.values[i]);
                if (r < 0) {
                        object_snapshot_done(&o);
                        return r;
                }
        }
        *ret = o;
        return 0;
}

static int snapshot_build(Manager *m, Snapshot *ret) {
        Snapshot s = {};
        size_t n = 0;
        int r;

        for (size_t i = 0; i < N_OBJECT_KINDS; i++)
                n += kind_count(&object_kinds[i], m->config);
        if (n > 0) {
                s.objects = calloc(n, sizeof(ObjectSnapshot));
                if (!s.objects)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < N_OBJECT_KINDS; i++) {
                const ObjectKind *k = &object_kinds[i];
                size_t c = kind_count(k, m->config);

                for (size_t j = 0; j < c; j++) {
                        r = object_snapshot_build(m, k, kind_item(k, m->config, j),
                                                  &s.objects[s.n_objects]);
                        if (r < 0) {
                                snapshot_done(&s);
                                return r;
                        }
                        s.n_objects++;
                }
        }
        *ret = s;
        return 0;
}

static const ObjectSnapshot *snapshot_find(const Snapshot *s, const char *path) {
        for (size_t i = 0; i < s->n_objects; i++)
                if (streq(s->objects[i].path, path))
                        return &s->objects[i];
        return NULL;
}

static void emit_changed(sd_bus *bus, const ObjectSnapshot *old, const ObjectSnapshot *new) {
        const ObjectKind *k = new->kind;
        const char *names[OBJECT_PROPS_MAX + 1];
        size_t n = 0;
        int r;

        for (size_t i = 0; i < k->n_props; i++) {
                if (k->props[i].live)
                        continue;
                if (!streq(old->values[i] ?: "", new->values[i] ?: ""))
                        names[n++] = k->props[i].name;
        }
        if (n == 0)
                return;
        names[n] = NULL;

        r = sd_bus_emit_properties_changed_strv(bus, new->path, k->interface, (char **) names);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged for %s: %m", new->path);
}

static void emit_diff(sd_bus *bus, const Snapshot *old, const Snapshot *new) {
        int r;

        for (size_t i = 0; i < old->n_objects; i++) {
                const ObjectSnapshot *o = &old->objects[i];

                if (snapshot_find(new, o->path))
                        continue;
                r = sd_bus_emit_interfaces_removed(bus, o->path, o->kind->interface, NULL);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit InterfacesRemoved for %s: %m", o->path);
        }

        for (size_t i = 0; i < new->n_objects; i++) {
                const ObjectSnapshot *n = &new->objects[i];
                const ObjectSnapshot *o = snapshot_find(old, n->path);

                if (o) {
                        emit_changed(bus, o, n);
                        continue;
                }
                r = sd_bus_emit_interfaces_added(bus, n->path, n->kind->interface, NULL);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit InterfacesAdded for %s: %m", n->path);
        }
}

void bus_objects_config_changed(Manager *m) {
        ObjectsState *st = objects_state;
        Snapshot s;
        int r;

        if (!st || st->manager != m || !st->bus)
                return;

        r = snapshot_build(m, &s);
        if (r < 0) {
                log_debug_errno(r, "Failed to render configuration objects: %m");
                return;
        }
        emit_diff(st->bus, &st->snapshot, &s);
        snapshot_done(&st->snapshot);
        st->snapshot = s;
}

/* ---- registration ---- */

static void objects_state_destroy(void *userdata) {
        ObjectsState *st = userdata;

        if (!st)
                return;
        snapshot_done(&st->snapshot);
        if (objects_state == st)
                objects_state = NULL;
        free(st);
}

int bus_objects_register(Manager *m, sd_bus *bus) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        ObjectsState *st;
        int r;

        if (!m || !bus)
                return -EINVAL;
        if (objects_state)
                return -EBUSY;

        r = vtables_build();
        if (r < 0)
                return r;

        st = calloc(1, sizeof(ObjectsState));
        if (!st)
                return -ENOMEM;
        st->manager = m;
        st->bus = bus;
        r = snapshot_build(m, &st->snapshot);
        if (r < 0) {
                free(st);
                return r;
        }

        /* The ObjectManager's slot owns the state: the bus frees it when
         * the bus goes, which also drops every vtable using it. */
        r = sd_bus_add_object_manager(bus, &slot, BUS_PATH);
        if (r < 0) {
                objects_state_destroy(st);
                return r;
        }
        objects_state = st;
        (void) sd_bus_slot_set_userdata(slot, st);
        r = sd_bus_slot_set_destroy_callback(slot, objects_state_destroy);
        if (r < 0) {
                objects_state_destroy(st);
                return r;
        }
        r = sd_bus_slot_set_floating(slot, 1);
        if (r < 0)
                return r;               /* slot freed at scope end, state with it */

        for (size_t i = 0; i < N_OBJECT_KINDS; i++) {
                const ObjectKind *k = &object_kinds[i];
                char prefix[KIND_PREFIX_MAX];

                if (k->global) {
                        r = sd_bus_add_object_vtable(bus, NULL, BUS_PATH_GLOBAL, k->interface,
                                                     vtable_storage[i], m);
                        if (r < 0)
                                return r;
                        continue;
                }

                r = kind_prefix(k, prefix, sizeof(prefix));
                if (r < 0)
                        return r;
                r = sd_bus_add_fallback_vtable(bus, NULL, prefix, k->interface, vtable_storage[i],
                                               object_find, (void *) k);
                if (r < 0)
                        return r;
                r = sd_bus_add_node_enumerator(bus, NULL, prefix, object_enumerate, (void *) k);
                if (r < 0)
                        return r;
        }

        return 0;
}
