/* What an fdatasync costs on this disk when the write before it extends the file
 * against when it overwrites blocks already written (BENCHMARKS.md, "Durable commits
 * overwrite instead of extending the file"). Each step is one O_DIRECT write of BS
 * bytes at the next offset, then fdatasync (modes 0-2) or a single RWF_DSYNC write
 * (modes 3-4):
 *   0  append to an empty file (each write extends it)
 *   1  overwrite a file written with zeros first
 *   2  overwrite a file preallocated with fallocate (unwritten extents)
 *   3  append, RWF_DSYNC
 *   4  overwrite a zeroed file, RWF_DSYNC
 *
 *   cc -O2 -o fsync_overwrite fsync_overwrite.c
 *   ./fsync_overwrite MODE COUNT BS DIR     e.g. ./fsync_overwrite 1 2000 16384 /work
 *
 * DIR must be on the disk under test. Prints steps per second and latency
 * percentiles. Two at once (`./a & ./a; wait`) shows two cores' journals. Not part of
 * the build or the tests.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s MODE COUNT BS DIR\n", argv[0]);
    return 2;
  }
  int mode = atoi(argv[1]), count = atoi(argv[2]);
  size_t bs = (size_t)atoi(argv[3]);
  char path[4096];
  snprintf(path, sizeof path, "%s/fsync-overwrite-%d.dat", argv[4], getpid());
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  if (fd < 0) {
    perror("open");
    return 1;
  }
  void *buffer, *zeros;
  if (posix_memalign(&buffer, 4096, bs) || posix_memalign(&zeros, 4096, 1 << 20)) return 1;
  memset(buffer, 7, bs);
  memset(zeros, 0, 1 << 20);
  size_t length = (size_t)count * bs + (1 << 20);
  if (mode == 1 || mode == 4) {
    for (size_t at = 0; at < length; at += 1 << 20)
      if (pwrite(fd, zeros, 1 << 20, (off_t)at) != 1 << 20) return 1;
    fsync(fd);
  } else if (mode == 2) {
    if (fallocate(fd, 0, 0, (off_t)length)) return 1;
    fsync(fd);
  }
  double *latency = malloc(count * sizeof(double));
  double start = now_us();
  for (int i = 0; i < count; i++) {
    double began = now_us();
    off_t at = (off_t)i * (off_t)bs;
    if (mode >= 3) {
      struct iovec part = {buffer, bs};
      if (pwritev2(fd, &part, 1, at, RWF_DSYNC) != (ssize_t)bs) return 1;
    } else {
      if (pwrite(fd, buffer, bs, at) != (ssize_t)bs || fdatasync(fd)) return 1;
    }
    latency[i] = now_us() - began;
  }
  double elapsed = now_us() - start;
  qsort(latency, count, sizeof(double), by_value);
  printf("mode %d, %zu bytes: %.0f/s, p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n",
         mode, bs, count / elapsed * 1e6, latency[count / 2], latency[count * 99 / 100],
         latency[count * 999 / 1000], latency[count - 1]);
  unlink(path);
  return 0;
}
