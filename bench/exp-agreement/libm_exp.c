// Writes exp(x) as doubles for 20 M x from one xorshift sequence (bench/exp-agreement/run.sh): even i in the softmax
// range [-40, 0], odd i in the sigmoid range [-20, 20].
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
// xorshift to generate the same doubles in node
int main(){ uint64_t s=0x9E3779B97F4A7C15ull; FILE*f=fopen("c.bin","wb"); const long N=20000000;
 static double buf[1<<16]; long i=0;
 while(i<N){ int n=0; for(;n<(1<<16)&&i<N;n++,i++){ s^=s<<13; s^=s>>7; s^=s<<17; double u=(double)(s>>11)/9007199254740992.0; double x=-40.0*u; /* softmax range */ 
   if(i&1) x=(u-0.5)*40.0; /* sigmoid range */ buf[n]=exp(x);} fwrite(buf,8,n,f);} fclose(f); return 0;}
