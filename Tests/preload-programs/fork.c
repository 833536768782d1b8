/*
 * fork.c — run under the preload library: after fork, a child that closes the stack socket it
 * inherited must not close its parent's, and the child's own new socket works (a session of its
 * own), and the child can use the inherited listener (SO_ACCEPTCONN answers 1) as on the kernel.
 *   fork PORT → exit 0 when the parent still accepts and reads what the child sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    alarm(30); /* never outlive a test that gave up on us */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int l = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on); /* (an earlier run's TIME_WAIT) */
    if (bind(l, (void *)&a, sizeof a) || listen(l, 8)) { perror("listen"); return 2; }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(30);
        int on = 0;
        socklen_t len = sizeof on;
        int r = getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len);
        printf("child: getsockopt on the inherited listener: %d %s SO_ACCEPTCONN %d\n", r, r < 0 ? strerrorname_np(errno) : "", on);
        if (close(l) != 0) { perror("child close"); _exit(3); }
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (void *)&a, sizeof a)) { perror("child connect"); _exit(4); }
        if (send(c, "from child", 10, 0) != 10) { perror("child send"); _exit(5); }
        close(c);
        fflush(stdout);
        _exit(0);
    }
    int s = accept(l, NULL, NULL);
    char buf[32] = {0};
    ssize_t n = recv(s, buf, sizeof buf - 1, MSG_WAITALL);
    int st = 0;
    waitpid(pid, &st, 0);
    printf("parent: %zd bytes \"%s\", child exit %d\n", n, buf, WEXITSTATUS(st));
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    int rc = connect(c2, (void *)&a, sizeof a);
    printf("parent: its listener still accepts: %s\n", rc == 0 ? "yes" : strerror(errno));
    return n == 10 && !strcmp(buf, "from child") && WIFEXITED(st) && WEXITSTATUS(st) == 0 && rc == 0 ? 0 : 1;
}
