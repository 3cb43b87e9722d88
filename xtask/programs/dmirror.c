/* The test devices /dev/hmm_dmirror0..3 from a program in the kernel's user mode (the check
 * run::dmirror_device_files builds it with `gcc -static`): lib/test_hmm.c's ioctls on the
 * program's own memory (device read and write, migration to device memory and back by CPU
 * faults, a snapshot), an O_TMPFILE file in /tmp mapped and read by the device, /proc/meminfo's
 * huge page size, and the errors of a device that does not exist and a closed descriptor.
 * The uapi facts (struct hmm_dmirror_cmd, the ioctl numbers) are Linux's test_hmm_uapi.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

struct hmm_dmirror_cmd {
    uint64_t addr, ptr, npages, cpages, faults;
};
#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_WRITE _IOWR('H', 0x01, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_DEV _IOWR('H', 0x02, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)

#define NPAGES 16
#define SIZE (NPAGES * 4096)

static long cmd(int fd, unsigned long req, void *addr, void *ptr, struct hmm_dmirror_cmd *c) {
    memset(c, 0, sizeof *c);
    c->addr = (uintptr_t)addr;
    c->ptr = (uintptr_t)ptr;
    c->npages = NPAGES;
    return ioctl(fd, req, c);
}

int main(void) {
    struct hmm_dmirror_cmd c;
    int fd = open("/dev/hmm_dmirror0", O_RDWR);
    if (fd < 0)
        return 10;
    int *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int *mirror = malloc(SIZE);
    for (int i = 0; i < SIZE / 4; i++)
        p[i] = i;
    long r = cmd(fd, HMM_DMIRROR_READ, p, mirror, &c);
    int same = 1;
    for (int i = 0; i < SIZE / 4; i++)
        same &= mirror[i] == i;
    printf("device read: %ld, %llu pages, same %d\n", r, (unsigned long long)c.cpages, same);

    r = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, &c);
    printf("migrated: %ld, %llu pages\n", r, (unsigned long long)c.cpages);
    unsigned char snap[NPAGES];
    cmd(fd, HMM_DMIRROR_SNAPSHOT, p, snap, &c);
    /* HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE */
    printf("snapshot of page 0: %#x\n", snap[0]);
    same = 1;
    for (int i = 0; i < SIZE / 4; i++)
        same &= p[i] == i;
    printf("CPU reads after migration: same %d\n", same);

    for (int i = 0; i < SIZE / 4; i++)
        mirror[i] = -i;
    r = cmd(fd, HMM_DMIRROR_WRITE, p, mirror, &c);
    same = 1;
    for (int i = 0; i < SIZE / 4; i++)
        same &= p[i] == -i;
    printf("device write: %ld, %llu pages, CPU sees it %d\n", r, (unsigned long long)c.cpages, same);

    int tf = open("/tmp", O_TMPFILE | O_EXCL | O_RDWR, 0600);
    if (tf < 0 || ftruncate(tf, SIZE))
        return 11;
    for (int i = 0; i < SIZE / 4; i++)
        mirror[i] = 3 * i;
    long w = pwrite(tf, mirror, SIZE, 0);
    int *fp = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, tf, 0);
    memset(mirror, 0, SIZE);
    r = cmd(fd, HMM_DMIRROR_READ, fp, mirror, &c);
    same = 1;
    for (int i = 0; i < SIZE / 4; i++)
        same &= mirror[i] == 3 * i && fp[i] == 3 * i;
    printf("tmpfile: wrote %ld, device read %ld, same %d\n", w, r, same);

    FILE *mi = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long hs = 0;
    while (mi && fgets(line, sizeof line, mi))
        if (sscanf(line, "Hugepagesize: %lu kB", &hs) == 1)
            break;
    printf("huge page size: %lu kB\n", hs);

    printf("no such device: %d\n", open("/dev/hmm_dmirror9", O_RDWR) == -1 && errno == ENOENT);
    int first = close(fd);
    int again = close(fd) == -1 && errno == EBADF;
    printf("close: %d, again EBADF: %d\n", first, again);
    return 0;
}
