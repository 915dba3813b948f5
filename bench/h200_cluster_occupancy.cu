// How many 2-CTA clusters of the persistent GEMMs' shape (384 threads, ~227 KB of dynamic shared memory, one CTA per
// SM) the GPU holds at once (cudaOccupancyMaxActiveClusters), against the clusters sy_moe launches (SMs / 2). If
// fewer fit, a cluster past them starts only when a resident one exits, with its first (static) work item at the end
// of the kernel. Run on the H200: nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a
// bench/h200_cluster_occupancy.cu -o /tmp/co && /tmp/co   (bench/results/logs/h200-cluster-occupancy-1539.log)
#include <cstdio>
#include <cuda_runtime.h>
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) probe_kernel(int* out) {
  extern __shared__ int smem[];
  if (threadIdx.x == 0) smem[0] = blockIdx.x;
  __syncthreads();
  if (threadIdx.x == 0 && out) out[blockIdx.x] = smem[0];
}
int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  for (int smem_kb : {200, 226}) {
    const size_t smem = (size_t)smem_kb * 1024;
    cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(2 * (sms / 2));
    cfg.blockDim = dim3(384);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = 2;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int clusters = -1;
    cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, probe_kernel, &cfg);
    printf("SMs %d, smem %d KB: max active 2-CTA clusters %d (%s); sy_moe launches %d\n", sms, smem_kb, clusters,
           cudaGetErrorString(e), sms / 2);
  }
  return 0;
}
