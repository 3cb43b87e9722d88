/* A static C program for the kernel's user mode (the check run::static_c_program_runs_in_ring_3
 * builds it with `gcc -static` and runs it with `cargo xtask qemu --run`'s kernel arguments):
 * glibc's startup (auxiliary vector, TLS through arch_prctl, brk), stdio to both streams, a
 * small and a large malloc (brk, then mmap), arguments, and the exit status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    printf("hello, %d args:", argc);
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    char *small = malloc(100);
    char *large = malloc(4 << 20);
    if (!small || !large)
        return 1;
    memset(large, 7, 4 << 20);
    long sum = 0;
    for (long i = 0; i < (4 << 20); i += 4096)
        sum += large[i];
    printf("malloc ok: %ld\n", sum);
    fprintf(stderr, "to stderr\n");
    free(large);
    free(small);
    return 3;
}
