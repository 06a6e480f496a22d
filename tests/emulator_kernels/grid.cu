// Multi-dimensional grids and blocks (valid CUDA: also compiled with NVRTC).

// Every thread writes its coordinates into the slot of its global linear id.
extern "C" __global__ void index_map(int* __restrict__ out) {
    const unsigned int tpb = blockDim.x * blockDim.y * blockDim.z;
    const unsigned int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned int bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int* o = out + 6 * (bid * tpb + tid);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
}

// Tiled transpose with a 2-D block (TILE x ROWS) and a padded shared tile.
#define TILE 32
#define ROWS 8
extern "C" __global__ void transpose(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
    __shared__ float tile[TILE][TILE + 1];
    int x = blockIdx.x * TILE + threadIdx.x;
    int y = blockIdx.y * TILE + threadIdx.y;
    for (int j = 0; j < TILE; j += ROWS)
        if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
    __syncthreads();
    x = blockIdx.y * TILE + threadIdx.x;
    y = blockIdx.x * TILE + threadIdx.y;
    for (int j = 0; j < TILE; j += ROWS)
        if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
}

// Which order did the emulator run blocks / threads in?  (ticket counters)
extern "C" __global__ void block_tickets(int* counter, int* ticket) {
    if (threadIdx.x == 0) ticket[blockIdx.x] = atomicAdd(counter, 1);
}
extern "C" __global__ void thread_tickets(int* counter, int* ticket) {
    ticket[threadIdx.x] = atomicAdd(counter, 1);
    __syncthreads();
    ticket[blockDim.x + threadIdx.x] = atomicAdd(counter, 1);
}
