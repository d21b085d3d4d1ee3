// Reference conversions for the float element types (see float-types.h).
#include "float-types.h"

#include <cstring>

namespace core {

void copy_row_f32(const void * x, float * y, int64_t n) { std::memcpy(y, x, (size_t) n * sizeof(float)); }
void copy_row_f32_from(const float * x, void * y, int64_t n) { std::memcpy(y, x, (size_t) n * sizeof(float)); }

void convert_row_f16_to_f32(const void * vx, float * y, int64_t n) {
    const f16_t * x = (const f16_t *) vx;
    for (int64_t i = 0; i < n; i++) y[i] = f16_to_f32(x[i]);
}

void convert_row_f32_to_f16_ref(const float * x, void * vy, int64_t n) {
    f16_t * y = (f16_t *) vy;
    for (int64_t i = 0; i < n; i++) y[i] = f32_to_f16(x[i]);
}

void convert_row_bf16_to_f32(const void * vx, float * y, int64_t n) {
    const bf16_t * x = (const bf16_t *) vx;
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(x[i]);
}

void convert_row_f32_to_bf16_ref(const float * x, void * vy, int64_t n) {
    bf16_t * y = (bf16_t *) vy;
    for (int64_t i = 0; i < n; i++) y[i] = f32_to_bf16(x[i]);
}

void vec_dot_f32_ref(int64_t n, float * s, const void * vx, const void * vy) {
    const float * x = (const float *) vx;
    const float * y = (const float *) vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double) (x[i] * y[i]);
    *s = (float) sum;
}

void vec_dot_f16_ref(int64_t n, float * s, const void * vx, const void * vy) {
    const f16_t * x = (const f16_t *) vx;
    const f16_t * y = (const f16_t *) vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double) (f16_to_f32(x[i]) * f16_to_f32(y[i]));
    *s = (float) sum;
}

void vec_dot_bf16_ref(int64_t n, float * s, const void * vx, const void * vy) {
    const bf16_t * x = (const bf16_t *) vx;
    const bf16_t * y = (const bf16_t *) vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double) (bf16_to_f32(x[i]) * bf16_to_f32(y[i]));
    *s = (float) sum;
}

} // namespace core
