/* The floor for a publisher that wakes blocked readers at 1 kHz, in C (bench_sensors.py).
 *
 *     cc -O2 -o wake_floor wake_floor.c && ./wake_floor READERS SECONDS
 *
 * The parent sleeps to each millisecond with clock_nanosleep (absolute, CLOCK_MONOTONIC),
 * bumps a shared word and FUTEX_WAKEs the READERS child processes asleep on it: what the
 * sensor publisher does per sample for futex readers, minus Python. Prints the parent's CPU
 * (user + system) as a percentage of one core. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STOP 0xffffffffu

static double cpu_us(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s READERS SECONDS\n", argv[0]);
        return 2;
    }
    int readers = atoi(argv[1]);
    double seconds = atof(argv[2]);
    _Atomic unsigned *word = mmap(NULL, sizeof *word, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (word == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (int i = 0; i < readers; i++) {
        if (fork() == 0) {
            for (;;) {
                unsigned seen = atomic_load(word);
                if (seen == STOP)
                    _exit(0);
                syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
            }
        }
    }
    usleep(100000); /* the readers asleep */
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long ticks = (long)(seconds * 1000);
    double start = cpu_us();
    for (long n = 0; n < ticks; n++) {
        next.tv_nsec += 1000000;
        if (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        atomic_fetch_add(word, 1);
        syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
    }
    double used = cpu_us() - start;
    printf("%.2f %% of a core at 1 kHz, waking %d readers\n", used / (seconds * 1e6) * 100, readers);
    atomic_store(word, STOP);
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
    while (wait(NULL) > 0) {
    }
    return 0;
}
