/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Cross-thread closure queue woken through an eventfd; see mailbox.h. */

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "macro.h"
#include "mailbox.h"

typedef struct MailboxItem {
        struct MailboxItem *next;
        mailbox_fn_t fn;
        void *userdata;
} MailboxItem;

struct Mailbox {
        pthread_mutex_t lock;
        MailboxItem *head, *tail;
        int efd;
        sd_event_source *source;
};

static int mailbox_dispatch(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Mailbox *m = userdata;
        uint64_t v;
        MailboxItem *list;

        (void) read(m->efd, &v, sizeof v);

        pthread_mutex_lock(&m->lock);
        list = m->head;
        m->head = m->tail = NULL;
        pthread_mutex_unlock(&m->lock);

        while (list) {
                MailboxItem *i = list;
                list = i->next;
                i->fn(i->userdata);
                free(i);
        }
        return 0;
}

int mailbox_new(sd_event *e, Mailbox **ret) {
        Mailbox *m = calloc(1, sizeof *m);
        int r;

        if (!m)
                return -ENOMEM;
        pthread_mutex_init(&m->lock, NULL);
        m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->efd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(e, &m->source, m->efd, EPOLLIN, mailbox_dispatch, m);
        if (r < 0)
                goto fail;
        *ret = m;
        return 0;
fail:
        mailbox_free(m);
        return r;
}

Mailbox *mailbox_free(Mailbox *m) {
        if (!m)
                return NULL;
        sd_event_source_disable_unref(m->source);
        safe_close(m->efd);
        while (m->head) {
                MailboxItem *i = m->head;
                m->head = i->next;
                free(i);
        }
        pthread_mutex_destroy(&m->lock);
        free(m);
        return NULL;
}

int mailbox_post(Mailbox *m, mailbox_fn_t fn, void *userdata) {
        MailboxItem *i = malloc(sizeof *i);
        bool wake;

        if (!i)
                return -ENOMEM;
        *i = (MailboxItem) { .fn = fn, .userdata = userdata };

        pthread_mutex_lock(&m->lock);
        wake = !m->head;
        if (m->tail)
                m->tail->next = i;
        else
                m->head = i;
        m->tail = i;
        pthread_mutex_unlock(&m->lock);

        if (wake) {
                uint64_t one = 1;
                (void) write(m->efd, &one, sizeof one);
        }
        return 0;
}
