/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Staged configuration changes: the running configuration as a document,
 * at most one pending change set (a whole document) with the user who
 * opened it, and the commit that validates, plans, writes, records and
 * applies it (docs/dbus-api.md, "Staged changes").
 *
 * Every function is all-or-nothing: on error neither the pending set, the
 * file, the history nor the running configuration changed, and *ret_error
 * (when given) holds a sentence naming the object and the problem.
 * It does not check permissions (bus_check_admin() does, before calling)
 * and does not talk D-Bus itself beyond emitting property changes.
 * Commits and rollbacks are logged at info level; nothing else is.
 *
 * Returns negative errno:
 *   -EUSERS       the pending set is held by another user (the text names them)
 *   -ENODATA      nothing is pending
 *   -EINVAL       the result would not validate
 *   -ENOENT / -EEXIST / -EBUSY   from config_document_*(): no such object,
 *                 it exists, it is referenced (InUse); -ENOENT also for an
 *                 unknown history version
 *   -EKEYREJECTED missing or wrong password for encrypted secrets
 *   -EPERM        force-abandon of another user's set by a non-root caller
 *   -ECANCELED    a valid configuration could not be applied (a TLS
 *                 context, a socket, writing the file); nothing changed
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "history.h"

typedef struct Manager Manager;
typedef struct Staging Staging;

/* Who asks: the pending set belongs to a UID; name is for messages and
 * the history. */
typedef struct StagingCaller {
        uid_t uid;
        const char *name;
} StagingCaller;

/* The running document from the manager's configuration file (or built-in
 * defaults) and the history under STATE/history. Sets m->config_version. */
int staging_new(Manager *m, Staging **ret);
Staging *staging_free(Staging *s);

/* After the file was re-read (SIGHUP, Reload): the running document is
 * the file again and ConfigVersion is recomputed. */
int staging_reloaded(Staging *s);

bool staging_has_pending(const Staging *s);
const char *staging_owner(const Staging *s);            /* "" when none */
uint64_t staging_opened_usec(const Staging *s);         /* 0 when none */
History *staging_history(Staging *s);
/* The Config the pending set describes (for "is this certificate used by
 * the pending configuration?"); -ENODATA when nothing is pending. */
int staging_pending_config(Staging *s, Config **ret);

int staging_add(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                const ConfigValue *values, size_t n_values, char **ret_error);
int staging_set(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                const ConfigValue *values, size_t n_values, char **ret_error);
int staging_delete(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                   char **ret_error);
int staging_set_global(Staging *s, const StagingCaller *who, const ConfigValue *values, size_t n_values,
                       char **ret_error);
/* Replaces the pending set by a whole document (password decrypts its
 * "enc:" secrets; NULL or "" when it has none). */
int staging_import(Staging *s, const StagingCaller *who, const char *text, const char *password,
                   char **ret_error);
/* force: root drops another user's set. */
int staging_abandon(Staging *s, const StagingCaller *who, bool force, char **ret_error);

/* Validate, plan (TLS contexts, sockets), write the file atomically, add to
 * the history, apply live. */
int staging_commit(Staging *s, const StagingCaller *who, const char *comment, uint32_t *ret_version,
                   char **ret_error);
/* Stages a stored version (replacing the caller's own pending set, which
 * is kept if the commit fails) and commits it as "rollback to N". */
int staging_rollback(Staging *s, const StagingCaller *who, uint32_t version, uint32_t *ret_version,
                     char **ret_error);

/* Text of the running (or pending: -ENODATA when none) document. */
int staging_text(Staging *s, bool pending, ConfigSecrets secrets, const char *password, char **ret_text);
/* Unified diff running -> pending, secrets redacted; "" when nothing is
 * pending or nothing differs. */
int staging_diff(Staging *s, char **ret_diff);

/* The line diff itself (exposed for tests): "--- a_label", "+++ b_label",
 * hunks with STAGING_DIFF_CONTEXT lines of context; "" when equal. */
#define STAGING_DIFF_CONTEXT 3
int staging_unified_diff(const char *a, const char *b, const char *a_label, const char *b_label, char **ret);
