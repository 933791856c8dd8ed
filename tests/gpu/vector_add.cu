// The CUDA program of the GPU acceptance check (tests/gpu/acceptance.sh):
// allocates device memory, runs a kernel, copies back and checks every
// element. Prints one "vector_add: OK ..." line and exits 0, or prints what
// failed and exits 1. Built on the GPU machine with the CUDA runtime linked
// statically, so that inside the container it needs only glibc and the
// driver's libcuda.so.1 (which the runtime injects).
//
// Kept free of strtol/sscanf/iostream: a binary built against glibc >= 2.38
// would otherwise need __isoc23_* symbols that the test rootfs's glibc (2.36)
// lacks.
#include <cstdio>
#include <cuda_runtime.h>

#define CHECK(call)                                                                     \
    do {                                                                                \
        cudaError_t err_ = (call);                                                      \
        if (err_ != cudaSuccess) {                                                      \
            std::printf("vector_add: FAIL %s: %s (%s)\n", #call, cudaGetErrorString(err_), \
                        cudaGetErrorName(err_));                                        \
            return 1;                                                                   \
        }                                                                               \
    } while (0)

__global__ void add(const float *a, const float *b, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

int main()
{
    const int n = 1 << 22; // 4 Mi floats, 16 MiB per vector
    const size_t bytes = (size_t)n * sizeof(float);
    static float a[1 << 22], b[1 << 22], c[1 << 22];

    int driver = 0, runtime = 0, count = 0;
    CHECK(cudaDriverGetVersion(&driver));
    CHECK(cudaRuntimeGetVersion(&runtime));
    CHECK(cudaGetDeviceCount(&count));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));

    // Not zeros, not uniform: a wrong index or an unwritten element shows.
    unsigned int x = 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        a[i] = (float)(x >> 8) / 65536.0f;
        b[i] = (float)(i % 1000) * 0.5f;
        c[i] = -1.0f; // poison
    }

    float *da = 0, *db = 0, *dc = 0;
    CHECK(cudaMalloc((void **)&da, bytes));
    CHECK(cudaMalloc((void **)&db, bytes));
    CHECK(cudaMalloc((void **)&dc, bytes));
    CHECK(cudaMemcpy(da, a, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dc, 0xff, bytes)); // NaN poison on the device too
    add<<<(n + 255) / 256, 256>>>(da, db, dc, n);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));

    int bad = 0, first_bad = -1;
    for (int i = 0; i < n; i++) {
        float want = a[i] + b[i];
        if (!(c[i] == want)) { // NaN fails too
            if (first_bad < 0)
                first_bad = i;
            bad++;
        }
    }
    if (bad) {
        std::printf("vector_add: FAIL %d of %d elements wrong, first at %d: got %f want %f\n",
                    bad, n, first_bad, c[first_bad], a[first_bad] + b[first_bad]);
        return 1;
    }
    std::printf("vector_add: OK n=%d devices=%d device0=\"%s\" cc=%d.%d driver_api=%d runtime=%d\n",
                n, count, prop.name, prop.major, prop.minor, driver, runtime);
    return 0;
}
