/* AdaptPrune's greedy Soft-NMS on the CPU, with lazy suppression.
 *
 * The selection of tokenprune/strategies/soft_nms.py in window mode (a radius, the
 * spatial and similarity decays), computed in another order. A kept token's
 * suppression of its window is recorded, not computed: each window token gets an entry
 * (step, offset) appended to its pending list. Factors are computed only for a token
 * that reaches the top of a tournament tree: suppression only lowers scores (factors
 * lie in [0, 1], scores are >= 0), so a token whose pending factors are all applied
 * and that still leads every other token's not-yet-lowered score also leads their true
 * scores (ties: the lower index wins in both). Pending factors are applied in step
 * order, so every score is the same product, in the same order, as the step-by-step
 * computation. At the end the remaining factors are applied token by token (the final
 * scores are part of the result): each token's key is read once while the few kept
 * tokens' keys stay in cache, instead of W keys per step from all over memory.
 *
 * Built and loaded by tokenprune/native.py with the system C compiler, one library
 * per (compute type, key type) in use. Single-threaded: the calls are short, and on a loaded
 * machine a parallel region stalls on its slowest thread.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { OK = 0, NO_MEMORY = 1, NEGATIVE_SCORE = 2, TOO_LARGE = 3 };

/* Everything but the scores and keys (whose types vary). Tensors are contiguous. */
typedef struct {
    int64_t b, n, d, r;
    const int64_t *budget;   /* (B,) */
    const uint8_t *valid;    /* (B, N) */
    const int64_t *regions;  /* (B, N), -1: no region */
    const double *coords;    /* (B, N, 2) (row, col), NaN without a place */
    const int64_t *shapes;   /* (B, R, 2) (height, width) */
    int64_t key_batch, key_row;  /* strides of the keys (B, N, D), in elements */
    double radius;
    double spatial_sigma;     /* <= 0: no spatial decay */
    double similarity_sigma;  /* <= 0: no similarity decay */
    uint8_t *mask;            /* out (B, N) */
    int64_t *indices;         /* out (B, N): kept indices ascending, then -1 */
    int64_t *kept_most;       /* out: the largest count kept by a sample */
    int64_t max_entries;      /* most pending entries (steps x window) the int32 lists hold */
} soft_nms_args_t;

typedef struct {
    int64_t cell;  /* -1: no place (padding, separator) */
    int32_t row, col, height, width;
} place_t;

/* Per-sample scratch, sized for the largest sample of the batch. */
typedef struct {
    place_t *place;   /* (N,) */
    int64_t *table;   /* (cells,) token of each cell, -1 if empty */
    int64_t *base;    /* (R,) first cell of each region */
    int32_t *tree;    /* (2P,) tournament tree of token indices, leaves at P.. */
    uint8_t *alive;   /* (N,) not kept yet */
    int32_t *head;    /* (N,) first pending entry, -1: none */
    int32_t *tail;    /* (N,) last pending entry */
    int32_t *next;    /* (steps * W,) entry step * W + offset: the token's next entry */
    int64_t *kept;    /* (steps,) token kept at each step */
    uint8_t *normed;  /* (N,) inverse key norm computed */
    double *inv;      /* (N,) 1 / max(||key||, 1e-12), rounded to the compute type */
} scratch_t;

static void free_scratch(scratch_t *s) {
    free(s->place); free(s->table); free(s->base); free(s->tree); free(s->alive);
    free(s->head); free(s->tail); free(s->next); free(s->kept); free(s->normed); free(s->inv);
}

static int alloc_scratch(scratch_t *s, int64_t n, int64_t cells, int64_t regions, int64_t p, int64_t steps,
                         int64_t w) {
    s->place = malloc(sizeof(place_t) * (size_t)(n + 1));
    s->table = malloc(sizeof(int64_t) * (size_t)(cells + 1));
    s->base = malloc(sizeof(int64_t) * (size_t)(regions + 1));
    s->tree = malloc(sizeof(int32_t) * (size_t)(2 * p));
    s->alive = malloc((size_t)(n + 1));
    s->head = malloc(sizeof(int32_t) * (size_t)(n + 1));
    s->tail = malloc(sizeof(int32_t) * (size_t)(n + 1));
    s->next = malloc(sizeof(int32_t) * (size_t)(steps * w + 1));
    s->kept = malloc(sizeof(int64_t) * (size_t)(steps + 1));
    s->normed = malloc((size_t)(n + 1));
    s->inv = malloc(sizeof(double) * (size_t)(n + 1));
    if (!s->place || !s->table || !s->base || !s->tree || !s->alive || !s->head || !s->tail || !s->next ||
        !s->kept || !s->normed || !s->inv) {
        free_scratch(s);
        return NO_MEMORY;
    }
    return OK;
}

/* Offsets of the disc drow^2 + dcol^2 <= radius^2, compared in float32 as
 * tokenprune.strategies.grid.disc_offsets does; returns their number. */
static int64_t disc(double radius, int64_t *drow, int64_t *dcol) {
    int64_t r = (int64_t)floor(radius), w = 0;
    float limit = (float)(radius * radius);
    for (int64_t i = -r; i <= r; ++i)
        for (int64_t j = -r; j <= r; ++j)
            if ((float)(i * i + j * j) <= limit) {
                if (drow) {
                    drow[w] = i;
                    dcol[w] = j;
                }
                ++w;
            }
    return w;
}

static inline float bf16_to_float(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* The variant: -DTP_DOUBLE computes in float64 (float64 scores), else float32;
 * -DTP_KEYS=1 float32 keys, 2 float64, 3 bfloat16, 4 float16. */
#ifdef TP_DOUBLE
typedef double T;
#define EXP exp
#define SQRT sqrt
#else
typedef float T;
#define EXP expf
#define SQRT sqrtf
#endif

#if TP_KEYS == 2
typedef double KT;
#define TO_T(x) ((T)(x))
#elif TP_KEYS == 3
typedef uint16_t KT;
#define TO_T(x) ((T)bf16_to_float(x))
#elif TP_KEYS == 4
typedef _Float16 KT;
#define TO_T(x) ((T)(x))
#else
typedef float KT;
#define TO_T(x) ((T)(x))
#endif


/* 32 independent lanes: one accumulator chain would wait on each add's latency. */
#define LANES 32

static inline T key_dot(const KT *restrict a, const KT *restrict b, int64_t d) {
    T lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= d; i += LANES)
        for (int j = 0; j < LANES; ++j) lane[j] += TO_T(a[i + j]) * TO_T(b[i + j]);
    T acc = 0;
    for (; i < d; ++i) acc += TO_T(a[i]) * TO_T(b[i]);
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
    return lane[0] + acc;
}

/* The leader of two tokens: an alive one before a kept one, then the higher score,
 * then the lower index (torch.argmax's first index on ties). */
static inline int32_t lead(const T *v, const uint8_t *alive, int64_t n, int32_t i, int32_t j) {
    int ai = i < n && alive[i], aj = j < n && alive[j];
    if (ai != aj) return ai ? i : j;
    if (ai) {
        if (v[i] > v[j]) return i;
        if (v[j] > v[i]) return j;
    }
    return i < j ? i : j;
}

static inline void update(int32_t *tree, int64_t p, const T *v, const uint8_t *alive, int64_t n, int64_t i) {
    for (int64_t node = (p + i) >> 1; node >= 1; node >>= 1)
        tree[node] = lead(v, alive, n, tree[2 * node], tree[2 * node + 1]);
}

/* 1 / max(||key_i||, 1e-12) in T, as tokenprune's key_inv_norm, computed once per token. */
static inline T inv_norm(scratch_t *s, const KT *keys, int64_t row, int64_t d, int64_t i) {
    if (!s->normed[i]) {
        T norm = SQRT(key_dot(keys + i * row, keys + i * row, d));
        if (norm < (T)1e-12) norm = (T)1e-12;
        s->inv[i] = (double)((T)1 / norm);
        s->normed[i] = 1;
    }
    return (T)s->inv[i];
}

/* Apply token i's pending factors, in step order. */
static void apply(scratch_t *s, T *v, int64_t i, const soft_nms_args_t *a, const T *distance2, int64_t w,
                             const KT *keys) {
    const T spatial_div = (T)(2.0 * a->spatial_sigma * a->spatial_sigma);
    const T similarity_div = (T)(2.0 * a->similarity_sigma * a->similarity_sigma);
    T score = v[i];
    for (int32_t e = s->head[i]; e >= 0; e = s->next[e]) {
        int64_t k = s->kept[e / w];
        T factor = 1;
        if (a->spatial_sigma > 0) factor = factor * EXP(-distance2[e % w] / spatial_div);
        if (a->similarity_sigma > 0) {
            T product = key_dot(keys + i * a->key_row, keys + k * a->key_row, a->d);
            T cos = product * inv_norm(s, keys, a->key_row, a->d, i) * inv_norm(s, keys, a->key_row, a->d, k);
            T gap = (T)1 - cos;
            factor = factor * EXP(-(gap * gap) / similarity_div);
        }
        score = score * ((T)1 - factor);
    }
    v[i] = score;
    s->head[i] = -1;
}

int soft_nms(const soft_nms_args_t *a, T *scores, const KT *all_keys) {
    const int64_t n = a->n;
    for (int64_t b = 0; b < a->b; ++b) {  /* nothing changes when a score is negative */
        for (int64_t i = 0; i < n; ++i)
            if (a->valid[b * n + i] && scores[b * n + i] < 0) return NEGATIVE_SCORE;
    }
    int64_t steps = 0, cells = 0;
    for (int64_t b = 0; b < a->b; ++b) {
        if (a->budget[b] > steps) steps = a->budget[b];
        int64_t area = 0;
        for (int64_t r = 0; r < a->r; ++r) area += a->shapes[(b * a->r + r) * 2] * a->shapes[(b * a->r + r) * 2 + 1];
        if (area > cells) cells = area;
    }
    /* The disc, capped where a larger one adds no offset inside any region. */
    double radius = a->radius, diagonal = 0;
    for (int64_t q = 0; q < a->b * a->r; ++q) {
        double h = (double)a->shapes[2 * q], wd = (double)a->shapes[2 * q + 1];
        if (sqrt(h * h + wd * wd) > diagonal) diagonal = sqrt(h * h + wd * wd);
    }
    if (radius > diagonal) radius = diagonal;
    const int64_t w = disc(radius, NULL, NULL);
    int64_t p = 1;
    while (p < n) p <<= 1;
    scratch_t s;
    if (steps * w > a->max_entries) return TOO_LARGE;  /* the caller runs the torch steps */
    if (alloc_scratch(&s, n, cells, a->r, p, steps, w)) return NO_MEMORY;
    int64_t *drow = malloc(sizeof(int64_t) * (size_t)w), *dcol = malloc(sizeof(int64_t) * (size_t)w);
    T *distance2 = malloc(sizeof(T) * (size_t)w);
    if (!drow || !dcol || !distance2) {
        free(drow); free(dcol); free(distance2); free_scratch(&s);
        return NO_MEMORY;
    }
    disc(radius, drow, dcol);
    for (int64_t q = 0; q < w; ++q) distance2[q] = (T)(drow[q] * drow[q] + dcol[q] * dcol[q]);
    int64_t most = 0;
    for (int64_t b = 0; b < a->b && n > 0; ++b) {
        T *v = scores + b * n;
        const KT *keys = all_keys ? all_keys + b * a->key_batch : NULL;
        const int64_t *shapes = a->shapes + b * a->r * 2;
        uint8_t *mask = a->mask + b * n;
        /* Cells: regions row-major, in region order (as tokenprune.layout's cell ids). */
        int64_t total = 0;
        for (int64_t r = 0; r < a->r; ++r) {
            s.base[r] = total;
            total += shapes[2 * r] * shapes[2 * r + 1];
        }
        for (int64_t c = 0; c < total; ++c) s.table[c] = -1;
        for (int64_t i = 0; i < n; ++i) {
            int64_t r = a->regions[b * n + i];
            place_t *pl = &s.place[i];
            pl->cell = -1;
            if (!a->valid[b * n + i] || r < 0 || r >= a->r) continue;
            double y = a->coords[(b * n + i) * 2], x = a->coords[(b * n + i) * 2 + 1];
            int64_t row = y == y ? (int64_t)y : 0, col = x == x ? (int64_t)x : 0;
            int64_t h = shapes[2 * r], wd = shapes[2 * r + 1];
            if (row < 0 || row >= h || col < 0 || col >= wd) continue;
            pl->cell = s.base[r] + row * wd + col;
            pl->row = (int32_t)row; pl->col = (int32_t)col; pl->height = (int32_t)h; pl->width = (int32_t)wd;
            s.table[pl->cell] = i;
        }
        for (int64_t i = 0; i < n; ++i) {
            s.alive[i] = 1;
            s.head[i] = -1;
            s.normed[i] = 0;
            mask[i] = 0;
        }
        for (int64_t i = 0; i < p; ++i) s.tree[p + i] = (int32_t)i;
        for (int64_t node = p - 1; node >= 1; --node)
            s.tree[node] = lead(v, s.alive, n, s.tree[2 * node], s.tree[2 * node + 1]);
        for (int64_t m = 0; m < a->budget[b]; ++m) {
            int64_t k;
            for (;;) {
                int32_t j = s.tree[1];
                if (j >= n || !s.alive[j] || v[j] == -INFINITY) {
                    k = 0;  /* nothing left: torch.argmax of all -inf is index 0 */
                    break;
                }
                if (s.head[j] < 0) {
                    k = j;
                    break;
                }
                apply(&s, v, j, a, distance2, w, keys);
                update(s.tree, p, v, s.alive, n, j);
            }
            s.kept[m] = k;
            mask[k] = 1;
            if (s.alive[k]) {
                s.alive[k] = 0;
                update(s.tree, p, v, s.alive, n, k);
            }
            const place_t pl = s.place[k];
            if (pl.cell < 0) continue;
            for (int64_t q = 0; q < w; ++q) {
                int64_t r = pl.row + drow[q], c = pl.col + dcol[q];
                if (r < 0 || r >= pl.height || c < 0 || c >= pl.width) continue;
                int64_t cand = s.table[pl.cell + drow[q] * pl.width + dcol[q]];
                if (cand < 0) continue;
                int32_t e = (int32_t)(m * w + q);
                s.next[e] = -1;
                if (s.head[cand] < 0) s.head[cand] = e;
                else s.next[s.tail[cand]] = e;
                s.tail[cand] = e;
            }
        }
        int64_t count = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (s.head[i] >= 0) apply(&s, v, i, a, distance2, w, keys);
            if (mask[i]) a->indices[b * n + count++] = i;
        }
        for (int64_t c = count; c < n; ++c) a->indices[b * n + c] = -1;
        if (count > most) most = count;
    }
    *a->kept_most = most;
    free(drow); free(dcol); free(distance2); free_scratch(&s);
    return OK;
}

