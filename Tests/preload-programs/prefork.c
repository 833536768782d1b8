/*
 * prefork.c — the two classic forking servers, each with its own client process, on whatever
 * sockets the process gets (the kernel's, or the stack's under the preload library):
 *
 *   prefork PORT prefork   the parent listens, forks 4 workers and closes its own copy of the
 *                          listener; every worker accepts from the inherited listener and echoes.
 *   prefork PORT forking   the parent accepts, forks a child per connection and closes its copy of
 *                          the connection at once; the child answers, closes, and exits.
 *
 * Protocol: the client sends "msg-K\n"; the server answers "PID msg-K\n" and closes, so the client
 * must see the answer and then EOF (which proves the socket closed only when its last holder did).
 * "QUIT\n" ends a prefork worker (answered "PID bye\n"). The client makes 24 connections one after
 * another and 16 held open at once, then the QUITs. Exit 0 when every answer was right and every
 * process exited 0; prints how many distinct server processes answered.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { WORKERS = 4, SEQUENTIAL = 24, TOGETHER = 16 };
static struct sockaddr_in address;

/* Reads until '\n' (kept) or EOF; returns the length, -1 on error. */
static ssize_t read_line(int fd, char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = recv(fd, buf + n, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        if (buf[n++] == '\n') break;
    }
    buf[n] = 0;
    return (ssize_t)n;
}

/* One request on `c`: answers "PID line" and closes. Returns 1 for QUIT. */
static int serve(int c) {
    char line[64], reply[96];
    if (read_line(c, line, sizeof line) <= 0) { close(c); return 0; }
    int quit = strcmp(line, "QUIT\n") == 0;
    int n = snprintf(reply, sizeof reply, "%d %s", (int)getpid(), quit ? "bye\n" : line);
    if (send(c, reply, (size_t)n, MSG_NOSIGNAL) != n) perror("server send");
    if (close(c) != 0) perror("server close");
    return quit;
}

static int connect_retrying(void) {
    for (int attempt = 0; attempt < 500; attempt++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0) { perror("client socket"); return -1; }
        if (connect(c, (void *)&address, sizeof address) == 0) return c;
        close(c);
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    fprintf(stderr, "client: cannot connect\n");
    return -1;
}

/* Sends `line` on c (connected), checks "PID line" then EOF; records the pid. */
static int check_answer(int c, const char *line, int *pids, int *npids) {
    char expect[64], got[128];
    snprintf(expect, sizeof expect, "%s", line);
    ssize_t n = read_line(c, got, sizeof got);
    char rest[8];
    ssize_t eof = recv(c, rest, sizeof rest, 0);
    close(c);
    char *space = strchr(got, ' ');
    if (n <= 0 || !space || strcmp(space + 1, expect) != 0 || eof != 0) {
        fprintf(stderr, "client: for \"%.*s\" got \"%s\" (then recv %zd)\n", (int)strlen(line) - 1, line, got, eof);
        return 0;
    }
    int pid = atoi(got), seen = 0;
    for (int i = 0; i < *npids; i++) seen |= pids[i] == pid;
    if (!seen && *npids < 64) pids[(*npids)++] = pid;
    return 1;
}

static int client(int workers) {
    int pids[64], npids = 0, good = 0, k = 0;
    char line[32];
    for (int i = 0; i < SEQUENTIAL; i++, k++) {
        int c = connect_retrying();
        if (c < 0) return 1;
        int n = snprintf(line, sizeof line, "msg-%d\n", k);
        if (send(c, line, (size_t)n, 0) != n) { perror("client send"); return 1; }
        good += check_answer(c, line, pids, &npids);
    }
    int held[TOGETHER];
    for (int i = 0; i < TOGETHER; i++) if ((held[i] = connect_retrying()) < 0) return 1;
    for (int i = 0; i < TOGETHER; i++) {
        int n = snprintf(line, sizeof line, "msg-%d\n", k + i);
        if (send(held[i], line, (size_t)n, 0) != n) { perror("client send"); return 1; }
    }
    for (int i = 0; i < TOGETHER; i++) {
        snprintf(line, sizeof line, "msg-%d\n", k + i);
        good += check_answer(held[i], line, pids, &npids);
    }
    int quits = 0;
    for (int i = 0; i < workers; i++) {
        int c = connect_retrying();
        if (c < 0) return 1;
        if (send(c, "QUIT\n", 5, 0) != 5) { perror("client send"); return 1; }
        char got[64];
        if (read_line(c, got, sizeof got) > 0 && strstr(got, " bye\n")) quits++;
        close(c);
    }
    printf("client: %d/%d answers right, %d/%d workers said bye, %d server processes answered\n",
           good, SEQUENTIAL + TOGETHER, quits, workers, npids);
    fflush(stdout);
    return good == SEQUENTIAL + TOGETHER && quits == workers ? 0 : 1;
}

static int listener(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (l < 0 || bind(l, (void *)&address, sizeof address) || listen(l, 64)) { perror("listen"); exit(2); }
    return l;
}

static int wait_all(pid_t *pids, int n, const char *what) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int st = 0;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "%s %d failed (status 0x%x)\n", what, (int)pids[i], st);
            failed++;
        }
    }
    return failed;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    alarm(60); /* never outlive a test that gave up on us */
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[1]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int prefork = strcmp(argv[2], "prefork") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    pid_t client_pid = fork(); /* before any socket: it inherits none */
    if (client_pid == 0) _exit(client(prefork ? WORKERS : 0));

    int l = listener();
    int failed = 0;
    if (prefork) {
        pid_t workers[WORKERS];
        for (int i = 0; i < WORKERS; i++) {
            if ((workers[i] = fork()) == 0) {
                int served = 0;
                for (;;) {
                    int c = accept(l, NULL, NULL);
                    if (c < 0) { if (errno == EINTR) continue; perror("worker accept"); _exit(3); }
                    served++;
                    if (serve(c)) break;
                }
                printf("worker %d: %d connections\n", (int)getpid(), served);
                _exit(close(l) == 0 ? 0 : 4);
            }
        }
        close(l); /* the workers hold the listener now */
        printf("parent: 4 workers forked, its listener closed\n");
        failed += wait_all(workers, WORKERS, "worker");
    } else {
        pid_t children[SEQUENTIAL + TOGETHER];
        int n = 0;
        while (n < SEQUENTIAL + TOGETHER) {
            int c = accept(l, NULL, NULL);
            if (c < 0) { if (errno == EINTR) continue; perror("accept"); return 3; }
            pid_t pid = fork();
            if (pid == 0) {
                close(l);
                serve(c);
                _exit(0);
            }
            close(c); /* at once: the child holds the connection */
            if (pid < 0) { perror("fork"); return 3; }
            children[n++] = pid;
        }
        close(l);
        printf("parent: %d connections handed to children\n", n);
        failed += wait_all(children, n, "child");
    }
    failed += wait_all(&client_pid, 1, "client");
    printf("%s: %s\n", argv[2], failed ? "FAILED" : "ok");
    return failed ? 1 : 0;
}
