/* The real node's sandbox ("pause") image: a static binary that holds a pod's namespaces and waits
 * for a signal. As PID 1 of the sandbox it must exit on SIGTERM/SIGINT (the kernel ignores signals
 * without a handler for PID 1) and reap the zombies that pods sharing its PID namespace leave. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGINT, &term, 0);
  sigaction(SIGCHLD, &chld, 0);
  for (;;) pause();
}
