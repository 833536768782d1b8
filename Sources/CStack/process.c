#include "CStack.h"

#include <sys/syscall.h>
#include <unistd.h>

int cstack_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
