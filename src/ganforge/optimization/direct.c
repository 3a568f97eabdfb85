/* The `direct` form's kernel: one stride-2, kernel-4, padding-1 transposed convolution over activations stored
 * (C, H, W, B), channel-major with the batch innermost, in float32.
 *
 * Every output pixel (2i + a, 2j + a') is the bias plus four kernel taps applied to the input pixels
 * (i, j), (i + s, j), (i, j + s'), (i + s, j + s'), where s = -1 for phase a = 0 and +1 for a = 1 (the same for
 * columns); inputs outside the map are zero. So each output is computed directly from its four taps: exactly the
 * layer's multiply-adds, written once, with no tap planes or im2col buffer in memory.
 *
 * The batch is the vector: LANES images side by side in one register. A register block holds C_BLOCK output
 * channels by N_BLOCK batch vectors; each input vector loaded is multiplied into every channel of the block, and
 * the block is stored once, after its 4 * C_IN multiply-adds, with the activation applied.
 *
 * ganforge compiles this file for the machine that runs it (-O3 -march=native -fopenmp), with these constants:
 *   C_IN, C_OUT       the layer's input and output channels
 *   C_BLOCK, N_BLOCK  the register block: output channels by batch vectors
 *   C_OUT_PADDED      C_OUT rounded up to a multiple of C_BLOCK (the packed weights' and bias's padding is zero)
 */

#include <stdint.h>

#define LANES 16

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float vec_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));
typedef int32_t lanes_mask __attribute__((vector_size(4 * LANES)));

enum { ACTIVATION_NONE = 0, ACTIVATION_RELU = 1, ACTIVATION_LEAKY_RELU = 2 };

/* The output pixel (oy, ox) for output channels [c0, c0 + C_BLOCK) and batch vectors [v0, v0 + nb). */
static inline __attribute__((always_inline)) void output_block(
    const int nb, const float *restrict in, const float *restrict weight, const float *restrict bias,
    float *restrict out, const int64_t height, const int64_t width, const int64_t batch, const int64_t oy,
    const int64_t ox, const int64_t c0, const int64_t v0, const int activation, const float slope) {
    const int64_t i = oy >> 1, j = ox >> 1;
    const int a = (int)(oy & 1), a2 = (int)(ox & 1);
    const int64_t in_plane = height * width * batch, out_plane = 4 * in_plane;
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
            /* packed weight: [a][a'][s][s'][C_IN][C_OUT_PADDED] */
            const float *w = weight + (int64_t)((((a * 2 + a2) * 2 + s) * 2 + s2) * C_IN) * C_OUT_PADDED + c0;
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
    const vec zero = {};
    for (int c = 0; c < C_BLOCK; c++) {
        if (c0 + c >= C_OUT) break; /* a padding channel of the last block */
        float *y = out + (c0 + c) * out_plane + (oy * 2 * width + ox) * batch + v0 * LANES;
        for (int n = 0; n < nb; n++) {
            vec r = acc[c][n];
            if (activation == ACTIVATION_RELU) {
                r = (vec)((lanes_mask)r & (r > zero));
            } else if (activation == ACTIVATION_LEAKY_RELU) {
                const lanes_mask positive = r > zero;
                r = (vec)(((lanes_mask)r & positive) | ((lanes_mask)(r * slope) & ~positive));
            }
            *(vec_unaligned *)(y + n * LANES) = r;
        }
    }
}

/* in (C_IN, height, width, batch) -> out (C_OUT, 2 height, 2 width, batch); batch is a multiple of LANES. */
void transposed_conv(const float *restrict in, const float *restrict weight, const float *restrict bias,
                     float *restrict out, const int64_t height, const int64_t width, const int64_t batch,
                     const int activation, const float slope, const int threads) {
    const int64_t vectors = batch / LANES, full = vectors - vectors % N_BLOCK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t c0 = 0; c0 < C_OUT_PADDED; c0 += C_BLOCK) {
        for (int64_t oy = 0; oy < 2 * height; oy++) {
            for (int64_t ox = 0; ox < 2 * width; ox++) {
                for (int64_t v0 = 0; v0 < full; v0 += N_BLOCK)
                    output_block(N_BLOCK, in, weight, bias, out, height, width, batch, oy, ox, c0, v0, activation,
                                 slope);
                for (int64_t v0 = full; v0 < vectors; v0++)
                    output_block(1, in, weight, bias, out, height, width, batch, oy, ox, c0, v0, activation, slope);
            }
        }
    }
}
