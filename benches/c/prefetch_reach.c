/* How much of a random read-modify-write's memory cost software prefetch hides, by
 * table size and page size (BENCHMARKS.md, "Why prefetching does not hide a large
 * table's misses"). Each operation reads and writes one random 128-byte bucket (two
 * lines, both prefetched DIST operations ahead, in groups of GROUP), then runs a
 * chain of WORK dependent multiplies, as an engine operation computes between its
 * memory accesses.
 *
 *   cc -O2 -o prefetch_reach prefetch_reach.c
 *   ./prefetch_reach MB WORK DIST GROUP [4k]    e.g. ./prefetch_reach 200 30 32 1
 *
 * Prints nanoseconds per operation (20M operations). `4k` keeps the table off huge
 * pages. Not part of the build or the tests.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <string.h>
static uint64_t s=12345; static inline uint64_t rnd(){ s+=0x9e3779b97f4a7c15ULL; uint64_t z=s; z=(z^(z>>30))*0xbf58476d1ce4e5b9ULL; z=(z^(z>>27))*0x94d049bb133111ebULL; return z^(z>>31);}
double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
#define HP (2ul<<20)

int main(int argc,char**argv){
  size_t total=(size_t)atoi(argv[1])<<20; int work=atoi(argv[2]); int D=atoi(argv[3]); int nohuge=argc>5; int G=atoi(argv[4]);
  char*m=mmap(0,total+HP,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  m=(char*)(((uintptr_t)m+HP-1)&~(HP-1)); madvise(m,total,nohuge?MADV_NOHUGEPAGE:MADV_HUGEPAGE); memset(m,1,total);
  size_t buckets=total/128;
  int B=8192; size_t ops=20000000; uint64_t *t=malloc((B+2048)*8); uint64_t acc=1;
  double el=0; size_t done=0;
  while(done<ops){ for(int i=0;i<B+D+G;i++) t[i]=rnd();
    double st=now();
    for(int i=0;i<B;i++){ if(i%G==0) for(int j=i+D;j<i+D+G;j++){ uint64_t h=t[j]; char*p=m+(((h>>32)*buckets)>>32)*128; __builtin_prefetch(p); __builtin_prefetch(p+64);}
      uint64_t h=t[i]; uint64_t*l=(uint64_t*)(m+(((h>>32)*buckets)>>32)*128); uint64_t v=l[0]+l[8]+h;
      for(int k=0;k<work;k++){ v = v*0x9e3779b97f4a7c15ULL + (v>>7); }
      l[0]=v; acc+=v; }
    el+=now()-st; done+=B; }
  printf("G %d %5zu MB work %3d dist %3d %s: %6.1f ns/op\n",G,total>>20,work,D,nohuge?"4K":"2M", el/ops*1e9);
  return (int)(acc&1);
}
