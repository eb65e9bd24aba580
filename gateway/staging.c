/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The pending change set and its commit. Edits go through
 * config_document_*() on a copy of the running document, so every staged
 * state is a complete configuration that loads; commit then proves it can
 * be applied (manager_plan_config() builds the TLS contexts and binds new
 * sockets) before the file is replaced, and only a successful rename lets
 * the plan be swapped in. Sessions already open keep their Config.
 *
 * Not here: permission checks (bus.c), D-Bus argument handling
 * (bus-manager.c). Returns negative errno as listed in staging.h.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "bus.h"
#include "log.h"
#include "manager.h"
#include "staging.h"
#include "util/macro.h"

/* The LCS table of a diff is (lines_a + 1) x (lines_b + 1) cells after the
 * common head and tail are cut; beyond this the changed middle is shown
 * as removed and added as a whole (still a correct diff, only larger). */
#define STAGING_DIFF_CELLS_MAX (4U * 1024U * 1024U)
/* A configuration file larger than this is refused as the running
 * document source (it then comes from the loaded Config instead). */
#define STAGING_FILE_MAX (16U * 1024U * 1024U)

struct Staging {
        Manager *manager;
        History *history;
        ConfigDocument *running;
        ConfigDocument *pending;        /* NULL: nothing staged */
        uid_t owner_uid;
        char *owner_name;
        uint64_t opened_usec;
};

static uint64_t now_realtime(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static int set_error(char **ret_error, const char *fmt, ...) _printf_(2, 3);
static int set_error(char **ret_error, const char *fmt, ...) {
        va_list ap;

        if (!ret_error)
                return 0;
        free(*ret_error);
        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return 0;
}

static int read_text_file(const char *path, char **ret) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t n;

        f = fopen(path, "re");
        if (!f)
                return -errno;
        if (fstat(fileno(f), &st) < 0)
                return -errno;
        if ((uint64_t) st.st_size > STAGING_FILE_MAX)
                return -EFBIG;
        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        n = fread(buf, 1, (size_t) st.st_size, f);
        if (ferror(f))
                return -EIO;
        buf[n] = '\0';
        *ret = TAKE_PTR(buf);
        return 0;
}

/* The running document: the file's own text when it loads as a document
 * (keeps the administrator's layout out of the diff), else the Config. */
static int staging_load_running(Staging *s, ConfigDocument **ret, char **ret_text) {
        Manager *m = s->manager;
        _cleanup_free_ char *text = NULL, *error = NULL;
        ConfigDocument *d = NULL;
        int r;

        if (m->config_path) {
                r = read_text_file(m->config_path, &text);
                if (r >= 0) {
                        r = config_document_new(text, m->config_path, NULL, &d, &error);
                        if (r < 0)
                                log_debug_errno(r, "%s as a document: %s; using the loaded configuration.",
                                                m->config_path, error ?: "not loadable");
                } else
                        log_debug_errno(r, "Cannot read %s again: %m; using the loaded configuration.",
                                        m->config_path);
        }
        if (!d) {
                r = config_document_from_config(m->config, &d);
                if (r < 0)
                        return r;
        }
        *ret = d;
        if (ret_text)
                *ret_text = TAKE_PTR(text);
        return 0;
}

/* ConfigVersion: the newest history version when the file is exactly what
 * was committed last, else 0 (edited by hand, or never committed). */
static uint32_t staging_running_version(Staging *s, const char *file_text) {
        _cleanup_free_ char *committed = NULL;
        uint32_t v = history_latest(s->history);

        if (v == 0 || !file_text)
                return 0;
        if (history_get_text(s->history, v, &committed) < 0)
                return 0;
        return streq(committed, file_text) ? v : 0;
}

int staging_new(Manager *m, Staging **ret) {
        _cleanup_free_ char *dir = NULL, *text = NULL;
        Staging *s;
        int r;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->manager = m;

        if (asprintf(&dir, "%s/history", m->config->state_dir) < 0) {
                staging_free(s);
                return -ENOMEM;
        }
        r = history_open(dir, &s->history);
        if (r >= 0)
                r = staging_load_running(s, &s->running, &text);
        if (r < 0) {
                staging_free(s);
                return r;
        }
        m->config_version = staging_running_version(s, text);
        *ret = s;
        return 0;
}

static void staging_drop_pending(Staging *s) {
        s->pending = config_document_free(s->pending);
        s->owner_name = mfree(s->owner_name);
        s->owner_uid = 0;
        s->opened_usec = 0;
}

Staging *staging_free(Staging *s) {
        if (!s)
                return NULL;
        staging_drop_pending(s);
        config_document_free(s->running);
        history_free(s->history);
        free(s);
        return NULL;
}

static void staging_emit_pending(Staging *s) {
        bus_manager_emit_changed(s->manager, "PendingChanges");
        bus_manager_emit_changed(s->manager, "PendingOwner");
}

int staging_reloaded(Staging *s) {
        _cleanup_free_ char *text = NULL;
        ConfigDocument *d;
        uint32_t v;
        int r;

        r = staging_load_running(s, &d, &text);
        if (r < 0)
                return r;
        config_document_free(s->running);
        s->running = d;
        v = staging_running_version(s, text);
        if (v != s->manager->config_version) {
                s->manager->config_version = v;
                bus_manager_emit_changed(s->manager, "ConfigVersion");
        }
        return 0;
}

bool staging_has_pending(const Staging *s) {
        return s && s->pending;
}

const char *staging_owner(const Staging *s) {
        return s && s->pending && s->owner_name ? s->owner_name : "";
}

uint64_t staging_opened_usec(const Staging *s) {
        return s && s->pending ? s->opened_usec : 0;
}

History *staging_history(Staging *s) {
        return s->history;
}

int staging_pending_config(Staging *s, Config **ret) {
        if (!s->pending)
                return -ENODATA;
        return config_document_load(s->pending, "pending configuration", ret, NULL);
}

static int staging_check_owner(Staging *s, const StagingCaller *who, char **ret_error) {
        if (!s->pending || s->owner_uid == who->uid)
                return 0;
        set_error(ret_error, "The pending change set is held by %s; it must commit or abandon it first "
                  "(root may abandon it with force).", s->owner_name);
        return -EUSERS;
}

/* Opens the caller's pending set when none is open. *ret_opened tells the
 * matching staging_end() to drop it again if the edit fails. */
static int staging_begin(Staging *s, const StagingCaller *who, bool *ret_opened, char **ret_error) {
        int r;

        r = staging_check_owner(s, who, ret_error);
        if (r < 0)
                return r;
        *ret_opened = false;
        if (s->pending)
                return 0;
        r = config_document_copy(s->running, &s->pending);
        if (r < 0)
                return r;
        s->owner_name = strdup(who->name ?: "");
        if (!s->owner_name) {
                staging_drop_pending(s);
                return -ENOMEM;
        }
        s->owner_uid = who->uid;
        s->opened_usec = now_realtime();
        *ret_opened = true;
        return 0;
}

static int staging_end(Staging *s, bool opened, int r) {
        if (!opened)
                return r;
        if (r < 0)
                staging_drop_pending(s);
        else
                staging_emit_pending(s);
        return r;
}

/* Certificates the document refers to must exist in the store: a name
 * that does not is refused at staging time, not discovered at commit. */
static int check_certificate(Staging *s, const char *place, const char *name, char **ret_error) {
        if (!name || streq(name, CERTSTORE_DEMO_NAME) || certstore_exists(s->manager->certstore, name))
                return 0;
        return set_error(ret_error, "%s: certificate '%s' does not exist; create, upload or import it first",
                         place, name) ?: -EINVAL;
}

static int staging_check_refs(Staging *s, const ConfigDocument *d, char **ret_error) {
        _cleanup_(config_unrefp) Config *c = NULL;
        char place[128];
        int r;

        if (!s->manager || !s->manager->certstore)
                return 0;
        r = config_document_load(d, "pending", &c, ret_error);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_listeners; i++)
                for (char **n = c->listeners[i].certificates; n && *n; n++) {
                        snprintf(place, sizeof place, "listener '%s'", c->listeners[i].name);
                        r = check_certificate(s, place, *n, ret_error);
                        if (r < 0)
                                return r;
                }
        for (size_t i = 0; i < c->n_https; i++) {
                snprintf(place, sizeof place, "HTTPS interface '%s'", c->https[i].name);
                r = check_certificate(s, place, c->https[i].certificate, ret_error);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < c->n_ldap; i++) {
                snprintf(place, sizeof place, "LDAP profile '%s'", c->ldap[i].name);
                r = check_certificate(s, place, c->ldap[i].certificate, ret_error);
                if (r < 0)
                        return r;
        }
        return check_certificate(s, "tls_client", c->tls_client.certificate, ret_error);
}

typedef struct StagingEdit {
        enum { EDIT_ADD, EDIT_SET, EDIT_DELETE, EDIT_GLOBAL } op;
        ConfigKind kind;
        const char *name;
        const ConfigValue *values;
        size_t n_values;
} StagingEdit;

/* Every edit is made on a copy, checked, and only then kept. */
static int staging_edit(Staging *s, const StagingCaller *who, const StagingEdit *e, char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        bool opened;
        int r;

        r = staging_begin(s, who, &opened, ret_error);
        if (r < 0)
                return r;
        r = config_document_copy(s->pending, &copy);
        if (r >= 0)
                switch (e->op) {
                case EDIT_ADD:
                        r = config_document_add(copy, e->kind, e->name, e->values, e->n_values, ret_error);
                        break;
                case EDIT_SET:
                        r = config_document_set(copy, e->kind, e->name, e->values, e->n_values, ret_error);
                        break;
                case EDIT_DELETE:
                        r = config_document_delete(copy, e->kind, e->name, ret_error);
                        break;
                case EDIT_GLOBAL:
                        r = config_document_set_global(copy, e->values, e->n_values, ret_error);
                        break;
                }
        if (r >= 0 && e->op != EDIT_DELETE)
                r = staging_check_refs(s, copy, ret_error);
        if (r >= 0) {
                config_document_free(s->pending);
                s->pending = TAKE_PTR(copy);
        }
        return staging_end(s, opened, r);
}

int staging_add(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                const ConfigValue *values, size_t n_values, char **ret_error) {
        return staging_edit(s, who, &(StagingEdit) { EDIT_ADD, kind, name, values, n_values }, ret_error);
}

int staging_set(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                const ConfigValue *values, size_t n_values, char **ret_error) {
        return staging_edit(s, who, &(StagingEdit) { EDIT_SET, kind, name, values, n_values }, ret_error);
}

int staging_delete(Staging *s, const StagingCaller *who, ConfigKind kind, const char *name,
                   char **ret_error) {
        return staging_edit(s, who, &(StagingEdit) { EDIT_DELETE, kind, name, NULL, 0 }, ret_error);
}

int staging_set_global(Staging *s, const StagingCaller *who, const ConfigValue *values, size_t n_values,
                       char **ret_error) {
        return staging_edit(s, who, &(StagingEdit) { EDIT_GLOBAL, 0, NULL, values, n_values }, ret_error);
}

int staging_import(Staging *s, const StagingCaller *who, const char *text, const char *password,
                   char **ret_error) {
        _cleanup_free_ char *error = NULL;
        ConfigDocument *d = NULL;
        bool opened;
        int r;

        r = staging_check_owner(s, who, ret_error);
        if (r < 0)
                return r;
        r = config_document_new(text, "imported configuration", isempty(password) ? NULL : password,
                                &d, &error);
        if (r == -EKEYREJECTED) {
                set_error(ret_error, "%s", isempty(password) ?
                          "The imported configuration holds encrypted secrets; give the password they were exported with." :
                          "Wrong password for the encrypted secrets of the imported configuration.");
                return r;
        }
        if (r < 0) {
                set_error(ret_error, "The imported configuration is not valid: %s", error ?: strerror(-r));
                return r == -ENOMEM ? r : -EINVAL;
        }
        r = staging_begin(s, who, &opened, ret_error);
        if (r < 0) {
                config_document_free(d);
                return r;
        }
        config_document_free(s->pending);
        s->pending = d;
        return staging_end(s, opened, 0);
}

int staging_abandon(Staging *s, const StagingCaller *who, bool force, char **ret_error) {
        if (!s->pending) {
                set_error(ret_error, "There are no pending changes to abandon.");
                return -ENODATA;
        }
        if (s->owner_uid != who->uid) {
                if (!force)
                        return staging_check_owner(s, who, ret_error);
                if (who->uid != 0) {
                        set_error(ret_error, "Only root may abandon the change set of %s.", s->owner_name);
                        return -EPERM;
                }
                log_info("Pending changes of %s abandoned by %s.", s->owner_name, who->name);
        }
        staging_drop_pending(s);
        staging_emit_pending(s);
        return 0;
}

static int ensure_parent_dir(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash || slash == dir)
                return 0;
        *slash = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int staging_commit(Staging *s, const StagingCaller *who, const char *comment, uint32_t *ret_version,
                   char **ret_error) {
        Manager *m = s->manager;
        _cleanup_(config_unrefp) Config *c = NULL;
        _cleanup_free_ char *error = NULL, *text = NULL, *path = NULL;
        ConfigPlan *plan = NULL;
        uint32_t version = 0;
        int r;

        if (!s->pending) {
                set_error(ret_error, "There are no pending changes to commit.");
                return -ENODATA;
        }
        r = staging_check_owner(s, who, ret_error);
        if (r < 0)
                return r;

        /* The running file, or where the packaged unit looks for one when
         * the daemon started on built-in defaults. */
        path = strdup(m->config_path ?: TLSGW_CONFIG_FILE);
        if (!path)
                return -ENOMEM;

        r = config_document_load(s->pending, path, &c, &error);
        if (r < 0) {
                set_error(ret_error, "The pending configuration is not valid: %s", error ?: strerror(-r));
                return r == -ENOMEM ? r : -EINVAL;
        }
        if (c->state_dir && m->config->state_dir && !streq(c->state_dir, m->config->state_dir))
                log_warning("Commit: state_directory changes take effect at the next restart.");

        error = mfree(error);
        r = manager_plan_config(m, c, &plan, &error);
        if (r < 0) {
                set_error(ret_error, "The configuration cannot be applied: %s; nothing was changed.",
                          error ?: strerror(-r));
                return -ECANCELED;
        }

        r = config_document_to_text(s->pending, CONFIG_SECRETS_KEEP, NULL, &text);
        if (r < 0) {
                manager_plan_free(plan);
                return r;
        }
        r = ensure_parent_dir(path);
        if (r >= 0)
                r = history_write_file(path, text, strlen(text), 0600);
        if (r < 0) {
                manager_plan_free(plan);
                set_error(ret_error, "Cannot write %s: %s; nothing was changed.", path, strerror(-r));
                return -ECANCELED;
        }

        /* The file is replaced: from here on the commit happens. */
        r = history_add(s->history, text, who->uid, who->name, comment, now_realtime(), &version);
        if (r < 0) {
                log_error_errno(r, "Configuration written to %s but not recorded in the history: %m", path);
                version = 0;
        }
        manager_plan_apply(m, plan);
        if (!m->config_path) {
                m->config_path = TAKE_PTR(path);
                bus_manager_emit_changed(m, "ConfigFile");
        }
        config_document_free(s->running);
        s->running = TAKE_PTR(s->pending);
        staging_drop_pending(s);
        m->config_version = version;

        log_info("Configuration version %" PRIu32 " committed by %s%s%s.", version, who->name,
                 isempty(comment) ? "" : ": ", comment ?: "");

        staging_emit_pending(s);
        bus_manager_emit_changed(m, "ConfigVersion");
        bus_manager_emit_changed(m, "Listeners");
        if (m->bus) {
                bus_objects_config_changed(m);
                bus_cert_emit_changed(m, NULL);         /* UsedBy may have changed */
        }
        if (ret_version)
                *ret_version = version;
        return 0;
}

int staging_rollback(Staging *s, const StagingCaller *who, uint32_t version, uint32_t *ret_version,
                     char **ret_error) {
        _cleanup_free_ char *text = NULL, *error = NULL, *comment = NULL, *name = NULL;
        ConfigDocument *d = NULL, *saved;
        char *saved_owner;
        uid_t saved_uid;
        uint64_t saved_opened;
        int r;

        r = staging_check_owner(s, who, ret_error);
        if (r < 0)
                return r;
        r = history_get_text(s->history, version, &text);
        if (r == -ENOENT) {
                set_error(ret_error, "Version %" PRIu32 " is not in the history (the newest is %" PRIu32 ").",
                          version, history_latest(s->history));
                return r;
        }
        if (r < 0) {
                set_error(ret_error, "Cannot read version %" PRIu32 " from the history: %s", version, strerror(-r));
                return r;
        }
        if (asprintf(&name, "history version %" PRIu32, version) < 0 ||
            asprintf(&comment, "rollback to %" PRIu32, version) < 0)
                return -ENOMEM;
        r = config_document_new(text, name, NULL, &d, &error);
        if (r < 0) {
                set_error(ret_error, "Version %" PRIu32 " no longer loads: %s", version, error ?: strerror(-r));
                return r == -ENOMEM ? r : -EINVAL;
        }

        /* The caller's own pending set, if any, comes back when the commit fails. */
        saved = TAKE_PTR(s->pending);
        saved_owner = TAKE_PTR(s->owner_name);
        saved_uid = s->owner_uid;
        saved_opened = s->opened_usec;

        s->pending = d;
        s->owner_uid = who->uid;
        s->owner_name = strdup(who->name ?: "");
        s->opened_usec = now_realtime();
        if (!s->owner_name)
                r = -ENOMEM;
        else
                r = staging_commit(s, who, comment, ret_version, ret_error);
        if (r < 0) {
                staging_drop_pending(s);
                s->pending = saved;
                s->owner_name = saved_owner;
                s->owner_uid = saved_uid;
                s->opened_usec = saved_opened;
                return r;
        }
        config_document_free(saved);
        free(saved_owner);
        return 0;
}

int staging_text(Staging *s, bool pending, ConfigSecrets secrets, const char *password, char **ret_text) {
        const ConfigDocument *d = pending ? s->pending : s->running;

        if (!d)
                return -ENODATA;
        return config_document_to_text(d, secrets, password, ret_text);
}

int staging_diff(Staging *s, char **ret_diff) {
        _cleanup_free_ char *a = NULL, *b = NULL;
        int r;

        if (!s->pending) {
                *ret_diff = strdup("");
                return *ret_diff ? 0 : -ENOMEM;
        }
        r = config_document_to_text(s->running, CONFIG_SECRETS_REDACT, NULL, &a);
        if (r >= 0)
                r = config_document_to_text(s->pending, CONFIG_SECRETS_REDACT, NULL, &b);
        if (r < 0)
                return r;
        return staging_unified_diff(a, b, "running", "pending", ret_diff);
}

/* ---- line diff ---- */

typedef struct Line {
        const char *p;
        size_t len;                     /* without the newline */
} Line;

typedef struct DiffOp {
        char type;                      /* ' ', '-', '+' */
        size_t a, b;                    /* lines of a and b consumed before this op */
        const Line *line;
} DiffOp;

static int split_lines(const char *text, Line **ret, size_t *ret_n) {
        Line *l = NULL;
        size_t n = 0, cap = 0;

        for (const char *p = text; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t) (nl - p) : strlen(p);

                if (n == cap) {
                        Line *x = reallocarray(l, cap = cap ? cap * 2 : 64, sizeof *l);
                        if (!x) {
                                free(l);
                                return -ENOMEM;
                        }
                        l = x;
                }
                l[n++] = (Line) { p, len };
                p += len + (nl ? 1 : 0);
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

static bool line_eq(const Line *x, const Line *y) {
        return x->len == y->len && memcmp(x->p, y->p, x->len) == 0;
}

static int diff_ops(const Line *a, size_t na, const Line *b, size_t nb, DiffOp **ret, size_t *ret_n) {
        _cleanup_free_ uint32_t *t = NULL;
        size_t head = 0, tail = 0, ma, mb, n = 0, i, j;
        DiffOp *ops;

        while (head < na && head < nb && line_eq(&a[head], &b[head]))
                head++;
        while (tail < na - head && tail < nb - head && line_eq(&a[na - 1 - tail], &b[nb - 1 - tail]))
                tail++;
        ma = na - head - tail;
        mb = nb - head - tail;

        ops = calloc(na + nb + 1, sizeof *ops);
        if (!ops)
                return -ENOMEM;

#define EMIT(ty, ai, bi, l) (ops[n++] = (DiffOp) { (ty), (ai), (bi), (l) })
        for (i = 0; i < head; i++)
                EMIT(' ', i, i, &a[i]);

        if ((ma + 1) * (mb + 1) <= STAGING_DIFF_CELLS_MAX && ma > 0 && mb > 0) {
                const Line *x = a + head, *y = b + head;
                size_t w = mb + 1;

                /* t[i][j]: length of the LCS of x[i..] and y[j..]. */
                t = calloc((ma + 1) * w, sizeof *t);
                if (!t) {
                        free(ops);
                        return -ENOMEM;
                }
                for (i = ma; i-- > 0;)
                        for (j = mb; j-- > 0;)
                                t[i * w + j] = line_eq(&x[i], &y[j]) ? t[(i + 1) * w + j + 1] + 1 :
                                        MAX(t[(i + 1) * w + j], t[i * w + j + 1]);
                i = j = 0;
                while (i < ma || j < mb) {
                        if (i < ma && j < mb && line_eq(&x[i], &y[j])) {
                                EMIT(' ', head + i, head + j, &x[i]);
                                i++, j++;
                        } else if (j >= mb || (i < ma && t[(i + 1) * w + j] >= t[i * w + j + 1])) {
                                EMIT('-', head + i, head + j, &x[i]);
                                i++;
                        } else {
                                EMIT('+', head + i, head + j, &y[j]);
                                j++;
                        }
                }
        } else {
                for (i = 0; i < ma; i++)
                        EMIT('-', head + i, head, &a[head + i]);
                for (j = 0; j < mb; j++)
                        EMIT('+', head + ma, head + j, &b[head + j]);
        }
        for (i = 0; i < tail; i++)
                EMIT(' ', head + ma + i, head + mb + i, &a[head + ma + i]);
#undef EMIT
        *ret = ops;
        *ret_n = n;
        return 0;
}

/* "start,length" of a hunk; the unified format writes a one-line range
 * as just its line, and an empty range names the line before it. */
static void diff_range(FILE *f, size_t before, size_t len) {
        if (len == 1)
                fprintf(f, "%zu", before + 1);
        else
                fprintf(f, "%zu,%zu", len ? before + 1 : before, len);
}

int staging_unified_diff(const char *a, const char *b, const char *a_label, const char *b_label, char **ret) {
        _cleanup_free_ Line *la = NULL, *lb = NULL;
        _cleanup_free_ DiffOp *ops = NULL;
        _cleanup_free_ char *out = NULL;
        size_t na, nb, n, size = 0, i = 0;
        FILE *f;
        int r;

        r = split_lines(a, &la, &na);
        if (r >= 0)
                r = split_lines(b, &lb, &nb);
        if (r >= 0)
                r = diff_ops(la, na, lb, nb, &ops, &n);
        if (r < 0)
                return r;

        f = open_memstream(&out, &size);
        if (!f)
                return -ENOMEM;
        for (;;) {
                size_t first, last, start, end, a_len = 0, b_len = 0;

                while (i < n && ops[i].type == ' ')
                        i++;
                if (i >= n)
                        break;
                if (ftell(f) == 0)
                        fprintf(f, "--- %s\n+++ %s\n", a_label, b_label);
                first = last = i;
                /* Changes closer than twice the context share one hunk. */
                for (size_t k = i + 1; k < n && k <= last + 2 * STAGING_DIFF_CONTEXT + 1; k++)
                        if (ops[k].type != ' ')
                                last = k;
                start = first >= STAGING_DIFF_CONTEXT ? first - STAGING_DIFF_CONTEXT : 0;
                end = MIN(n, last + STAGING_DIFF_CONTEXT + 1);
                for (size_t k = start; k < end; k++) {
                        if (ops[k].type != '+')
                                a_len++;
                        if (ops[k].type != '-')
                                b_len++;
                }
                fputs("@@ -", f);
                diff_range(f, ops[start].a, a_len);
                fputs(" +", f);
                diff_range(f, ops[start].b, b_len);
                fputs(" @@\n", f);
                for (size_t k = start; k < end; k++)
                        fprintf(f, "%c%.*s\n", ops[k].type, (int) ops[k].line->len, ops[k].line->p);
                i = end;
        }
        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(out);
        return 0;
}
