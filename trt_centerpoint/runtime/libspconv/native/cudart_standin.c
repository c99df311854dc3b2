/* A stand-in CUDA runtime for running libspconv's host-side engine build on a machine without a GPU.
 *
 * Device memory is host memory, kernel launches do nothing, every call succeeds. It exports the symbols
 * libspconv imports, versioned with the soname node of the runtime the library was linked against (a linker
 * version script picks libcudart.so.11.0 or libcudart.so.12), so the dynamic linker binds them.
 * Whatever a kernel would have computed is never computed: outputs of a forward pass are meaningless.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned int x, y, z; } standin_dim3;
typedef int standin_error;

static void *fatbin_handle[4];

void **__cudaRegisterFatBinary(void *fatbin) { (void)fatbin; return fatbin_handle; }
void __cudaRegisterFatBinaryEnd(void **handle) { (void)handle; }
void __cudaUnregisterFatBinary(void **handle) { (void)handle; }
void __cudaRegisterFunction(void **handle, const char *host_fun, char *device_fun, const char *device_name,
                            int thread_limit, void *tid, void *bid, void *block_dim, void *grid_dim, int *wsize) {
  (void)handle; (void)host_fun; (void)device_fun; (void)device_name; (void)thread_limit;
  (void)tid; (void)bid; (void)block_dim; (void)grid_dim; (void)wsize;
}
void __cudaRegisterVar(void **handle, char *host_var, char *device_address, const char *device_name, int ext,
                       size_t size, int constant, int global) {
  (void)handle; (void)host_var; (void)device_address; (void)device_name; (void)ext; (void)size;
  (void)constant; (void)global;
}
unsigned __cudaPushCallConfiguration(standin_dim3 grid, standin_dim3 block, size_t shared, void *stream) {
  (void)grid; (void)block; (void)shared; (void)stream;
  return 0;
}
standin_error __cudaPopCallConfiguration(standin_dim3 *grid, standin_dim3 *block, size_t *shared, void *stream) {
  standin_dim3 one = {1, 1, 1};
  if (grid) *grid = one;
  if (block) *block = one;
  if (shared) *shared = 0;
  (void)stream;
  return 0;
}
standin_error cudaLaunchKernel(const void *fun, standin_dim3 grid, standin_dim3 block, void **args, size_t shared,
                               void *stream) {
  (void)fun; (void)grid; (void)block; (void)args; (void)shared; (void)stream;
  return 0;
}

static standin_error host_alloc(void **ptr, size_t bytes) {
  /* zeroed, so what a skipped kernel would have written reads as 0 rather than garbage */
  *ptr = calloc(bytes ? bytes : 1, 1);
  return *ptr ? 0 : 2; /* 2: cudaErrorMemoryAllocation */
}
standin_error cudaMalloc(void **ptr, size_t bytes) { return host_alloc(ptr, bytes); }
standin_error cudaMallocHost(void **ptr, size_t bytes) { return host_alloc(ptr, bytes); }
standin_error cudaFree(void *ptr) { free(ptr); return 0; }
standin_error cudaFreeHost(void *ptr) { free(ptr); return 0; }
standin_error cudaMemcpy(void *dst, const void *src, size_t bytes, int kind) {
  (void)kind;
  if (bytes && dst != src) memmove(dst, src, bytes);
  return 0;
}
standin_error cudaMemcpyAsync(void *dst, const void *src, size_t bytes, int kind, void *stream) {
  (void)stream;
  return cudaMemcpy(dst, src, bytes, kind);
}
standin_error cudaMemset(void *ptr, int value, size_t bytes) { memset(ptr, value, bytes); return 0; }
standin_error cudaMemsetAsync(void *ptr, int value, size_t bytes, void *stream) {
  (void)stream;
  return cudaMemset(ptr, value, bytes);
}
standin_error cudaDeviceSynchronize(void) { return 0; }
standin_error cudaStreamSynchronize(void *stream) { (void)stream; return 0; }
standin_error cudaPeekAtLastError(void) { return 0; }
standin_error cudaGetLastError(void) { return 0; }
const char *cudaGetErrorName(standin_error error) { return error ? "cudaErrorStandIn" : "cudaSuccess"; }
const char *cudaGetErrorString(standin_error error) {
  return error ? "stand-in CUDA runtime: host allocation failed" : "no error (stand-in CUDA runtime)";
}
