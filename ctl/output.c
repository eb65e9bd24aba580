/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Listings and records printed through libsmartcols (see output.h). The
 * table and the JSON form come from the same cells, so a column can never
 * exist in one and not the other. Returns 0 or a negative errno.
 */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libsmartcols/libsmartcols.h>

#include "output.h"
#include "util/macro.h"

/* A record rarely has more than the ~25 properties of a listener. */
#define OUTPUT_RECORD_FIELDS_MAX 128

static bool output_json;
static bool output_legend = true;

struct Output {
        char *name;
        struct libscols_table *table;
        struct libscols_line *line;
        size_t n_columns;
        OutputType *types;

        /* record mode: fields collected, table built at print time */
        bool record;
        size_t n_fields;
        char *field_names[OUTPUT_RECORD_FIELDS_MAX];
        char *field_values[OUTPUT_RECORD_FIELDS_MAX];
        OutputType field_types[OUTPUT_RECORD_FIELDS_MAX];
};

void output_set_mode(bool json, bool legend) {
        output_json = json;
        output_legend = legend;
}

/* JSON keys are snake_case: "KEY-TYPE" is "key_type", the property
 * "MaxMessageSize" is "max_message_size". */
static char *json_key(const char *name) {
        char *k = malloc(strlen(name) * 2 + 1), *p = k;

        if (!k)
                return NULL;
        for (const char *s = name; *s; s++) {
                if (isupper((unsigned char) *s) && s > name &&
                    (islower((unsigned char) s[-1]) || isdigit((unsigned char) s[-1])))
                        *p++ = '_';
                *p++ = *s == '-' || *s == ' ' ? '_' : (char) tolower((unsigned char) *s);
        }
        *p = '\0';
        return k;
}

static int add_column(Output *o, const char *name, OutputType type, double width, OutputFlags flags) {
        struct libscols_column *cl;
        int fl = 0;

        if (flags & OUTPUT_RIGHT)
                fl |= SCOLS_FL_RIGHT;
        if (flags & OUTPUT_TRUNC)
                fl |= SCOLS_FL_TRUNC;
        if (flags & OUTPUT_WRAP)
                fl |= SCOLS_FL_WRAP;

        if (output_json) {
                _cleanup_free_ char *k = json_key(name);

                if (!k)
                        return -ENOMEM;
                cl = scols_table_new_column(o->table, k, width, fl);
        } else
                cl = scols_table_new_column(o->table, name, width, fl);
        if (!cl)
                return -ENOMEM;

        switch (type) {
        case OUTPUT_NUMBER:
        case OUTPUT_TIME:
                scols_column_set_json_type(cl, SCOLS_JSON_NUMBER);
                break;
        case OUTPUT_BOOLEAN:
                scols_column_set_json_type(cl, SCOLS_JSON_BOOLEAN);
                break;
        case OUTPUT_STRV:
                /* libsmartcols splits the cell into array elements only
                 * through a wrap function: one element per line. */
                scols_column_set_json_type(cl, SCOLS_JSON_ARRAY_STRING);
                if (output_json) {
                        scols_column_set_flags(cl, scols_column_get_flags(cl) | SCOLS_FL_WRAP);
                        scols_column_set_wrapfunc(cl, scols_wrapnl_chunksize, scols_wrapnl_nextchunk, NULL);
                }
                break;
        default:
                scols_column_set_json_type(cl, SCOLS_JSON_STRING);
                break;
        }
        return 0;
}

static int table_new(Output *o) {
        o->table = scols_new_table();
        if (!o->table)
                return -ENOMEM;
        if (output_json) {
                scols_table_enable_json(o->table, 1);
                if (scols_table_set_name(o->table, o->name) < 0)
                        return -ENOMEM;
        }
        if (!output_legend)
                scols_table_enable_noheadings(o->table, 1);
        return 0;
}

int output_new(const char *name, const OutputColumn *columns, size_t n_columns, Output **ret) {
        Output *o;
        int r;

        o = calloc(1, sizeof(Output));
        if (!o)
                return -ENOMEM;
        o->name = strdup(name);
        o->types = calloc(n_columns ?: 1, sizeof(OutputType));
        if (!o->name || !o->types) {
                output_free(o);
                return -ENOMEM;
        }
        r = table_new(o);
        for (size_t i = 0; r >= 0 && i < n_columns; i++) {
                r = add_column(o, columns[i].name, columns[i].type, columns[i].width, columns[i].flags);
                o->types[i] = columns[i].type;
        }
        if (r < 0) {
                output_free(o);
                return r;
        }
        o->n_columns = n_columns;
        *ret = o;
        return 0;
}

Output *output_free(Output *o) {
        if (!o)
                return NULL;
        scols_unref_table(o->table);
        for (size_t i = 0; i < o->n_fields; i++) {
                free(o->field_names[i]);
                free(o->field_values[i]);
        }
        free(o->types);
        free(o->name);
        free(o);
        return NULL;
}

int output_row(Output *o) {
        o->line = scols_table_new_line(o->table, NULL);
        return o->line ? 0 : -ENOMEM;
}

int output_cell(Output *o, size_t column, const char *s) {
        if (!o->line || column >= o->n_columns)
                return -EINVAL;
        return scols_line_set_data(o->line, column, s ?: "") < 0 ? -ENOMEM : 0;
}

int output_cell_u64(Output *o, size_t column, uint64_t v) {
        char buf[32];

        snprintf(buf, sizeof buf, "%" PRIu64, v);
        return output_cell(o, column, buf);
}

int output_cell_time(Output *o, size_t column, uint64_t usec) {
        char buf[64];
        time_t t;
        struct tm tm;

        if (usec == 0 || usec == UINT64_MAX)
                return output_cell(o, column, output_json ? NULL : "-");
        if (output_json)
                return output_cell_u64(o, column, usec);
        t = (time_t) (usec / USEC_PER_SEC);
        if (!localtime_r(&t, &tm) || strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                return output_cell_u64(o, column, usec);
        return output_cell(o, column, buf);
}

int output_cell_bool(Output *o, size_t column, bool b) {
        return output_cell(o, column, b ? "yes" : "no");
}

/* libsmartcols reads JSON string arrays as newline-separated text. */
static char *strv_render(char * const *l) {
        const char *sep = output_json ? "\n" : ", ";
        size_t n = 1;
        char *s, *p;

        for (char * const *i = l; i && *i; i++)
                n += strlen(*i) + strlen(sep);
        s = p = malloc(n);
        if (!s)
                return NULL;
        *p = '\0';
        for (char * const *i = l; i && *i; i++)
                p = stpcpy(stpcpy(p, i == l ? "" : sep), *i);
        return s;
}

int output_cell_strv(Output *o, size_t column, char * const *l) {
        _cleanup_free_ char *s = NULL;

        if (!o->line || column >= o->n_columns)
                return -EINVAL;
        /* No data at all is what libsmartcols prints as an empty array. */
        if (!l || !l[0])
                return 0;
        s = strv_render(l);
        if (!s)
                return -ENOMEM;
        return output_cell(o, column, s);
}

static int record_build(Output *o) {
        int r;

        if (output_json) {
                for (size_t i = 0; i < o->n_fields; i++) {
                        r = add_column(o, o->field_names[i], o->field_types[i], 0, 0);
                        if (r < 0)
                                return r;
                }
                o->n_columns = o->n_fields;
                r = output_row(o);
                for (size_t i = 0; r >= 0 && i < o->n_fields; i++)
                        r = output_cell(o, i, o->field_values[i]);
                return r;
        }

        /* A record is read as "Field: value" lines; a header would only
         * say "FIELD VALUE", so there is none. */
        scols_table_enable_noheadings(o->table, 1);
        r = add_column(o, "FIELD", OUTPUT_STRING, 0, OUTPUT_RIGHT);
        if (r >= 0)
                r = add_column(o, "VALUE", OUTPUT_STRING, 0, OUTPUT_WRAP);
        if (r < 0)
                return r;
        o->n_columns = 2;
        for (size_t i = 0; i < o->n_fields; i++) {
                _cleanup_free_ char *k = NULL;

                if (asprintf(&k, "%s:", o->field_names[i]) < 0)
                        return -ENOMEM;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell(o, 0, k);
                if (r >= 0)
                        r = output_cell(o, 1, o->field_values[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* libsmartcols (up to 2.38 at least) prints an empty string array as
 * [ null ]; an empty list is [] in JSON. A string "null" is quoted, so the
 * bare word inside brackets can only be that case. */
static void json_fix_empty_arrays(char *s) {
        char *w = s;

        for (const char *r = s; *r;) {
                if (*r == '[') {
                        const char *p = r + 1;

                        p += strspn(p, " \n");
                        if (strncmp(p, "null", 4) == 0) {
                                p += 4;
                                p += strspn(p, " \n");
                                if (*p == ']') {
                                        *w++ = '[';
                                        *w++ = ']';
                                        r = p + 1;
                                        continue;
                                }
                        }
                }
                *w++ = *r++;
        }
        *w = '\0';
}

int output_print(Output *o) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        FILE *f;
        int r;

        if (o->record) {
                r = record_build(o);
                if (r < 0)
                        return r;
        }
        if (!output_json) {
                r = scols_print_table(o->table);
                fflush(stdout);
                return r < 0 ? -EIO : 0;
        }
        f = open_memstream(&text, &len);
        if (!f)
                return -ENOMEM;
        scols_table_set_stream(o->table, f);
        r = scols_print_table(o->table);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return -EIO;
        json_fix_empty_arrays(text);
        fputs(text, stdout);
        return fflush(stdout) == 0 ? 0 : -EIO;
}

int output_record_new(const char *name, Output **ret) {
        Output *o;
        int r;

        r = output_new(name, NULL, 0, &o);
        if (r < 0)
                return r;
        o->record = true;
        *ret = o;
        return 0;
}

int output_field(Output *o, const char *field, OutputType type, const char *value) {
        if (!o->record)
                return -EINVAL;
        if (o->n_fields >= OUTPUT_RECORD_FIELDS_MAX)
                return -E2BIG;
        o->field_names[o->n_fields] = strdup(field);
        o->field_values[o->n_fields] = strdup(value ?: "");
        if (!o->field_names[o->n_fields] || !o->field_values[o->n_fields]) {
                free(o->field_names[o->n_fields]);
                free(o->field_values[o->n_fields]);
                return -ENOMEM;
        }
        o->field_types[o->n_fields++] = type;
        return 0;
}

int output_field_u64(Output *o, const char *field, uint64_t v) {
        char buf[32];

        snprintf(buf, sizeof buf, "%" PRIu64, v);
        return output_field(o, field, OUTPUT_NUMBER, buf);
}

int output_field_bool(Output *o, const char *field, bool b) {
        return output_field(o, field, OUTPUT_BOOLEAN, b ? "yes" : "no");
}

int output_field_strv(Output *o, const char *field, char * const *l) {
        _cleanup_free_ char *s = strv_render(l);

        if (!s)
                return -ENOMEM;
        return output_field(o, field, OUTPUT_STRV, s);
}
