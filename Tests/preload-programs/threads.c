/*
 * threads.c — run under the preload library: four threads hammer one TCP connection (two writers on
 * one end, two readers on the other), then a shutdown from another thread wakes a blocked reader.
 *   threads PORT  → prints "records N/N intact", "shutdown woke the reader after MS ms"; exit 0 on success.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { PER_WRITER = 20000 };
struct record { uint32_t writer, seq, check, pad; };

static int client, server;
static unsigned char seen[2][PER_WRITER];
static long received, corrupt;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *writer(void *arg) {
    uint32_t id = (uint32_t)(uintptr_t)arg;
    for (uint32_t i = 0; i < PER_WRITER; i++) {
        struct record r = {id, i, id * 2654435761u ^ i, 0};
        if (send(client, &r, sizeof r, 0) != (ssize_t)sizeof r) { perror("send"); exit(2); }
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    struct record r;
    for (;;) {
        ssize_t n = recv(server, &r, sizeof r, MSG_WAITALL);
        if (n == 0) return NULL;
        if (n != (ssize_t)sizeof r) { fprintf(stderr, "short read %zd\n", n); exit(2); }
        pthread_mutex_lock(&lock);
        if (r.writer > 1 || r.seq >= PER_WRITER || r.check != (r.writer * 2654435761u ^ r.seq) || seen[r.writer][r.seq]) corrupt++;
        else seen[r.writer][r.seq] = 1;
        received++;
        pthread_mutex_unlock(&lock);
    }
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static int blocked;
static void *blocked_reader(void *arg) {
    char b[8];
    ssize_t n = recv(*(int *)arg, b, sizeof b, 0);
    blocked = (int)n;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    alarm(30); /* never outlive a test that gave up on us */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int l = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on); /* (an earlier run's TIME_WAIT) */
    if (bind(l, (void *)&a, sizeof a) || listen(l, 4)) { perror("listen"); return 2; }
    client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (void *)&a, sizeof a)) { perror("connect"); return 2; }
    server = accept(l, NULL, NULL);
    pthread_t t[4];
    pthread_create(&t[0], NULL, writer, (void *)0);
    pthread_create(&t[1], NULL, writer, (void *)1);
    pthread_create(&t[2], NULL, reader, NULL);
    pthread_create(&t[3], NULL, reader, NULL);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    shutdown(client, SHUT_WR);
    pthread_join(t[2], NULL);
    pthread_join(t[3], NULL);
    long missing = 0;
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < PER_WRITER; i++) missing += !seen[w][i];
    printf("records %ld/%d intact, %ld corrupt, %ld missing\n", received - corrupt, 2 * PER_WRITER, corrupt, missing);

    /* A reader blocked in recv on the other end, woken by shutdown(SHUT_RD) from this thread. */
    pthread_t b;
    blocked = -99;
    pthread_create(&b, NULL, blocked_reader, &client);
    usleep(200000);
    long t0 = now_ms();
    shutdown(client, SHUT_RD);
    pthread_join(b, NULL);
    printf("shutdown woke the reader after %ld ms (recv returned %d)\n", now_ms() - t0, blocked);
    return corrupt == 0 && missing == 0 && received == 2 * PER_WRITER && blocked == 0 ? 0 : 1;
}
