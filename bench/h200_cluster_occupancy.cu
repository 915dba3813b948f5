// How many clusters of the persistent GEMMs' shape (384 threads, ~227 KB of dynamic shared memory, one CTA per SM)
// the GPU holds at once (cudaOccupancyMaxActiveClusters): 2-CTA clusters against the SMs / 2 that sy_moe launches (if
// fewer fit, a cluster past them starts only when a resident one exits, with its first (static) work item at the end
// of the kernel), and 4-CTA clusters (2x2: activations and weights both multicast), whose SMs left idle where a GPC's
// SM count is not a multiple of 4 would cost what the sharing saves. Run on the H200: nvcc -std=c++17
// -gencode=arch=compute_90a,code=sm_90a bench/h200_cluster_occupancy.cu -o /tmp/co && /tmp/co
// (bench/results/logs/h200-cluster-occupancy-1553.log; -1539.log: the 2-CTA half only)
#include <cstdio>
#include <cuda_runtime.h>
__global__ void __launch_bounds__(384, 1) probe_kernel(int* out) {
  extern __shared__ int smem[];
  if (threadIdx.x == 0) smem[0] = blockIdx.x;
  __syncthreads();
  if (threadIdx.x == 0 && out) out[blockIdx.x] = smem[0];
}
int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  for (int cl : {2, 4})
    for (int smem_kb : {200, 226}) {
      const size_t smem = (size_t)smem_kb * 1024;
      cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(cl * (sms / cl));
      cfg.blockDim = dim3(384);
      cfg.dynamicSmemBytes = smem;
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = cl;
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = -1;
      cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, probe_kernel, &cfg);
      printf("SMs %d, smem %d KB: max active %d-CTA clusters %d (%s): %d SMs busy of %d\n", sms, smem_kb, cl, clusters,
             cudaGetErrorString(e), clusters * cl, sms);
    }
  return 0;
}
