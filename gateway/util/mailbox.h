/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Mailbox: run a closure on another thread's sd-event loop.
 *
 * Any thread may post; the owning loop runs the closures in order from an
 * eventfd source. This is the only way gateway threads talk to each other:
 * no object is touched by two threads, its owner's loop is asked instead.
 * Returns negative errno on failure (only -ENOMEM from post).
 */

#include <systemd/sd-event.h>

typedef struct Mailbox Mailbox;
typedef void (*mailbox_fn_t)(void *userdata);

int mailbox_new(sd_event *e, Mailbox **ret);
Mailbox *mailbox_free(Mailbox *m);       /* pending closures are dropped */
int mailbox_post(Mailbox *m, mailbox_fn_t fn, void *userdata);
