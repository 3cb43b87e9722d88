/* Signals in the kernel's user mode (the check run::signals_are_delivered builds it with
 * `gcc -static`): a handler for a signal sent to itself (with its siginfo), the FPU state kept
 * across a handler, alarm() ending pause(), a blocked signal delivered when unblocked, an alarm
 * handler killing a child that sleeps while the parent waits for it (the kselftest harness's
 * timeout), an ignored signal, and a child ended by a signal's default action. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t got, info_ok;
static volatile pid_t child;

static void handler(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got = sig;
    info_ok = si->si_signo == sig && (sig != SIGUSR1 || si->si_pid == getpid());
}

static void kill_child(int sig) {
    (void)sig;
    kill(child, SIGKILL);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);

    kill(getpid(), SIGUSR1);
    printf("self: %d, siginfo %d\n", got, info_ok);

    volatile double x = 1.25;
    got = 0;
    raise(SIGUSR1);
    printf("after a handler: %.2f, got %d\n", x * 2, got);

    got = 0;
    alarm(1);
    int r = pause();
    printf("alarm: got %d, pause %d errno %d\n", got, r, errno == EINTR);

    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    got = 0;
    raise(SIGUSR1);
    printf("blocked: %d\n", got);
    sigprocmask(SIG_UNBLOCK, &m, NULL);
    printf("unblocked: %d\n", got);

    pid_t c = fork();
    if (c == 0) {
        sleep(30);
        _exit(0);
    }
    child = c;
    struct sigaction sk;
    memset(&sk, 0, sizeof sk);
    sk.sa_handler = kill_child;
    sigaction(SIGALRM, &sk, NULL);
    alarm(1);
    int st = 0;
    pid_t w;
    while ((w = waitpid(c, &st, 0)) < 0 && errno == EINTR)
        ;
    printf("timed-out child: reaped %d, signalled %d by %d\n", w == c, WIFSIGNALED(st), WTERMSIG(st));

    signal(SIGTERM, SIG_IGN);
    raise(SIGTERM);
    printf("SIGTERM ignored\n");

    c = fork();
    if (c == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(1);
    }
    waitpid(c, &st, 0);
    printf("default action: signalled %d by %d\n", WIFSIGNALED(st), WTERMSIG(st));
    return 0;
}
