/* What the disk gives concurrent fdatasyncs, the question behind the journal's two
 * commits in flight (BENCHMARKS.md). Each of THREADS threads overwrites one 4 KiB
 * block with O_DIRECT and fdatasyncs it, in a loop, for 3 seconds: in a file of its
 * own, or with SAMEFILE 1 at its own offset of one shared file. Overwriting (the files
 * are written once first) is what the journal does, so no fdatasync commits a file
 * size change.
 *
 * Build, then run in a scratch directory on the disk to measure:
 *   gcc -O2 -Wall -pthread tools/fsync-concurrency.c -o /tmp/fsync-concurrency
 *   mkdir -p /tmp/scratch && cd /tmp/scratch && /tmp/fsync-concurrency 2 1
 * Prints the fdatasyncs per second of all threads and the mean write + fdatasync
 * latency. Leaves files f0, f1, ... (1 MiB each) behind. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS_MAX 64
#define BLOCK_BYTES 4096
#define FILE_BYTES (1 << 20)
#define SECONDS 3.0

static int same_file;
static int fds[THREADS_MAX];
static long syncs[THREADS_MAX];
static double latency_s[THREADS_MAX];

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *aligned_block(size_t bytes, int fill) {
    void *block;
    if (posix_memalign(&block, BLOCK_BYTES, bytes) != 0) {
        perror("posix_memalign");
        exit(1);
    }
    memset(block, fill, bytes);
    return block;
}

static void *run(void *argument) {
    long index = (long)argument;
    void *block = aligned_block(BLOCK_BYTES, 1);
    int fd = fds[same_file ? 0 : index];
    off_t offset = same_file ? index * BLOCK_BYTES : 0;
    double end = now_s() + SECONDS, total_s = 0;
    long count = 0;
    while (now_s() < end) {
        double started = now_s();
        if (pwrite(fd, block, BLOCK_BYTES, offset) != BLOCK_BYTES) {
            perror("pwrite");
            exit(1);
        }
        if (fdatasync(fd) != 0) {
            perror("fdatasync");
            exit(1);
        }
        total_s += now_s() - started;
        count++;
    }
    syncs[index] = count;
    latency_s[index] = total_s / count;
    free(block);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s THREADS SAMEFILE(0|1)\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    same_file = atoi(argv[2]);
    if (threads < 1 || threads > THREADS_MAX) {
        fprintf(stderr, "THREADS must be in 1..%d\n", THREADS_MAX);
        return 2;
    }
    void *zeros = aligned_block(FILE_BYTES, 0);
    for (int i = 0; i < (same_file ? 1 : threads); i++) {
        char name[32];
        snprintf(name, sizeof name, "f%d", i);
        fds[i] = open(name, O_RDWR | O_CREAT | O_DIRECT, 0644);
        if (fds[i] < 0 || pwrite(fds[i], zeros, FILE_BYTES, 0) != FILE_BYTES ||
            fsync(fds[i]) != 0) {
            perror(name);
            return 1;
        }
    }
    pthread_t handles[THREADS_MAX];
    for (long i = 0; i < threads; i++)
        pthread_create(&handles[i], NULL, run, (void *)i);
    long total = 0;
    double latency_sum_s = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(handles[i], NULL);
        total += syncs[i];
        latency_sum_s += latency_s[i];
    }
    printf("threads %d samefile %d: %.0f syncs/s total, mean latency %.0f us\n", threads,
           same_file, total / SECONDS, latency_sum_s / threads * 1e6);
    return 0;
}
