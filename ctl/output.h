/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * One row model for every gwctl listing, over libsmartcols: a listing
 * declares its columns once, adds rows of cells, and output_print() shows
 * it as an aligned table or, with --json, as a JSON object
 * { "<name>": [ { "<column>": value, ... } ] } with typed values.
 * --no-legend drops the header line of tables.
 *
 * A record (output_record_new()) is the same model for one object shown
 * by "show"/"status": "Field: value" lines, or one JSON row.
 *
 * Functions return 0 or a negative errno (-ENOMEM); they never print
 * errors themselves.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum OutputType {
        OUTPUT_STRING,
        OUTPUT_NUMBER,
        OUTPUT_BOOLEAN,                 /* cells "yes"/"no"; JSON true/false */
        OUTPUT_STRV,                    /* ", " in tables; JSON array of strings */
        OUTPUT_TIME,                    /* usec since the epoch: local time in tables, a JSON number */
        _OUTPUT_TYPE_MAX,
} OutputType;

typedef enum OutputFlags {
        OUTPUT_RIGHT = 1 << 0,          /* right-aligned (numbers) */
        OUTPUT_TRUNC = 1 << 1,          /* may be truncated to fit the terminal */
        OUTPUT_WRAP  = 1 << 2,          /* may wrap */
} OutputFlags;

typedef struct OutputColumn {
        const char *name;               /* header; JSON key in lower case */
        OutputType type;
        double width;                   /* libsmartcols width hint: <1 = fraction of the terminal */
        OutputFlags flags;
} OutputColumn;

typedef struct Output Output;

void output_set_mode(bool json, bool legend);

int output_new(const char *name, const OutputColumn *columns, size_t n_columns, Output **ret);
Output *output_free(Output *o);
static inline void output_freep(Output **o) {
        if (*o)
                output_free(*o);
}
#define _cleanup_output_ __attribute__((cleanup(output_freep)))

/* Starts a new row; cells of the row are set with the output_cell_*(). */
int output_row(Output *o);
int output_cell(Output *o, size_t column, const char *s);          /* NULL = "" */
int output_cell_u64(Output *o, size_t column, uint64_t v);
int output_cell_bool(Output *o, size_t column, bool b);
int output_cell_strv(Output *o, size_t column, char * const *l);
int output_cell_time(Output *o, size_t column, uint64_t usec);  /* 0 = none: "-" / null */
int output_print(Output *o);

/* A record of named fields. */
int output_record_new(const char *name, Output **ret);
int output_field(Output *o, const char *field, OutputType type, const char *value);
int output_field_u64(Output *o, const char *field, uint64_t v);
int output_field_bool(Output *o, const char *field, bool b);
int output_field_strv(Output *o, const char *field, char * const *l);
