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
 * scores are part of the result), each token's key read once.
 *
 * The work is bound by reading keys (a token's key is 16 KB at D = 4096 in float32):
 * a token's dots with all its pending kept keys run in one pass over its key, and with
 * `threads` > 1 the samples of a batch, or the final factors of one sample's tokens, are
 * shared out to threads. Every value is computed by the same code whichever thread
 * computes it, so the result does not depend on the thread count.
 *
 * Built and loaded by tokenprune/native.py with the system C compiler, one library
 * per (compute type, key type) in use.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { OK = 0, NO_MEMORY = 1, NEGATIVE_SCORE = 2, TOO_LARGE = 3 };

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
    int64_t threads;          /* threads the call may use (>= 1) */
    int64_t thread_work;      /* fewer multiply-adds (steps x W x D) than this: one thread */
    int64_t *threads_used;    /* out: threads the call ran on */
    int64_t check_keys;       /* 1: read every valid token's key and report in keys_unsure */
    double key_limit;         /* a self-dot above this (or NaN/inf) makes the keys unsure */
    int64_t *keys_unsure;     /* out: 1 if a self-dot was NaN, inf or above key_limit */
} soft_nms_args_t;

/* ------------------------------------------------------------------------ dots */

/* Dots of one key with several others. Lane j of a dot sums the products at j, j + LANES,
 * ... in order (independent lanes: one accumulator chain would wait on each add's latency),
 * then the lanes are added pairwise and the tail last. Up to GROUP dots run together so
 * that `x` is read once per group, not once per key. Every dot has that one order, in
 * whatever group and position it is computed, so a dot's value does not depend on the
 * call that computes it. The lanes are GCC/Clang vector types of 32 bytes, which the
 * compiler maps onto the machine's vector registers (two SSE registers without AVX). */
#define LANES 16
#define GROUP 4
#define VEC (32 / (int)sizeof(T))
typedef T tv __attribute__((vector_size(32)));

/* VEC keys from p, converted to T. */
#if TP_KEYS == 3
typedef uint16_t kv __attribute__((vector_size(VEC * 2)));
typedef uint32_t uv __attribute__((vector_size(VEC * 4)));
typedef float fv __attribute__((vector_size(VEC * 4)));
static inline tv load_t(const KT *p) {
    kv k;
    memcpy(&k, p, sizeof k);
    uv bits = __builtin_convertvector(k, uv) << 16;  /* bfloat16 is float32's upper half */
    fv f;
    memcpy(&f, &bits, sizeof f);
    return __builtin_convertvector(f, tv);
}
#elif TP_KEYS == 4 && defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
/* The F16C instruction (compilers otherwise convert _Float16 one value at a time). */
static inline tv load_t(const KT *p) {
#ifdef TP_DOUBLE
    __m128 f = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p));  /* VEC = 4 values */
    return (tv){f[0], f[1], f[2], f[3]};
#else
    __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));  /* VEC = 8 values */
    tv out;
    memcpy(&out, &f, sizeof out);
    return out;
#endif
}
#else
typedef KT kv __attribute__((vector_size(VEC * sizeof(KT))));
static inline tv load_t(const KT *p) {
    kv k;
    memcpy(&k, p, sizeof k);
    return __builtin_convertvector(k, tv);
}
#endif

/* A dot from its lanes over [0, body): the lanes added pairwise, then the tail [body, d). */
static inline T finish_dot(const tv *acc, const KT *x, const KT *y, int64_t body, int64_t d) {
    T lane[LANES];
    memcpy(lane, acc, sizeof lane);
    T tail = 0;
    for (int64_t t = body; t < d; ++t) tail += TO_T(x[t]) * TO_T(y[t]);
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
    return lane[0] + tail;
}

/* out[q] = x . ys[q] for q < m. */
static void key_dots(const KT *restrict x, const KT *const *ys, int64_t m, int64_t d, T *restrict out) {
    enum { PER = LANES / VEC };
    for (int64_t q0 = 0; q0 < m; q0 += GROUP) {
        const KT *y[GROUP];
        for (int g = 0; g < GROUP; ++g) y[g] = ys[q0 + g < m ? q0 + g : m - 1];  /* pad: repeat the last */
        tv acc[GROUP][PER];
        for (int g = 0; g < GROUP; ++g)
            for (int v = 0; v < PER; ++v) acc[g][v] = (tv){0};
        int64_t i = 0;
        for (; i + LANES <= d; i += LANES) {
            tv xs[PER];
            for (int v = 0; v < PER; ++v) xs[v] = load_t(x + i + v * VEC);
            for (int g = 0; g < GROUP; ++g)
                for (int v = 0; v < PER; ++v) acc[g][v] += xs[v] * load_t(y[g] + i + v * VEC);
        }
        for (int g = 0; g < GROUP && q0 + g < m; ++g) out[q0 + g] = finish_dot(acc[g], x, y[g], i, d);
    }
}

/* 1 / max(||key||, 1e-12) in T (as tokenprune's key_inv_norm) from the key's dot with itself. */
static inline double inverse_norm(T self_dot) {
    T norm = SQRT(self_dot);
    if (norm < (T)1e-12) norm = (T)1e-12;
    return (double)((T)1 / norm);
}

/* ------------------------------------------------------------------------ the window */

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

/* What every sample shares: the call, the window and the sizes of the scratch. */
typedef struct {
    const soft_nms_args_t *a;
    T *scores;            /* (B, N) in place */
    const KT *keys;       /* (B, N, D) strided, NULL without a similarity decay */
    int64_t w;            /* window offsets */
    int64_t *drow, *dcol; /* (W,) */
    T *distance2;         /* (W,) squared distance of each offset */
    int64_t steps, cells, p;  /* most kept tokens, most cells, tree leaves (a power of 2 >= N) */
    int64_t room;         /* most entries of one token, plus one (its own norm) */
} shared_t;

/* ------------------------------------------------------------------------ scratch */

typedef struct {
    int64_t cell;  /* -1: no place (padding, separator) */
    int32_t row, col, height, width;
} place_t;

/* One sample's state, sized for the largest sample of the batch. */
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
} sample_t;

/* One thread's buffers for one token's dots. */
typedef struct {
    int32_t *entry;     /* (room,) the token's pending entries, in step order */
    const KT **others;  /* (room,) the keys its key is dotted with */
    T *dots;            /* (room,) those dots */
} dots_t;

static void free_sample(sample_t *s) {
    free(s->place); free(s->table); free(s->base); free(s->tree); free(s->alive);
    free(s->head); free(s->tail); free(s->next); free(s->kept); free(s->normed); free(s->inv);
    memset(s, 0, sizeof *s);
}

static int alloc_sample(sample_t *s, const shared_t *sh) {
    const int64_t n = sh->a->n;
    s->place = malloc(sizeof(place_t) * (size_t)(n + 1));
    s->table = malloc(sizeof(int64_t) * (size_t)(sh->cells + 1));
    s->base = malloc(sizeof(int64_t) * (size_t)(sh->a->r + 1));
    s->tree = malloc(sizeof(int32_t) * (size_t)(2 * sh->p));
    s->alive = malloc((size_t)(n + 1));
    s->head = malloc(sizeof(int32_t) * (size_t)(n + 1));
    s->tail = malloc(sizeof(int32_t) * (size_t)(n + 1));
    s->next = malloc(sizeof(int32_t) * (size_t)(sh->steps * sh->w + 1));
    s->kept = malloc(sizeof(int64_t) * (size_t)(sh->steps + 1));
    s->normed = malloc((size_t)(n + 1));
    s->inv = malloc(sizeof(double) * (size_t)(n + 1));
    if (!s->place || !s->table || !s->base || !s->tree || !s->alive || !s->head || !s->tail || !s->next ||
        !s->kept || !s->normed || !s->inv) {
        free_sample(s);
        return NO_MEMORY;
    }
    return OK;
}

static void free_dots(dots_t *t) {
    free(t->entry); free((void *)t->others); free(t->dots);
    memset(t, 0, sizeof *t);
}

static int alloc_dots(dots_t *t, const shared_t *sh) {
    t->entry = malloc(sizeof(int32_t) * (size_t)sh->room);
    t->others = malloc(sizeof(KT *) * (size_t)sh->room);
    t->dots = malloc(sizeof(T) * (size_t)sh->room);
    if (!t->entry || !t->others || !t->dots) {
        free_dots(t);
        return NO_MEMORY;
    }
    return OK;
}

/* ------------------------------------------------------------------------ one sample */

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

/* Token i's norm from its dot with itself, where it was computed. The self-dot also
 * checks the key: it is NaN or inf whenever an entry is (squares do not cancel), and at
 * most key_limit (half the largest float of the caller's norm type) proves the norm fits
 * in any summation order. Anything else leaves the verdict to the caller's exact check. */
static inline void set_norm(sample_t *s, const shared_t *sh, int64_t i, T self_dot) {
    s->inv[i] = inverse_norm(self_dot);
    s->normed[i] = 1;
    if (!((double)self_dot <= sh->a->key_limit)) __atomic_store_n(sh->a->keys_unsure, 1, __ATOMIC_RELAXED);
}

/* Token i's inverse key norm, computed once. */
static inline void need_norm(sample_t *s, const shared_t *sh, const KT *keys, int64_t i) {
    if (!s->normed[i]) {
        const KT *key = keys + i * sh->a->key_row;
        T self_dot;
        key_dots(key, &key, 1, sh->a->d, &self_dot);
        set_norm(s, sh, i, self_dot);
    }
}

/* Token i's score times (1 - factor) of its m entries, in step order; dots[q] is its
 * key's dot with entry q's kept key (with a similarity decay). */
static void suppress(sample_t *s, T *v, int64_t i, const int32_t *entry, const T *dots, int64_t m,
                     const shared_t *sh, const KT *keys) {
    const soft_nms_args_t *a = sh->a;
    const T spatial_div = (T)(2.0 * a->spatial_sigma * a->spatial_sigma);
    const T similarity_div = (T)(2.0 * a->similarity_sigma * a->similarity_sigma);
    T score = v[i];
    for (int64_t q = 0; q < m; ++q) {
        T factor = 1;
        if (a->spatial_sigma > 0) factor = factor * EXP(-sh->distance2[entry[q] % sh->w] / spatial_div);
        if (keys) {
            const int64_t k = s->kept[entry[q] / sh->w];
            T cos = dots[q] * (T)s->inv[i] * (T)s->inv[k];
            T gap = (T)1 - cos;
            factor = factor * EXP(-(gap * gap) / similarity_div);
        }
        score = score * ((T)1 - factor);
    }
    v[i] = score;
    s->head[i] = -1;
}

/* Apply token i's pending factors. Its key's dots with the kept tokens' keys (and with
 * itself, for its norm) run in one pass over its key. The kept tokens' norms must be
 * known (need_norm at the step that kept them). */
static void apply(sample_t *s, dots_t *t, T *v, int64_t i, const shared_t *sh, const KT *keys) {
    int64_t m = 0;
    for (int32_t e = s->head[i]; e >= 0; e = s->next[e]) t->entry[m++] = e;  /* in step order */
    if (keys) {
        const int64_t row = sh->a->key_row;
        const KT *key = keys + i * row;
        int64_t dotted = m;
        for (int64_t q = 0; q < m; ++q) t->others[q] = keys + s->kept[t->entry[q] / sh->w] * row;
        if (!s->normed[i]) t->others[dotted++] = key;
        key_dots(key, t->others, dotted, sh->a->d, t->dots);
        if (dotted > m) set_norm(s, sh, i, t->dots[m]);
    }
    suppress(s, v, i, t->entry, t->dots, m, sh, keys);
}

/* Place every token of sample b on its region's grid of cells. */
static void place_tokens(sample_t *s, const shared_t *sh, int64_t b) {
    const soft_nms_args_t *a = sh->a;
    const int64_t n = a->n, *shapes = a->shapes + b * a->r * 2;
    /* Cells: regions row-major, in region order (as tokenprune.layout's cell ids). */
    int64_t total = 0;
    for (int64_t r = 0; r < a->r; ++r) {
        s->base[r] = total;
        total += shapes[2 * r] * shapes[2 * r + 1];
    }
    for (int64_t c = 0; c < total; ++c) s->table[c] = -1;
    for (int64_t i = 0; i < n; ++i) {
        int64_t r = a->regions[b * n + i];
        place_t *pl = &s->place[i];
        pl->cell = -1;
        if (!a->valid[b * n + i] || r < 0 || r >= a->r) continue;
        double y = a->coords[(b * n + i) * 2], x = a->coords[(b * n + i) * 2 + 1];
        int64_t row = y == y ? (int64_t)y : 0, col = x == x ? (int64_t)x : 0;
        int64_t h = shapes[2 * r], wd = shapes[2 * r + 1];
        if (row < 0 || row >= h || col < 0 || col >= wd) continue;
        pl->cell = s->base[r] + row * wd + col;
        pl->row = (int32_t)row; pl->col = (int32_t)col; pl->height = (int32_t)h; pl->width = (int32_t)wd;
        s->table[pl->cell] = i;
    }
}

/* The greedy steps of sample b: mask and kept[], with the factors that decided them
 * applied; the others stay pending. */
static void choose(sample_t *s, dots_t *t, const shared_t *sh, int64_t b) {
    const soft_nms_args_t *a = sh->a;
    const int64_t n = a->n, p = sh->p, w = sh->w;
    T *v = sh->scores + b * n;
    const KT *keys = sh->keys ? sh->keys + b * a->key_batch : NULL;
    uint8_t *mask = a->mask + b * n;
    place_tokens(s, sh, b);
    for (int64_t i = 0; i < n; ++i) {
        s->alive[i] = 1;
        s->head[i] = -1;
        s->normed[i] = 0;
        mask[i] = 0;
    }
    for (int64_t i = 0; i < p; ++i) s->tree[p + i] = (int32_t)i;
    for (int64_t node = p - 1; node >= 1; --node)
        s->tree[node] = lead(v, s->alive, n, s->tree[2 * node], s->tree[2 * node + 1]);
    for (int64_t m = 0; m < a->budget[b]; ++m) {
        int64_t k;
        for (;;) {
            int32_t j = s->tree[1];
            if (j >= n || !s->alive[j] || v[j] == -INFINITY) {
                k = 0;  /* nothing left: torch.argmax of all -inf is index 0 */
                break;
            }
            if (s->head[j] < 0) {
                k = j;
                break;
            }
            apply(s, t, v, j, sh, keys);
            update(s->tree, p, v, s->alive, n, j);
        }
        s->kept[m] = k;
        mask[k] = 1;
        if (keys) need_norm(s, sh, keys, k);
        if (s->alive[k]) {
            s->alive[k] = 0;
            update(s->tree, p, v, s->alive, n, k);
        }
        const place_t pl = s->place[k];
        if (pl.cell < 0) continue;
        for (int64_t q = 0; q < w; ++q) {
            int64_t r = pl.row + sh->drow[q], c = pl.col + sh->dcol[q];
            if (r < 0 || r >= pl.height || c < 0 || c >= pl.width) continue;
            int64_t cand = s->table[pl.cell + sh->drow[q] * pl.width + sh->dcol[q]];
            if (cand < 0) continue;
            int32_t e = (int32_t)(m * w + q);
            s->next[e] = -1;
            if (s->head[cand] < 0) s->head[cand] = e;
            else s->next[s->tail[cand]] = e;
            s->tail[cand] = e;
        }
    }
}

/* The pending factors of tokens [from, to) of sample b (tokens are independent now);
 * with check_keys, also the self-dot of every valid token whose key was not read, so
 * that every valid key is checked in this one pass. */
static void finish(sample_t *s, dots_t *t, const shared_t *sh, int64_t b, int64_t from, int64_t to) {
    const int64_t n = sh->a->n;
    T *v = sh->scores + b * n;
    const KT *keys = sh->keys ? sh->keys + b * sh->a->key_batch : NULL;
    const uint8_t *valid = sh->a->valid + b * n;
    const int check = keys && sh->a->check_keys;
    for (int64_t i = from; i < to; ++i) {
        if (s->head[i] >= 0) apply(s, t, v, i, sh, keys);
        else if (check && valid[i]) need_norm(s, sh, keys, i);
    }
}

/* Sample b's kept indices, ascending, then -1; returns their count. */
static int64_t list_kept(const shared_t *sh, int64_t b) {
    const int64_t n = sh->a->n;
    const uint8_t *mask = sh->a->mask + b * n;
    int64_t *indices = sh->a->indices + b * n, count = 0;
    for (int64_t i = 0; i < n; ++i)
        if (mask[i]) indices[count++] = i;
    for (int64_t c = count; c < n; ++c) indices[c] = -1;
    return count;
}

/* ------------------------------------------------------------------------ threads */

/* A share of the work: whole samples (samples = 1), or blocks of one sample's tokens to
 * finish. Threads take the next sample or block from a shared counter, so a thread
 * slowed by other load takes less. */
typedef struct {
    const shared_t *sh;
    int samples;              /* 1: whole samples; 0: blocks of sample `b` */
    int64_t b;                /* the sample being finished (samples = 0) */
    sample_t *one;            /* its state (samples = 0) */
    int64_t count;            /* samples or blocks */
    int64_t cursor;           /* next sample or block (atomic) */
    int64_t most;             /* out: the largest count kept (atomic max) */
    int status;               /* out: NO_MEMORY if a thread could not allocate */
} work_t;

#define BLOCK 64  /* tokens per block when finishing one sample */

static void *worker(void *arg) {
    work_t *work = arg;
    const shared_t *sh = work->sh;
    sample_t s = {0};
    dots_t t = {0};
    if ((work->samples && alloc_sample(&s, sh)) || alloc_dots(&t, sh)) {
        __atomic_store_n(&work->status, NO_MEMORY, __ATOMIC_RELAXED);
        free_sample(&s);
        return NULL;
    }
    for (;;) {
        int64_t job = __atomic_fetch_add(&work->cursor, 1, __ATOMIC_RELAXED);
        if (job >= work->count) break;
        if (work->samples) {
            choose(&s, &t, sh, job);
            finish(&s, &t, sh, job, 0, sh->a->n);
            int64_t count = list_kept(sh, job), most = __atomic_load_n(&work->most, __ATOMIC_RELAXED);
            while (count > most &&
                   !__atomic_compare_exchange_n(&work->most, &most, count, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            }
        } else {
            int64_t from = job * BLOCK, to = from + BLOCK < sh->a->n ? from + BLOCK : sh->a->n;
            finish(work->one, &t, sh, work->b, from, to);
        }
    }
    free_sample(&s);
    free_dots(&t);
    return NULL;
}

/* Run `work` on `threads` threads, this one included (fewer if threads cannot start);
 * returns the status and the threads that ran through *used. */
static int run_threads(work_t *work, int64_t threads, int64_t *used) {
    pthread_t ids[64];
    int64_t started = 0;
    if (threads > 64) threads = 64;
    while (started < threads - 1 && pthread_create(&ids[started], NULL, worker, work) == 0) ++started;
    worker(work);
    for (int64_t q = 0; q < started; ++q) pthread_join(ids[q], NULL);
    if (started + 1 > *used) *used = started + 1;
    return work->status;
}

int soft_nms(const soft_nms_args_t *a, T *scores, const KT *all_keys) {
    const int64_t n = a->n;
    for (int64_t b = 0; b < a->b; ++b) {  /* nothing changes when a score is negative */
        for (int64_t i = 0; i < n; ++i)
            if (a->valid[b * n + i] && scores[b * n + i] < 0) return NEGATIVE_SCORE;
    }
    shared_t sh = {.a = a, .scores = scores, .keys = a->similarity_sigma > 0 ? all_keys : NULL};
    *a->keys_unsure = 0;
    for (int64_t b = 0; b < a->b; ++b) {
        if (a->budget[b] > sh.steps) sh.steps = a->budget[b];
        int64_t area = 0;
        for (int64_t r = 0; r < a->r; ++r) area += a->shapes[(b * a->r + r) * 2] * a->shapes[(b * a->r + r) * 2 + 1];
        if (area > sh.cells) sh.cells = area;
    }
    /* The disc, capped where a larger one adds no offset inside any region. */
    double radius = a->radius, diagonal = 0;
    for (int64_t q = 0; q < a->b * a->r; ++q) {
        double h = (double)a->shapes[2 * q], wd = (double)a->shapes[2 * q + 1];
        if (sqrt(h * h + wd * wd) > diagonal) diagonal = sqrt(h * h + wd * wd);
    }
    if (radius > diagonal) radius = diagonal;
    sh.w = disc(radius, NULL, NULL);
    if (sh.steps * sh.w > a->max_entries) return TOO_LARGE;  /* the caller runs the torch steps */
    sh.p = 1;
    while (sh.p < n) sh.p <<= 1;
    sh.room = sh.steps + 1;  /* a step adds at most one entry per token (index 0 may be kept again) */
    sh.drow = malloc(sizeof(int64_t) * (size_t)(sh.w + 1));
    sh.dcol = malloc(sizeof(int64_t) * (size_t)(sh.w + 1));
    sh.distance2 = malloc(sizeof(T) * (size_t)(sh.w + 1));
    if (!sh.drow || !sh.dcol || !sh.distance2) {
        free(sh.drow); free(sh.dcol); free(sh.distance2);
        return NO_MEMORY;
    }
    disc(radius, sh.drow, sh.dcol);
    for (int64_t q = 0; q < sh.w; ++q) sh.distance2[q] = (T)(sh.drow[q] * sh.drow[q] + sh.dcol[q] * sh.dcol[q]);
    int64_t threads = a->threads > 1 && sh.steps * sh.w * (a->d > 1 ? a->d : 1) >= a->thread_work ? a->threads : 1;
    int status = OK;
    *a->kept_most = 0;
    *a->threads_used = 1;
    if (n == 0) {
    } else if (threads > 1 && a->b > 1) {
        work_t work = {.sh = &sh, .samples = 1, .count = a->b};
        status = run_threads(&work, threads < a->b ? threads : a->b, a->threads_used);
        *a->kept_most = work.most;
    } else {
        sample_t s = {0};
        dots_t t = {0};
        if (alloc_sample(&s, &sh) || alloc_dots(&t, &sh)) status = NO_MEMORY;
        for (int64_t b = 0; b < a->b && status == OK; ++b) {
            choose(&s, &t, &sh, b);
            if (threads > 1) {
                work_t work = {.sh = &sh, .b = b, .one = &s, .count = (n + BLOCK - 1) / BLOCK};
                status = run_threads(&work, threads, a->threads_used);
            } else {
                finish(&s, &t, &sh, b, 0, n);
            }
            int64_t count = list_kept(&sh, b);
            if (count > *a->kept_most) *a->kept_most = count;
        }
        free_sample(&s);
        free_dots(&t);
    }
    free(sh.drow); free(sh.dcol); free(sh.distance2);
    return status;
}
