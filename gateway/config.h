/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The gateway configuration: typed objects read from one libconfig file
 * (see docs/configuration.md) or built from the built-in defaults.
 *
 * A Config is immutable once loaded and validated: the manager swaps whole
 * Config objects on reload (reference counted, so sessions that started
 * under the old one keep it until they end). Every object carries the line
 * it was defined on so later checks can name file and line.
 * Returns negative errno; parse/validation errors also fill *ret_error with
 * "FILE:LINE: problem" text for the caller to log.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/parse.h"

/* RFC 5321 4.5.3.1.6: text line 1000 octets including CRLF. */
#define SMTP_LINE_MAX_DEFAULT 1000
/* RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted. */
#define SMTP_RCPT_MAX_DEFAULT 100
#define SMTP_MESSAGE_SIZE_DEFAULT (10ULL * 1024 * 1024)
#define SMTP_ERRORS_MAX_DEFAULT 10
/* RFC 5321 4.5.3.2.7: server timeout at least 5 minutes. */
#define SMTP_IDLE_TIMEOUT_DEFAULT (300ULL * 1000000ULL)
/* RFC 5321 4.5.3.2.6 is 10 min for the client's "." wait; we bound one
 * DATA block read the same as a command. */
#define SMTP_DATA_TIMEOUT_DEFAULT (300ULL * 1000000ULL)
#define LISTENER_CONNECTIONS_MAX_DEFAULT 5000
#define LISTENER_CONNECTIONS_PER_IP_DEFAULT 50

typedef enum PolicyAction {
        POLICY_ACCEPT,          /* mail for accepted domains only */
        POLICY_RELAY,           /* any recipient domain */
        POLICY_REJECT,          /* 554 greeting, then only QUIT */
        POLICY_TCP_REFUSE,      /* close at accept, no greeting */
        _POLICY_ACTION_MAX,
        _POLICY_ACTION_INVALID = -EINVAL,
} PolicyAction;

/* Inbound STARTTLS policy (per listener, overridable per mail flow policy). */
typedef enum TlsInbound {
        TLS_IN_OFF,
        TLS_IN_PREFERRED,
        TLS_IN_REQUIRED,
        TLS_IN_PREFERRED_VERIFY,
        TLS_IN_REQUIRED_VERIFY,
        _TLS_IN_MAX,
        _TLS_IN_INVALID = -EINVAL,
} TlsInbound;

/* Outbound TLS policy per destination domain. */
typedef enum TlsOutbound {
        TLS_OUT_NONE,
        TLS_OUT_PREFERRED,
        TLS_OUT_REQUIRED,
        TLS_OUT_PREFERRED_VERIFY,
        TLS_OUT_REQUIRED_VERIFY,
        _TLS_OUT_MAX,
        _TLS_OUT_INVALID = -EINVAL,
} TlsOutbound;

const char *policy_action_to_string(PolicyAction a);
PolicyAction policy_action_from_string(const char *s);
const char *tls_inbound_to_string(TlsInbound t);
TlsInbound tls_inbound_from_string(const char *s);
const char *tls_outbound_to_string(TlsOutbound t);
TlsOutbound tls_outbound_from_string(const char *s);

/* Session limits; a mail flow policy may override any of them (0 = inherit
 * from the listener). */
typedef struct SmtpLimits {
        uint32_t max_line;              /* octets incl. CRLF */
        uint32_t max_recipients;        /* per message */
        uint64_t max_message_size;      /* octets, advertised in SIZE */
        uint32_t max_errors;            /* per session, then 421 */
        uint64_t idle_timeout;          /* usec waiting for a command */
        uint64_t data_timeout;          /* usec waiting for DATA bytes */
        uint32_t max_messages;          /* per session (0 = unlimited) */
} SmtpLimits;

typedef struct MailFlowPolicy {
        char *name;
        PolicyAction action;
        SmtpLimits limits;              /* 0 fields inherit */
        uint32_t max_connections_per_ip;/* 0 = inherit */
        int tls;                        /* TlsInbound, or -1 = inherit listener */
        unsigned line;
} MailFlowPolicy;

typedef struct SenderGroup {
        char *name;
        char *policy_name;
        MailFlowPolicy *policy;         /* resolved at validation */
        Cidr *sources;
        size_t n_sources;
        unsigned line;
} SenderGroup;

typedef struct ListenerConfig {
        char *name;                     /* also the socket unit FileDescriptorName */
        char *address;                  /* numeric IPv4/IPv6, "::" = dual stack */
        uint16_t port;
        char *hostname;                 /* greeting and EHLO */
        SmtpLimits limits;
        uint32_t max_connections;
        uint32_t max_connections_per_ip;
        char **accepted_domains;        /* NULL-terminated, lowercase */
        char *default_policy_name;      /* when no sender group matches */
        MailFlowPolicy *default_policy;
        TlsInbound tls;
        /* Certificate store names, NULL-terminated; NULL = the demo
         * certificate. Several (one per key type, e.g. EC and RSA) let
         * OpenSSL pick by the client's signature algorithms. */
        char **certificates;
        char *tls_min_version;          /* "TLSv1.2" (filled in by validation) or "TLSv1.3" */
        char *tls_ciphers;              /* TLS <= 1.2 cipher list, NULL = TLS_CIPHERS_DEFAULT */
        char *tls_ciphersuites;         /* TLS 1.3 suites, NULL = OpenSSL's default */
        char *tls_groups;               /* key exchange groups, NULL = TLS_GROUPS_DEFAULT */
        char *client_ca;                /* absolute path of a PEM CA bundle for client
                                         * certificates, NULL = the system store */
        bool ktls;
        unsigned line;
} ListenerConfig;

typedef enum RouteKind {
        ROUTE_SMTP,                     /* hosts tried in order */
        ROUTE_MAILDIR,                  /* local directory, one file per message */
        _ROUTE_KIND_MAX,
        _ROUTE_KIND_INVALID = -EINVAL,
} RouteKind;

const char *route_kind_to_string(RouteKind k);
RouteKind route_kind_from_string(const char *s);

typedef struct RouteHost {
        char *host;                     /* name or literal */
        uint16_t port;
} RouteHost;

typedef struct RouteConfig {
        char *domain;                   /* lowercase; "*" = default smarthost */
        RouteKind kind;
        RouteHost *hosts;               /* ROUTE_SMTP */
        size_t n_hosts;
        char *directory;                /* ROUTE_MAILDIR */
        unsigned line;
} RouteConfig;

typedef struct DestinationConfig {
        char *domain;                   /* lowercase; "default" = the default entry */
        uint32_t max_connections;       /* concurrent deliveries to this domain */
        uint32_t max_messages_per_connection;
        uint32_t max_recipients_per_message;
        TlsOutbound tls;
        bool ktls;
        char *ca_file;                  /* absolute path, NULL = tls_client.ca_file */
        char *tls_min_version;          /* "TLSv1.2"/"TLSv1.3", NULL = tls_client.min_version */
        unsigned line;
} DestinationConfig;

/* Outbound TLS settings shared by all destinations (group "tls_client"). */
typedef struct TlsClientConfig {
        char *certificate;              /* certstore name presented to servers, NULL = none */
        char *ca_file;                  /* absolute path, NULL = OpenSSL's default paths */
        char *min_version;              /* "TLSv1.2"/"TLSv1.3", NULL = "TLSv1.2" */
        char *ciphers;                  /* NULL = TLS_CIPHERS_DEFAULT */
        char *ciphersuites;             /* NULL = OpenSSL's default */
        char *groups;                   /* NULL = TLS_GROUPS_DEFAULT */
        unsigned line;                  /* of the group, 0 when not in the file */
} TlsClientConfig;

/* HTTPS interfaces (the HTTPS server itself is a later feature): which
 * address, name and certificate it will serve. */
typedef struct HttpsConfig {
        char *name;
        char *address;
        uint16_t port;
        char *hostname;
        char *certificate;              /* certstore name, NULL = demo */
        unsigned line;
} HttpsConfig;

/* LDAP server profiles (queries are a later feature). */
typedef struct LdapConfig {
        char *name;
        char *uri;                      /* ldap:// or ldaps:// */
        char *base;
        char *bind_dn;                  /* NULL = anonymous */
        char *bind_password;            /* a secret: never shown, exported only encrypted */
        char *ca_file;                  /* absolute path, NULL = system store */
        char *certificate;              /* client certificate (certstore name), NULL = none */
        unsigned line;
} LdapConfig;

typedef struct QueueConfig {
        uint64_t retry_min;             /* usec, first retry delay */
        uint64_t retry_max;             /* usec, backoff cap */
        uint64_t lifetime;              /* usec, then bounce */
        uint64_t connect_timeout;       /* usec */
        uint64_t command_timeout;       /* usec, RFC 5321 4.5.3.2 client side */
        uint64_t data_timeout;          /* usec for the final "." reply (10 min) */
        uint16_t smtp_port;             /* MX delivery port, 25 */
        uint32_t max_connections;       /* all deliveries */
} QueueConfig;

typedef struct Config {
        char *path;                     /* NULL for built-in defaults */
        char *hostname;                 /* this gateway, for Received:/EHLO/DSN */
        char *state_dir;
        unsigned workers;               /* 0 = one per online CPU */
        uint64_t shutdown_timeout;      /* usec to drain on SIGTERM */
        char **dns_servers;             /* "ip[:port]", NULL = system resolv.conf */
        char **alert_recipients;

        ListenerConfig *listeners;
        size_t n_listeners;
        MailFlowPolicy *policies;
        size_t n_policies;
        SenderGroup *sender_groups;     /* in match order */
        size_t n_sender_groups;
        RouteConfig *routes;
        size_t n_routes;
        HttpsConfig *https;
        size_t n_https;
        LdapConfig *ldap;
        size_t n_ldap;
        char *admin_group;              /* may change configuration over D-Bus; NULL = root only */
        DestinationConfig *destinations;/* destinations[0] is always "default" */
        size_t n_destinations;
        QueueConfig queue;

        TlsClientConfig tls_client;
        /* TLS failures to a destination (required* modes) mail
         * alert_recipients at most once per domain per interval. */
        bool tls_alert_enabled;         /* default true */
        uint64_t tls_alert_interval;    /* usec, default 1h */
        uint64_t tls_ticket_rotation;   /* usec, default TLS_TICKET_KEY_ROTATION_DEFAULT */

        unsigned n_ref;
} Config;

/* Built-in defaults: listener "inbound" on 127.0.0.1:2525, accepted domain
 * "localhost" routed to maildir:<state_dir>/mail, loopback relaying. */
int config_new_default(const char *state_dir, Config **ret);
/* Parses and validates; on failure *ret_error (if given) gets a malloc'ed
 * "PATH:LINE: problem" message and nothing else is returned. */
int config_load(const char *path, Config **ret, char **ret_error);
/* Same for a configuration held in memory; name stands for PATH in the
 * messages. @include is refused here (the text has no directory). */
int config_load_string(const char *text, const char *name, Config **ret, char **ret_error);
int config_validate(Config *c, char **ret_error);

Config *config_ref(Config *c);
Config *config_unref(Config *c);
static inline void config_unrefp(Config **c) {
        if (*c)
                config_unref(*c);
}

const ListenerConfig *config_find_listener(const Config *c, const char *name);
/* First sender group whose sources match; NULL if none. */
const SenderGroup *config_match_sender_group(const Config *c, const struct sockaddr *sa);
/* Exact domain entry, else "default". Never NULL. */
const DestinationConfig *config_find_destination(const Config *c, const char *domain);
/* Exact domain route, else "*" route, else NULL (MX lookup). */
const RouteConfig *config_find_route(const Config *c, const char *domain);
bool listener_accepts_domain(const ListenerConfig *l, const char *domain);
/* Effective limits: policy overrides over listener values. */
void smtp_limits_effective(const ListenerConfig *l, const MailFlowPolicy *p, SmtpLimits *ret);


/*
 * ConfigDocument: the configuration as an editable document (the control
 * plane's staged changes). It is the libconfig tree of a file; edits are
 * made on it and checked by rendering it to text and loading that with
 * config_load_string(), so one parser and one validator serve files,
 * reloads and commits alike.
 */

typedef enum ConfigKind {
        CONFIG_KIND_LISTENER,           /* "listener", list "listeners", key "name" */
        CONFIG_KIND_POLICY,             /* "policy", "policies", "name" */
        CONFIG_KIND_SENDER_GROUP,       /* "sendergroup", "sender_groups", "name" */
        CONFIG_KIND_ROUTE,              /* "route", "routes", "domain" */
        CONFIG_KIND_DESTINATION,        /* "destination", "destinations", "domain" */
        CONFIG_KIND_HTTPS,              /* "https", "https_interfaces", "name" */
        CONFIG_KIND_LDAP,               /* "ldap", "ldap_profiles", "name" */
        _CONFIG_KIND_MAX,
        _CONFIG_KIND_INVALID = -EINVAL,
} ConfigKind;

const char *config_kind_to_string(ConfigKind k);
ConfigKind config_kind_from_string(const char *s);

typedef enum ConfigValueType {
        CONFIG_VALUE_UNSET,             /* Set: remove the key (back to its default) */
        CONFIG_VALUE_STRING,
        CONFIG_VALUE_INT,
        CONFIG_VALUE_BOOL,
        CONFIG_VALUE_STRV,
        _CONFIG_VALUE_TYPE_MAX,
} ConfigValueType;

typedef struct ConfigValue {
        const char *key;                /* file key; "limits.max_line" for nested groups */
        ConfigValueType type;
        const char *s;
        int64_t i;
        bool b;
        char * const *strv;             /* NULL-terminated */
} ConfigValue;

/* How secrets (LdapConfig.bind_password) appear in rendered text. */
typedef enum ConfigSecrets {
        CONFIG_SECRETS_KEEP,            /* as they are: the file itself */
        CONFIG_SECRETS_REDACT,          /* left out */
        CONFIG_SECRETS_ENCRYPT,         /* "enc:v1:<base64>" (AES-256-GCM, key from PBKDF2-SHA256) */
} ConfigSecrets;

typedef struct ConfigDocument ConfigDocument;

/* From file text; name is used in messages ("NAME:LINE: ..."). Refuses
 * text that does not load, and @include. Values "enc:v1:..." are decrypted
 * with password (NULL: refused with -EKEYREJECTED when any is present;
 * wrong password or altered value: -EKEYREJECTED). An unedited document
 * renders (KEEP) as the text it was made from, comments included. */
int config_document_new(const char *text, const char *name, const char *password,
                        ConfigDocument **ret, char **ret_error);
/* The document of an in-memory Config (for built-in defaults). */
int config_document_from_config(const Config *c, ConfigDocument **ret);
ConfigDocument *config_document_free(ConfigDocument *d);
static inline void config_document_freep(ConfigDocument **d) {
        if (*d)
                config_document_free(*d);
}
int config_document_copy(const ConfigDocument *d, ConfigDocument **ret);

int config_document_to_text(const ConfigDocument *d, ConfigSecrets secrets, const char *password, char **ret);
/* Renders and loads: the Config this document describes, or the problems. */
int config_document_load(const ConfigDocument *d, const char *name, Config **ret, char **ret_error);

/* Each edit is all-or-nothing and leaves the document valid: it is applied
 * to a copy, loaded, and only then kept; else *ret_error says why
 * ("listener 'x': port 70000 out of range 1..65535", one problem per line,
 * without a FILE:LINE prefix: the lines of a rendering mean nothing to the
 * caller) and nothing changed. The key naming the object ("name",
 * "domain") cannot be set; a listener's certificate/certificates and a
 * route's hosts/maildir replace each other.
 * -EEXIST / -ENOENT for names that exist / do not; -EBUSY for a delete of
 * an object that is referenced (a policy used by a sender group). */
int config_document_add(ConfigDocument *d, ConfigKind kind, const char *name,
                        const ConfigValue *values, size_t n_values, char **ret_error);
int config_document_set(ConfigDocument *d, ConfigKind kind, const char *name,
                        const ConfigValue *values, size_t n_values, char **ret_error);
int config_document_delete(ConfigDocument *d, ConfigKind kind, const char *name, char **ret_error);
/* Top-level keys and groups ("hostname", "tls_client.ca_file", "queue.retry_min"). */
int config_document_set_global(ConfigDocument *d, const ConfigValue *values, size_t n_values,
                               char **ret_error);

/* Where the configuration uses a certificate: a NULL-terminated list of
 * places ("listener inbound", "tls_client", "https admin", "ldap corp");
 * listeners without certificates count as users of "demo". Returns the
 * number of places. */
int config_certificate_users(const Config *c, const char *certificate, char ***ret_places);
