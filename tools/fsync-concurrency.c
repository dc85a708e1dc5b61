/* What the disk gives concurrent fdatasyncs: each of N threads overwrites 4 KiB with
 * O_DIRECT and fdatasyncs, in a loop for 3 s (own file, or one file with SAMEFILE 1).
 * Build and run in a scratch directory on the disk to measure:
 *   gcc -O2 -pthread tools/fsync-concurrency.c -o /tmp/fsync-concurrency
 *   (cd /tmp/scratch && /tmp/fsync-concurrency THREADS SAMEFILE)
 * Prints fdatasyncs per second in all and the mean write + fdatasync latency. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <string.h>
static int nthreads, samefile; static double secs=3;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static long counts[64]; static double lat[64];
static int fds[64];
void* run(void*a){ long i=(long)a; void*buf; posix_memalign(&buf,4096,4096); memset(buf,1,4096);
 int fd=fds[samefile?0:i]; double end=now()+secs; long n=0; double tl=0;
 while(now()<end){ double t0=now(); if(pwrite(fd,buf,4096,(samefile?i:0)*4096)!=4096){perror("w");exit(1);} if(fdatasync(fd)){perror("s");exit(1);} tl+=now()-t0; n++; }
 counts[i]=n; lat[i]=tl/n; return 0;}
int main(int c,char**v){ nthreads=atoi(v[1]); samefile=atoi(v[2]);
 for(int i=0;i<nthreads;i++){ char p[64]; sprintf(p,"f%d",i); fds[i]=open(p,O_RDWR|O_CREAT|O_DIRECT,0644); ftruncate(fds[i],1<<20); void*b; posix_memalign(&b,4096,1<<20); memset(b,0,1<<20); pwrite(fds[i],b,1<<20,0); fsync(fds[i]); }
 pthread_t t[64]; for(long i=0;i<nthreads;i++) pthread_create(&t[i],0,run,(void*)i);
 long tot=0; double l=0; for(int i=0;i<nthreads;i++){pthread_join(t[i],0); tot+=counts[i]; l+=lat[i];}
 printf("threads %d samefile %d: %.0f syncs/s total, mean latency %.0f us\n",nthreads,samefile,tot/secs,l/nthreads*1e6); }
