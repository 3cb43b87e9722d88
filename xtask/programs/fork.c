/* fork, waitpid, kill and copy-on-write in the kernel's user mode (the check
 * run::fork_wait_and_kill builds it with `gcc -static`): a child that exits with a status, a
 * spinning child ended by SIGKILL once it runs (it says so through shared memory), another
 * killed right after fork (before or after it has started), eight children reaped by wait(),
 * ECHILD when none is left. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int shared_value = 1;

int main(void) {
    int st;
    pid_t c = fork();
    if (c < 0)
        return 10;
    if (c == 0) {
        shared_value = 2;
        printf("child %d of %d: value %d\n", getpid(), getppid(), shared_value);
        fflush(stdout);
        _exit(5);
    }
    pid_t w = waitpid(c, &st, 0);
    printf("parent %d: reaped %s, exited %d with %d, value %d\n", getpid(), w == c ? "its child" : "another",
           WIFEXITED(st), WEXITSTATUS(st), shared_value);
    volatile int *running = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (running == MAP_FAILED)
        return 12;
    pid_t s = fork();
    if (s == 0) {
        *running = 1;
        for (;;)
            ;
    }
    while (!*running)
        sched_yield();
    kill(s, SIGKILL);
    waitpid(s, &st, 0);
    printf("spinner: signalled %d by %d\n", WIFSIGNALED(st), WTERMSIG(st));
    s = fork();
    if (s == 0)
        for (;;)
            ;
    kill(s, SIGTERM);
    waitpid(s, &st, 0);
    printf("killed at once: signalled %d by %d\n", WIFSIGNALED(st), WTERMSIG(st));
    for (int i = 0; i < 8; i++)
        if (fork() == 0)
            _exit(i);
    int sum = 0;
    for (int i = 0; i < 8; i++) {
        if (wait(&st) < 0)
            return 11;
        sum += WEXITSTATUS(st);
    }
    printf("eight children: %d\n", sum);
    printf("none left: %d\n", wait(&st) == -1 && errno == ECHILD);
    return 0;
}
