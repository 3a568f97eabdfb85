/* The `direct` form's kernel: one stride-2, kernel-4, padding-1 transposed convolution over activations stored
 * (C, H, W, B), channel-major with the batch innermost, in float32.
 *
 * Every output pixel (2i + a, 2j + a') is the bias plus four kernel taps applied to the input pixels
 * (i, j), (i + s, j), (i, j + s'), (i + s, j + s'), where s = -1 for phase a = 0 and +1 for a = 1 (the same for
 * columns); inputs outside the map are zero. So each output is computed directly from its four taps: exactly the
 * layer's multiply-adds, written once, with no tap planes or im2col buffer in memory.
 *
 * The batch is the vector: LANES images side by side in one register. A register block holds C_BLOCK output
 * channels by N_BLOCK batch vectors, at one output pixel or, when SPATIAL, at four: each input vector loaded is
 * multiplied into every accumulator it feeds, and the block is stored once, with the activation applied.
 *
 * SPATIAL suits layers with few output channels (an RGB or grey last layer), where a one-pixel block would do
 * one multiply-add per vector loaded. The output pixels (2i + 1 + p, 2j + 1 + p') for p, p' in {0, 1} read
 * exactly the input pixels (i + r, j + r') for r, r' in {0, 1}, each through its tap s = r xor p (s' alike), so
 * one input vector feeds all four: four multiply-adds per channel for each vector loaded.
 *
 * `transpose` changes the layout into and out of the chain: (B, C, H, W) to (C, H, W, B) and back.
 *
 * It is plain C11 with the vector extension that GCC and Clang share (no compiler's own builtins). ganforge
 * compiles it for the machine that runs it (-O3 -march=native -fopenmp; GANFORGE_KERNEL_MARCH names another
 * target, for example x86-64-v3), with these constants:
 *   C_IN, C_OUT       the layer's input and output channels
 *   C_BLOCK, N_BLOCK  the register block: output channels by batch vectors (by four pixels when SPATIAL)
 *   C_OUT_PADDED      C_OUT rounded up to a multiple of C_BLOCK (the packed weights' and bias's padding is zero)
 *   SPATIAL           1 for blocks of 2 x 2 output pixels, 0 for one pixel
 *   LANES             images per vector: 16 where the target has AVX-512, else 8
 */

#include <stdint.h>

#ifndef LANES /* 16 floats fill an AVX-512 register; ganforge builds for 8 on AVX2 alone */
#define LANES 16
#endif

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float vec_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));
typedef int32_t lanes_mask __attribute__((vector_size(4 * LANES)));

enum { ACTIVATION_NONE = 0, ACTIVATION_RELU = 1, ACTIVATION_LEAKY_RELU = 2 };

/* Where the kernel writes, (C_OUT, height, width, batch), and the activation it applies. */
struct output {
    float *restrict data;
    int64_t height, width;
    int activation;
    float slope;
};

/* The packed weight of output phase (a, a'), input offset (s, s') and input channel 0, for channels from c0:
 * the packing is [a][a'][s][s'][C_IN][C_OUT_PADDED]. */
static inline const float *tap_weight(const float *weight, int a, int a2, int s, int s2, int64_t c0) {
    return weight + (int64_t)((((a * 2 + a2) * 2 + s) * 2 + s2) * C_IN) * C_OUT_PADDED + c0;
}

/* Store the activated vector r: output channel c, pixel (oy, ox), batch offset b0. */
static inline __attribute__((always_inline)) void store_vector(const struct output o, vec r, int64_t c, int64_t oy,
                                                               int64_t ox, int64_t b0, int64_t batch) {
    const vec zero = {};
    if (o.activation == ACTIVATION_RELU) {
        r = (vec)((lanes_mask)r & (r > zero));
    } else if (o.activation == ACTIVATION_LEAKY_RELU) {
        const lanes_mask positive = r > zero;
        r = (vec)(((lanes_mask)r & positive) | ((lanes_mask)(r * o.slope) & ~positive));
    }
    *(vec_unaligned *)(o.data + ((c * o.height + oy) * o.width + ox) * batch + b0) = r;
}

/* The output pixel (oy, ox) for output channels [c0, c0 + C_BLOCK) and batch vectors [v0, v0 + nb). */
static inline __attribute__((always_inline)) void pixel_block(const int nb, const float *restrict in,
                                                              const float *restrict weight, const float *restrict bias,
                                                              const struct output o, const int64_t height,
                                                              const int64_t width, const int64_t batch,
                                                              const int64_t oy, const int64_t ox, const int64_t c0,
                                                              const int64_t v0) {
    const int64_t i = oy >> 1, j = ox >> 1;
    const int a = (int)(oy & 1), a2 = (int)(ox & 1);
    const int64_t in_plane = height * width * batch;
    vec acc[C_BLOCK][N_BLOCK];
    for (int c = 0; c < C_BLOCK; c++)
        for (int n = 0; n < nb; n++) acc[c][n] = (vec){} + bias[c0 + c];
    for (int s = 0; s < 2; s++) {
        const int64_t iy = i + (s ? (a ? 1 : -1) : 0);
        if (iy < 0 || iy >= height) continue;
        for (int s2 = 0; s2 < 2; s2++) {
            const int64_t ix = j + (s2 ? (a2 ? 1 : -1) : 0);
            if (ix < 0 || ix >= width) continue;
            const float *x = in + (iy * width + ix) * batch + v0 * LANES;
            const float *w = tap_weight(weight, a, a2, s, s2, c0);
            for (int ci = 0; ci < C_IN; ci++) {
                vec xv[N_BLOCK];
                for (int n = 0; n < nb; n++) xv[n] = *(const vec_unaligned *)(x + ci * in_plane + n * LANES);
                for (int c = 0; c < C_BLOCK; c++) {
                    const float wc = w[ci * C_OUT_PADDED + c];
                    for (int n = 0; n < nb; n++) acc[c][n] += wc * xv[n];
                }
            }
        }
    }
    for (int c = 0; c < C_BLOCK && c0 + c < C_OUT; c++) /* past C_OUT: a padding channel of the last block */
        for (int n = 0; n < nb; n++) store_vector(o, acc[c][n], c0 + c, oy, ox, (v0 + n) * LANES, batch);
}

/* The output pixels (2i + 1 + p, 2j + 1 + p') for p, p' in {0, 1}, from the input pixels (i + r, j + r'), for
 * output channels [c0, c0 + C_BLOCK) and batch vectors [v0, v0 + nb); i and j run from -1, and pixels outside
 * either map are skipped. */
static inline __attribute__((always_inline)) void quad_block(const int nb, const float *restrict in,
                                                             const float *restrict weight, const float *restrict bias,
                                                             const struct output o, const int64_t height,
                                                             const int64_t width, const int64_t batch, const int64_t i,
                                                             const int64_t j, const int64_t c0, const int64_t v0) {
    const int64_t in_plane = height * width * batch;
    vec acc[2][2][C_BLOCK][N_BLOCK];
    for (int p = 0; p < 2; p++)
        for (int p2 = 0; p2 < 2; p2++)
            for (int c = 0; c < C_BLOCK; c++)
                for (int n = 0; n < nb; n++) acc[p][p2][c][n] = (vec){} + bias[c0 + c];
    for (int r = 0; r < 2; r++) {
        if (i + r < 0 || i + r >= height) continue;
        for (int r2 = 0; r2 < 2; r2++) {
            if (j + r2 < 0 || j + r2 >= width) continue;
            const float *x = in + ((i + r) * width + j + r2) * batch + v0 * LANES;
            const float *w[2][2];
            for (int p = 0; p < 2; p++)
                for (int p2 = 0; p2 < 2; p2++) w[p][p2] = tap_weight(weight, 1 - p, 1 - p2, r ^ p, r2 ^ p2, c0);
            for (int ci = 0; ci < C_IN; ci++) {
                vec xv[N_BLOCK];
                for (int n = 0; n < nb; n++) xv[n] = *(const vec_unaligned *)(x + ci * in_plane + n * LANES);
                for (int p = 0; p < 2; p++)
                    for (int p2 = 0; p2 < 2; p2++)
                        for (int c = 0; c < C_BLOCK; c++) {
                            const float wc = w[p][p2][ci * C_OUT_PADDED + c];
                            for (int n = 0; n < nb; n++) acc[p][p2][c][n] += wc * xv[n];
                        }
            }
        }
    }
    for (int p = 0; p < 2; p++) {
        const int64_t oy = 2 * i + 1 + p;
        if (oy < 0 || oy >= 2 * height) continue;
        for (int p2 = 0; p2 < 2; p2++) {
            const int64_t ox = 2 * j + 1 + p2;
            if (ox < 0 || ox >= 2 * width) continue;
            for (int c = 0; c < C_BLOCK && c0 + c < C_OUT; c++)
                for (int n = 0; n < nb; n++) store_vector(o, acc[p][p2][c][n], c0 + c, oy, ox, (v0 + n) * LANES, batch);
        }
    }
}

/* in (C_IN, height, width, batch) -> out (C_OUT, 2 height, 2 width, batch); batch is a multiple of LANES. */
void transposed_conv(const float *restrict in, const float *restrict weight, const float *restrict bias,
                     float *restrict out, const int64_t height, const int64_t width, const int64_t batch,
                     const int activation, const float slope, const int threads) {
    const struct output o = {out, 2 * height, 2 * width, activation, slope};
    const int64_t vectors = batch / LANES, full = vectors - vectors % N_BLOCK;
#if SPATIAL
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t c0 = 0; c0 < C_OUT_PADDED; c0 += C_BLOCK) {
        for (int64_t i = -1; i < height; i++) {
            for (int64_t j = -1; j < width; j++) {
                for (int64_t v0 = 0; v0 < full; v0 += N_BLOCK)
                    quad_block(N_BLOCK, in, weight, bias, o, height, width, batch, i, j, c0, v0);
                for (int64_t v0 = full; v0 < vectors; v0++)
                    quad_block(1, in, weight, bias, o, height, width, batch, i, j, c0, v0);
            }
        }
    }
#else
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t c0 = 0; c0 < C_OUT_PADDED; c0 += C_BLOCK) {
        for (int64_t oy = 0; oy < 2 * height; oy++) {
            for (int64_t ox = 0; ox < 2 * width; ox++) {
                for (int64_t v0 = 0; v0 < full; v0 += N_BLOCK)
                    pixel_block(N_BLOCK, in, weight, bias, o, height, width, batch, oy, ox, c0, v0);
                for (int64_t v0 = full; v0 < vectors; v0++)
                    pixel_block(1, in, weight, bias, o, height, width, batch, oy, ox, c0, v0);
            }
        }
    }
#endif
}

/* out[c * out_stride + r] = in[r * in_stride + c] for r < rows, c < cols, with the rows from rows_valid on read as
 * zeros: the layout change into and out of the batch-innermost chain, in LANES x LANES tiles. A whole tile goes
 * through a local LANES x LANES buffer in plain loops, which GCC and Clang vectorize for the target: this measured as
 * fast as shuffling the tile in registers on AVX-512, and five times faster on AVX2, where a 16-lane shuffle is
 * lowered badly. */
void transpose(const float *restrict in, float *restrict out, const int64_t rows, const int64_t rows_valid,
               const int64_t cols, const int64_t in_stride, const int64_t out_stride, const int threads) {
    const int64_t row_tiles = (rows + LANES - 1) / LANES, col_tiles = (cols + LANES - 1) / LANES;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t rt = 0; rt < row_tiles; rt++) {
        for (int64_t ct = 0; ct < col_tiles; ct++) {
            const int64_t r = rt * LANES, c = ct * LANES;
            if (r + LANES <= rows_valid && c + LANES <= cols) { /* a whole tile, through a local buffer */
                float tile[LANES][LANES];
                for (int i = 0; i < LANES; i++)
                    for (int j = 0; j < LANES; j++) tile[j][i] = in[(r + i) * in_stride + c + j];
                for (int j = 0; j < LANES; j++)
                    for (int i = 0; i < LANES; i++) out[(c + j) * out_stride + r + i] = tile[j][i];
                continue;
            }
            for (int64_t j = c; j < c + LANES && j < cols; j++) /* an edge tile, one value at a time */
                for (int64_t i = r; i < r + LANES && i < rows; i++)
                    out[j * out_stride + i] = i < rows_valid ? in[i * in_stride + j] : 0.0f;
        }
    }
}
