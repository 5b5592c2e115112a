/* The memory monitor's steady 10 Hz tick, in a native thread (montage.memory.native).
 *
 * Why: on a small VM every wake-up of a Python thread runs with cold caches, so the pure-Python
 * tick costs several times what the same reads cost from C (benchmarks/results/monitor.md).
 * Here a pthread does the steady tick: it re-reads the files Python opened (pread of dup()ed
 * fds: meminfo or the cgroup's files, /proc/loadavg, each tree member's statm, PSI once a
 * second, and when the pid cursor moved or every 10 s, the members' task directories and
 * children files), computes the same
 * numbers as UsageReader.sample and ProcessTreeReader.read_totals, checks them against the
 * steady band Python configured, and appends a raw sample to a ring. Python is woken (a byte on
 * a pipe) only when it has something to do: a sample outside the band, a tree RSS above the
 * active memory_guards' ceiling, a tree that may have changed, a read or parse that is not the
 * plain kernel layout, listeners that want every tick, or no configuration yet. Tracked
 * children's memory moving (ffmpeg's, nearly every tick of a job) does not wake it: each
 * tracked process Python hands over as a group of tree
 * members gets its subtree RSS, and the largest since Python last looked, kept here
 * (take_tracked); Python folds them into its records when they are read or at its next tick.
 * Only a tracked process the C side cannot follow (not a proven member) still wakes Python
 * when a member's RSS moves (R_MEMBER), as before. Anything unusual wakes
 * Python, whose readers then measure that tick themselves, so what the C code accepts it
 * computes exactly as Python would (the tests compare both on the same trees).
 *
 * The thread never touches Python objects and never takes the GIL. ``tick_mu`` is held by the
 * thread for one tick and by Python (pause/resume) for a whole Python tick, so a
 * reconfiguration never interleaves with a C tick; ``ring_mu`` guards the ring and the flags.
 * After fork() the child has no thread: pthread_atfork marks every handle dead there.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 16384
#define SMALL 4096
#define TASKS_REFRESH_S 1.0   /* a member's thread list, when the tree is re-checked */
#define STILL_RECHECK_S 10.0  /* tree._STILL_RECHECK_S: re-check although the pid cursor stood */
#define PSI_REFRESH_S 1.0     /* the kernel updates PSI averages every 2 s: the thread re-reads
                                 them once a second, not every tick */
#define MIB (1024.0 * 1024.0)

/* Why Python was woken (bits, cumulated until Python reads them). */
#define R_UNCONFIGURED 1
#define R_BAND 2
#define R_TREE 4       /* the tree may have changed (recheck failed, a member exited) */
#define R_MEMBER 8     /* a descendant's RSS moved while a tracked process has no group */
#define R_EVERY 16     /* listeners: every tick */
#define R_READ 32      /* a read or parse the C code does not handle */
#define R_KICK 64      /* Python asked for one tick */
#define R_CURSOR_MISSED 128 /* the tree changed although the pid cursor stood still */
#define R_GUARD 256    /* the tree's RSS went above the ceiling of the active memory_guards */

typedef struct {
    double t;
    long long used, available, swap_used, process_rss, tree_rss;
    double psi_some, psi_full, percent;
} Sample;

typedef struct {
    int fd;
    char *text;
    Py_ssize_t len;
} Kept;

typedef struct {
    Kept statm;       /* text as last read ("" forces a parse) */
    long long rss;
    int task_fd;
    long threads;
    char *task_path;
    long *tids;       /* sorted */
    Py_ssize_t ntids;
    double listed_at;
    Kept *children;   /* NULL: not all kept (a recheck cannot prove anything) */
    Py_ssize_t nchildren;
} Member;

/* A tracked process followed in C: its subtree's members (indices into Config.members) and
   the subtree RSS of the last steady tick and the largest since Python last took them. */
typedef struct {
    Py_ssize_t *idx;
    Py_ssize_t n;
    long long current, peak;
    int fresh;        /* ticks measured it since take_tracked() */
} Group;

typedef struct {
    int meminfo_fd, current_fd, stat_fd, swap_fd, psi_fd, cursor_fd;
    char key[32];
    Py_ssize_t key_len;
    Kept cursor;      /* cursor text of the last proven tree, len -1 if unknown */
    long long host_total, ceiling, budget; /* budget < 0: none */
    long long tree_ceiling; /* < 0: no memory_guard; else wake Python when the tree exceeds it
                               or the ring is full */
    double low_pct, high_pct, floor_mb, psi_limit;
    double last_check;
    double psi_at, psi_some, psi_full; /* the thread's last PSI read (psi_at < 0: none yet) */
    int wake_every, wake_on_member;
    Member *members;
    Py_ssize_t nmembers;
    Group *groups;
    Py_ssize_t ngroups;
} Config;

typedef struct SamplerObject {
    PyObject_HEAD
    pthread_mutex_t tick_mu, ring_mu;
    pthread_t thread;
    int running, forked;
    int stop;         /* futex word: the thread's sleep ends early when it is set */
    int wake_r, wake_w;
    double interval_s;
    Config *cfg;
    int armed;        /* 0: no (valid) configuration, every tick wakes Python */
    Sample *ring;
    Py_ssize_t cap, head, count;
    unsigned long long dropped, ticks, wakes;
    int reasons, kick;
    long page;
    char buf[BUF_SIZE];
    struct SamplerObject *next_live;
} SamplerObject;

/* ---- every live handle, for the fork handler ---- */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static SamplerObject *live_head = NULL;

static void init_tick_mu(pthread_mutex_t *mu) {
    /* recursive: Python holds it across its tick (pause) and configure() takes it again */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(mu, &attr);
    pthread_mutexattr_destroy(&attr);
}

static void atfork_prepare(void) { pthread_mutex_lock(&live_mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&live_mu); }
static void atfork_child(void) {
    /* No thread runs here: re-create the locks (one may have been held by the parent's
       thread at fork) and mark every handle dead; its methods then do nothing. */
    pthread_mutex_init(&live_mu, NULL);
    for (SamplerObject *s = live_head; s; s = s->next_live) {
        init_tick_mu(&s->tick_mu);
        pthread_mutex_init(&s->ring_mu, NULL);
        s->running = 0;
        s->forked = 1;
    }
}

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- parsing: only the kernel's plain layout; anything else returns -1 (Python decides) --- */

static const char *find_mem(const char *hay, size_t n, const char *needle, size_t k, size_t from) {
    if (from > n || k > n) return NULL;
    for (size_t i = from; i + k <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

/* Python's int(text) for [ \t]*digits[ \t\n]* (what the kernel writes); -1 otherwise. */
static int parse_int(const char *p, const char *end, long long *out) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p >= end || *p < '0' || *p > '9') return -1;
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (v > (LLONG_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
        p++;
    }
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n')) p++;
    if (p != end) return -1;
    *out = v;
    return 0;
}

/* Python's float(text) for digits[.digits]; strtod rounds correctly as float() does. */
static int parse_float(const char *p, const char *end, double *out) {
    char tmp[64];
    size_t n = (size_t)(end - p);
    if (n == 0 || n >= sizeof tmp) return -1;
    int digits = 0, dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] >= '0' && p[i] <= '9') digits++;
        else if (p[i] == '.') dots++;
        else return -1;
    }
    if (!digits || dots > 1) return -1;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    char *stop;
    *out = strtod(tmp, &stop);
    return *stop == 0 ? 0 : -1;
}

/* _meminfo_kb's fast path: MemTotal, MemAvailable, SwapTotal, SwapFree in kB. */
static int parse_meminfo(const char *d, size_t n, long long v[4]) {
    if (n < 9 || memcmp(d, "MemTotal:", 9) != 0) return -1;
    const char *total_end = find_mem(d, n, " kB\n", 4, 9);
    const char *a = find_mem(d, n, "\nMemAvailable:", 14, 0);
    long long available_at = a ? (a - d) + 14 : 13;
    const char *ae = find_mem(d, n, " kB\n", 4, (size_t)available_at);
    const char *s = find_mem(d, n, "\nSwapTotal:", 11, 0);
    long long swap_at = s ? (s - d) + 11 : 10;
    const char *se = find_mem(d, n, " kB\nSwapFree:", 13, (size_t)swap_at);
    if (!total_end || total_end - d <= 0 || !(13 < available_at) || !ae) return -1;
    if (!(11 < swap_at) || !se) return -1;
    const char *fe = find_mem(d, n, " kB\n", 4, (size_t)((se - d) + 13));
    if (!fe) return -1;
    if (parse_int(d + 9, total_end, &v[0]) || parse_int(d + available_at, ae, &v[1]) ||
        parse_int(d + swap_at, se, &v[2]) || parse_int(se + 13, fe, &v[3]))
        return -1;
    return 0;
}

/* _psi_both's fast path. */
static int parse_psi(const char *d, size_t n, double *some, double *full) {
    const char *nl = memchr(d, '\n', n);
    if (!nl || n < 11 || memcmp(d, "some avg10=", 11) != 0) return -1;
    size_t f = (size_t)(nl - d) + 1;
    if (f + 11 > n || memcmp(d + f, "full avg10=", 11) != 0) return -1;
    const char *e1 = memchr(d + 11, ' ', n - 11);
    const char *e2 = memchr(d + f + 11, ' ', n - f - 11);
    if (!e1 || !e2) return -1;
    if (parse_float(d + 11, e1, some) || parse_float(d + f + 11, e2, full)) return -1;
    return 0;
}

/* _field(data, key): the first number after key at a line start; 1 if the key is absent. */
static int parse_field(const char *d, size_t n, const char *key, size_t k, long long *out) {
    const char *at = NULL;
    if (n >= k && memcmp(d, key, k) == 0) at = d;
    else {
        for (size_t i = 0; i + 1 + k <= n; i++)
            if (d[i] == '\n' && memcmp(d + i + 1, key, k) == 0) { at = d + i + 1; break; }
    }
    if (!at) return 1;
    const char *p = at + k, *end = d + n;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    while (p < eol && (*p == ' ' || *p == '\t')) p++;
    const char *w = p;
    while (w < eol && *w != ' ' && *w != '\t') w++;
    return parse_int(p, w, out);
}

/* ---- reads ---- */

static ssize_t read_fd(SamplerObject *s, int fd) {
    ssize_t n = pread(fd, s->buf, BUF_SIZE, 0);
    if (n >= BUF_SIZE) return -1; /* did not fit: Python's reader grows its buffer */
    return n;
}

static int same_text(const Kept *k, const char *d, ssize_t n) {
    return k->len == n && (n == 0 || memcmp(k->text, d, (size_t)n) == 0);
}

static int set_text(Kept *k, const char *d, ssize_t n) {
    char *copy = malloc((size_t)n + 1);
    if (!copy) return -1;
    memcpy(copy, d, (size_t)n);
    free(k->text);
    k->text = copy;
    k->len = n;
    return 0;
}

/* statm: "size resident ..." (Python: size, resident, _ = data.split(None, 2)). */
static int read_statm(SamplerObject *s, Member *m, int *changed) {
    ssize_t n = pread(m->statm.fd, s->buf, 256, 0);
    if (n < 0) return R_TREE; /* reaped */
    if (same_text(&m->statm, s->buf, n)) return 0;
    const char *d = s->buf, *end = d + n, *p = d;
    const char *f[3], *e[3];
    int k = 0;
    long long resident = 0;
    while (k < 3) {
        while (p < end && (*p == ' ' || *p == '\n' || *p == '\t')) p++;
        if (p >= end) break;
        f[k] = p;
        while (p < end && *p != ' ' && *p != '\n' && *p != '\t') p++;
        e[k++] = p;
    }
    if (k < 3) return R_READ;
    if (e[0] - f[0] == 1 && f[0][0] == '0') return R_TREE; /* size 0: a zombie, or exiting */
    if (parse_int(f[1], e[1], &resident)) return R_READ;
    m->rss = resident * s->page;
    if (set_text(&m->statm, d, n)) return R_READ;
    *changed = 1;
    return 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* _list_tids compared with the last list: 0 same, R_TREE changed or unreadable. */
static int same_tids(Member *m) {
    DIR *dir = opendir(m->task_path);
    if (!dir) return R_TREE;
    long found[512];
    Py_ssize_t n = 0;
    struct dirent *e;
    int result = 0;
    while ((e = readdir(dir))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        if (n >= (Py_ssize_t)(sizeof found / sizeof found[0])) { result = R_TREE; break; }
        found[n++] = strtol(e->d_name, NULL, 10);
    }
    closedir(dir);
    if (result) return result;
    if (n != m->ntids) return R_TREE;
    qsort(found, (size_t)n, sizeof(long), cmp_long);
    return memcmp(found, m->tids, (size_t)n * sizeof(long)) ? R_TREE : 0;
}

/* One steady tick into *out; 0 when the sample is steady, else the reasons to wake Python. */
static int measure(SamplerObject *s, Config *c, Sample *out, int fresh, double now) {
    long long mem[4];
    ssize_t n = read_fd(s, c->meminfo_fd);
    if (n < 0 || parse_meminfo(s->buf, (size_t)n, mem)) return R_READ;
    long long total = mem[0] * 1024;
    if (!total) total = c->host_total;
    long long host_available = mem[1] * 1024, used;
    if (c->current_fd >= 0) {
        long long current, inactive;
        n = read_fd(s, c->current_fd);
        if (n < 0 || parse_int(s->buf, s->buf + n, &current)) return R_READ;
        n = read_fd(s, c->stat_fd);
        if (n < 0) return R_READ;
        int r = parse_field(s->buf, (size_t)n, c->key, (size_t)c->key_len, &inactive);
        if (r < 0) return R_READ;
        if (r == 1) inactive = 0;
        used = current - inactive;
        if (used < 0) used = 0;
    } else {
        used = total - host_available;
        if (used < 0) used = 0;
    }
    long long available = c->ceiling - used;
    if (available < 0) available = 0;
    if (available > host_available) available = host_available;
    double psi_some = NAN, psi_full = NAN;
    if (c->psi_fd >= 0) {
        if (fresh || c->psi_at < 0 || now - c->psi_at >= PSI_REFRESH_S) {
            n = read_fd(s, c->psi_fd);
            if (n < 0 || parse_psi(s->buf, (size_t)n, &c->psi_some, &c->psi_full)) return R_READ;
            c->psi_at = now;
        }
        psi_some = c->psi_some;
        psi_full = c->psi_full;
    }
    long long swap_used;
    if (c->swap_fd >= 0) {
        n = read_fd(s, c->swap_fd);
        if (n < 0 || parse_int(s->buf, s->buf + n, &swap_used)) return R_READ;
    } else {
        swap_used = (mem[2] - mem[3]) * 1024;
        if (swap_used < 0) swap_used = 0;
    }

    /* The tree: ProcessTreeReader.read_totals' still path, or its _recheck. */
    if (c->nmembers == 0) return R_TREE;
    int still = 0;
    ssize_t cursor_len = -1;
    char cursor[128];
    if (c->cursor_fd >= 0) {
        n = pread(c->cursor_fd, cursor, sizeof cursor, 0);
        if (n > 0) {
            char *sp = memrchr(cursor, ' ', (size_t)n);
            if (sp) {
                cursor_len = n - (sp - cursor);
                memmove(cursor, sp, (size_t)cursor_len);
                still = same_text(&c->cursor, cursor, cursor_len);
            }
        }
    }
    int check = !(still && now - c->last_check < STILL_RECHECK_S);
    long long tree = 0;
    int member_moved = 0;
    for (Py_ssize_t i = 0; i < c->nmembers; i++) {
        Member *m = &c->members[i];
        int changed = 0;
        if (m->statm.fd < 0) return R_TREE;
        int r = read_statm(s, m, &changed);
        if (r) return r;
        if (changed && i > 0) member_moved = 1;
        if (check) {
            struct stat st;
            if (!m->children || m->task_fd < 0) return R_TREE; /* not provable from kept files */
            if (fstat(m->task_fd, &st) || (long)st.st_nlink - 2 != m->threads) return R_TREE;
            if (m->threads > 1 && now - m->listed_at >= TASKS_REFRESH_S) {
                if (same_tids(m)) return R_TREE;
                m->listed_at = now;
            }
            for (Py_ssize_t j = 0; j < m->nchildren; j++) {
                n = pread(m->children[j].fd, s->buf, SMALL, 0);
                if (n < 0 || !same_text(&m->children[j], s->buf, n))
                    return R_TREE | (still ? R_CURSOR_MISSED : 0);
            }
        }
        tree += m->rss;
    }
    if (check) {
        c->last_check = now;
        if (cursor_len >= 0) set_text(&c->cursor, cursor, cursor_len);
        else c->cursor.len = -1;
    }
    /* The tree is proven and every member read: the tracked subtrees' RSS, as
       ProcessTracker.update would take it from this walk (Python folds it in lazily). */
    for (Py_ssize_t g = 0; g < c->ngroups; g++) {
        Group *grp = &c->groups[g];
        long long sum = 0;
        for (Py_ssize_t j = 0; j < grp->n; j++) sum += c->members[grp->idx[j]].rss;
        grp->current = sum;
        if (!grp->fresh || sum > grp->peak) grp->peak = sum;
        grp->fresh = 1;
    }

    /* _Sampler.sample: the percent, then the band (classify is Python's). */
    long long budget = c->budget, ceiling = c->ceiling ? c->ceiling : c->host_total;
    double percent;
    if (budget < 0 && ceiling > 0) percent = 100.0 * (double)used / (double)ceiling;
    else {
        if (ceiling <= 0) return R_READ;
        percent = 100.0 * (double)used / (double)ceiling;
        if (budget > 0) {
            double mine = 100.0 * (double)(tree > 0 ? tree : 0) / (double)budget;
            if (mine > percent) percent = mine;
        }
    }
    if (!(c->low_pct <= percent && percent < c->high_pct &&
          (double)available / MIB >= c->floor_mb && (c->psi_fd < 0 || psi_full < c->psi_limit)))
        return R_BAND;
    if (c->tree_ceiling >= 0 && tree > c->tree_ceiling) return R_GUARD;
    if (member_moved && c->wake_on_member) return R_MEMBER;
    out->t = now;
    out->used = used;
    out->available = available;
    out->swap_used = swap_used;
    out->psi_some = psi_some;
    out->psi_full = psi_full;
    out->process_rss = c->members[0].rss;
    out->tree_rss = tree;
    out->percent = percent;
    return 0;
}

static void wake_python(SamplerObject *s, int reasons) {
    pthread_mutex_lock(&s->ring_mu);
    s->reasons |= reasons;
    s->wakes++;
    pthread_mutex_unlock(&s->ring_mu);
    char byte = 'w';
    ssize_t ignored = write(s->wake_w, &byte, 1); /* non-blocking: a full pipe is awake already */
    (void)ignored;
}

/* One tick, under tick_mu: a sample in the ring, or a byte for Python. Returns the time it
   read (the sample's timestamp; the thread's schedule uses it too: one clock read a tick). */
static double tick(SamplerObject *s) {
    Sample sample;
    int reasons;
    pthread_mutex_lock(&s->tick_mu);
    double now = monotonic_now();
    /* kick and ticks are atomics: a cold lock costs µs, and this runs ten times a second */
    int kick = __atomic_exchange_n(&s->kick, 0, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&s->ticks, 1, __ATOMIC_RELAXED);
    Config *c = s->armed ? s->cfg : NULL;
    if (!c) reasons = R_UNCONFIGURED;
    else if (kick) reasons = R_KICK;
    else if (c->wake_every) reasons = R_EVERY;
    else reasons = measure(s, c, &sample, 0, now);
    if (reasons) {
        s->armed = 0; /* Python measures this tick itself and configures again */
        pthread_mutex_unlock(&s->tick_mu);
        wake_python(s, reasons);
        return now;
    }
    pthread_mutex_lock(&s->ring_mu);
    Py_ssize_t at = (s->head + s->count) % s->cap;
    if (s->count == s->cap) {
        s->head = (s->head + 1) % s->cap;
        s->dropped++;
    } else {
        s->count++;
    }
    s->ring[at] = sample;
    /* memory_guards fold every sample into their peaks: Python drains before one is dropped */
    int full = s->count == s->cap && c->tree_ceiling >= 0;
    pthread_mutex_unlock(&s->ring_mu);
    pthread_mutex_unlock(&s->tick_mu);
    if (full) wake_python(s, R_GUARD);
    return now;
}

static void add_seconds(struct timespec *t, double seconds) {
    long long ns = (long long)t->tv_nsec + (long long)(seconds * 1e9);
    t->tv_sec += (time_t)(ns / 1000000000LL);
    t->tv_nsec = (long)(ns % 1000000000LL);
}

/* Tick on a fixed grid of absolute CLOCK_MONOTONIC deadlines (10.0 Hz, no drift), sleeping in
   one futex wait on the stop word: stop() sets the word and wakes it. The wait is the cheapest
   sleep that can be cut short (poll on a pipe costs fd lookups and a wait-queue entry more per
   tick). A tick that ran late (tick_mu held by a Python tick) does not cause a burst: missed
   deadlines are skipped. */
static void *run(void *arg) {
    SamplerObject *s = arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    add_seconds(&next, s->interval_s);
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        long r = syscall(SYS_futex, &s->stop, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, 0, &next,
                         NULL, FUTEX_BITSET_MATCH_ANY);
        if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) break;
        if (r == 0 || errno == EINTR || errno == EAGAIN) continue; /* spurious: same deadline */
        if (errno != ETIMEDOUT) /* no usable futex (a sandbox?): sleep without the early stop */
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {}
        double now = tick(s);
        add_seconds(&next, s->interval_s);
        if (now > (double)next.tv_sec + (double)next.tv_nsec * 1e-9) { /* missed a period */
            next.tv_sec = (time_t)now;
            next.tv_nsec = (long)((now - (double)next.tv_sec) * 1e9);
            add_seconds(&next, s->interval_s);
        }
    }
    return NULL;
}

/* ---- configuration ---- */

static void close_kept(Kept *k) {
    if (k->fd >= 0) close(k->fd);
    k->fd = -1;
    free(k->text);
    k->text = NULL;
    k->len = 0;
}

static void free_config(Config *c) {
    if (!c) return;
    int fds[] = {c->meminfo_fd, c->current_fd, c->stat_fd, c->swap_fd, c->psi_fd, c->cursor_fd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(c->cursor.text);
    for (Py_ssize_t i = 0; i < c->nmembers; i++) {
        Member *m = &c->members[i];
        close_kept(&m->statm);
        if (m->task_fd >= 0) close(m->task_fd);
        free(m->task_path);
        free(m->tids);
        if (m->children) {
            for (Py_ssize_t j = 0; j < m->nchildren; j++) close_kept(&m->children[j]);
            free(m->children);
        }
    }
    free(c->members);
    for (Py_ssize_t g = 0; g < c->ngroups; g++) free(c->groups[g].idx);
    free(c->groups);
    free(c);
}

/* Our own copy of a Python fd: Python may close or reuse its numbers while we run. */
static int dup_fd(long fd, int *out) {
    if (fd < 0) { *out = -1; return 0; }
    int copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    *out = copy;
    return 0;
}

static int bytes_text(PyObject *obj, Kept *k) {
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(obj, &data, &n) < 0) return -1;
    if (set_text(k, data, n)) { PyErr_NoMemory(); return -1; }
    return 0;
}

static int parse_member(PyObject *item, Member *m) {
    long statm_fd, task_fd, threads;
    long long rss;
    PyObject *statm, *tids, *children;
    const char *path;
    double listed_at;
    if (!PyArg_ParseTuple(item, "lOLllsOdO", &statm_fd, &statm, &rss, &task_fd, &threads, &path,
                          &tids, &listed_at, &children))
        return -1;
    m->rss = rss;
    m->threads = threads;
    m->listed_at = listed_at;
    if (!(m->task_path = strdup(path))) { PyErr_NoMemory(); return -1; }
    if (dup_fd(statm_fd, &m->statm.fd) || bytes_text(statm, &m->statm)) return -1;
    if (dup_fd(task_fd, &m->task_fd)) return -1;
    PyObject *seq = PySequence_Fast(tids, "tids must be a sequence");
    if (!seq) return -1;
    m->ntids = PySequence_Fast_GET_SIZE(seq);
    m->tids = calloc((size_t)m->ntids + 1, sizeof(long));
    for (Py_ssize_t i = 0; m->tids && i < m->ntids; i++)
        m->tids[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (!m->tids) { PyErr_NoMemory(); return -1; }
    if (PyErr_Occurred()) return -1;
    qsort(m->tids, (size_t)m->ntids, sizeof(long), cmp_long);
    if (children == Py_None) return 0;
    seq = PySequence_Fast(children, "children must be a sequence or None");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    m->children = calloc((size_t)n + 1, sizeof(Kept));
    if (!m->children) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t j = 0; j < n; j++) m->children[j].fd = -1;
    m->nchildren = n;
    for (Py_ssize_t j = 0; j < n; j++) {
        long fd;
        PyObject *text;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, j), "lO", &fd, &text) ||
            dup_fd(fd, &m->children[j].fd) || bytes_text(text, &m->children[j])) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static int parse_groups(PyObject *groups, Config *c) {
    PyObject *seq = PySequence_Fast(groups, "groups must be a sequence");
    if (!seq) return -1;
    c->ngroups = PySequence_Fast_GET_SIZE(seq);
    c->groups = calloc((size_t)c->ngroups + 1, sizeof(Group));
    if (!c->groups) { c->ngroups = 0; Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t g = 0; g < c->ngroups; g++) {
        PyObject *idx = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, g), "a group is indices");
        if (!idx) { Py_DECREF(seq); return -1; }
        Group *grp = &c->groups[g];
        grp->n = PySequence_Fast_GET_SIZE(idx);
        grp->idx = calloc((size_t)grp->n + 1, sizeof(Py_ssize_t));
        if (!grp->idx) { Py_DECREF(idx); Py_DECREF(seq); PyErr_NoMemory(); return -1; }
        for (Py_ssize_t j = 0; j < grp->n; j++) {
            Py_ssize_t at = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(idx, j));
            if (at == -1 && PyErr_Occurred()) { Py_DECREF(idx); Py_DECREF(seq); return -1; }
            if (at < 0 || at >= c->nmembers) {
                PyErr_SetString(PyExc_ValueError, "group index out of range");
                Py_DECREF(idx);
                Py_DECREF(seq);
                return -1;
            }
            grp->idx[j] = at;
        }
        Py_DECREF(idx);
    }
    Py_DECREF(seq);
    return 0;
}

static int check_alive(SamplerObject *s) {
    if (s->forked) {
        PyErr_SetString(PyExc_RuntimeError, "native sampler inherited through fork()");
        return -1;
    }
    return 0;
}

static void lock_tick(SamplerObject *s) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->tick_mu);
    Py_END_ALLOW_THREADS
}

PyDoc_STRVAR(configure_doc,
"configure(meminfo_fd, current_fd, stat_fd, inactive_key, swap_fd, psi_fd, cursor_fd, cursor,\n"
"          host_total, ceiling, budget, low_pct, high_pct, floor_mb, psi_limit, last_check,\n"
"          wake_every, wake_on_member, members, groups=(), tree_ceiling=-1)\n"
"Arm the thread with copies (dup) of Python's fds. -1: no such file; budget -1: none;\n"
"cursor None: unknown. members: root first, each (statm_fd, statm_text, rss, task_fd,\n"
"threads, task_dir, tids, listed_at, [(children_fd, text), ...] or None). groups: the\n"
"tracked processes followed in C, each a sequence of member indices (its subtree).\n"
"tree_ceiling: memory_guards are active: wake Python (R_GUARD) when the tree's RSS exceeds\n"
"it or the ring is full; -1: none.");

static PyObject *Sampler_configure(SamplerObject *s, PyObject *args) {
    long meminfo_fd, current_fd, stat_fd, swap_fd, psi_fd, cursor_fd;
    const char *key;
    Py_ssize_t key_len;
    PyObject *cursor, *members, *groups = NULL;
    long long host_total, ceiling, budget;
    double low, high, floor_mb, psi_limit, last_check;
    long long tree_ceiling = -1;
    int wake_every, wake_on_member;
    if (check_alive(s)) return NULL;
    if (!PyArg_ParseTuple(args, "llly#lllOLLLdddddppO|OL", &meminfo_fd, &current_fd, &stat_fd,
                          &key, &key_len, &swap_fd, &psi_fd, &cursor_fd, &cursor, &host_total,
                          &ceiling, &budget, &low, &high, &floor_mb, &psi_limit, &last_check,
                          &wake_every, &wake_on_member, &members, &groups, &tree_ceiling))
        return NULL;
    if ((size_t)key_len >= sizeof(((Config *)0)->key)) {
        PyErr_SetString(PyExc_ValueError, "inactive_key too long");
        return NULL;
    }
    Config *c = calloc(1, sizeof(Config));
    if (!c) return PyErr_NoMemory();
    c->meminfo_fd = c->current_fd = c->stat_fd = c->swap_fd = c->psi_fd = c->cursor_fd = -1;
    memcpy(c->key, key, (size_t)key_len);
    c->key_len = key_len;
    c->host_total = host_total;
    c->ceiling = ceiling;
    c->budget = budget;
    c->tree_ceiling = tree_ceiling;
    c->low_pct = low;
    c->high_pct = high;
    c->floor_mb = floor_mb;
    c->psi_limit = psi_limit;
    c->last_check = last_check;
    c->psi_at = -1.0;
    c->wake_every = wake_every;
    c->wake_on_member = wake_on_member;
    c->cursor.len = -1;
    PyObject *seq = NULL;
    if (dup_fd(meminfo_fd, &c->meminfo_fd) || dup_fd(current_fd, &c->current_fd) ||
        dup_fd(stat_fd, &c->stat_fd) || dup_fd(swap_fd, &c->swap_fd) ||
        dup_fd(psi_fd, &c->psi_fd) || dup_fd(cursor_fd, &c->cursor_fd))
        goto fail;
    if (c->meminfo_fd < 0 || (c->current_fd >= 0) != (c->stat_fd >= 0)) {
        PyErr_SetString(PyExc_ValueError, "meminfo, or current and stat together, are needed");
        goto fail;
    }
    if (cursor != Py_None && bytes_text(cursor, &c->cursor)) goto fail;
    if (!(seq = PySequence_Fast(members, "members must be a sequence"))) goto fail;
    c->nmembers = PySequence_Fast_GET_SIZE(seq);
    c->members = calloc((size_t)c->nmembers + 1, sizeof(Member));
    if (!c->members) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < c->nmembers; i++) c->members[i].statm.fd = c->members[i].task_fd = -1;
    for (Py_ssize_t i = 0; i < c->nmembers; i++)
        if (parse_member(PySequence_Fast_GET_ITEM(seq, i), &c->members[i])) goto fail;
    Py_CLEAR(seq);
    if (groups && groups != Py_None && parse_groups(groups, c)) goto fail;
    lock_tick(s);
    Config *old = s->cfg;
    s->cfg = c;
    s->armed = 1;
    pthread_mutex_unlock(&s->tick_mu);
    free_config(old);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(seq);
    free_config(c);
    return NULL;
}

static PyObject *sample_tuple(const Sample *x) {
    PyObject *some = isnan(x->psi_some) ? Py_NewRef(Py_None) : PyFloat_FromDouble(x->psi_some);
    PyObject *full = isnan(x->psi_full) ? Py_NewRef(Py_None) : PyFloat_FromDouble(x->psi_full);
    if (!some || !full) { Py_XDECREF(some); Py_XDECREF(full); return NULL; }
    return Py_BuildValue("(dLLLNNLLd)", x->t, x->used, x->available, x->swap_used, some, full,
                         x->process_rss, x->tree_rss, x->percent);
}

static PyObject *Sampler_drain(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    Sample *copy = NULL;
    Py_ssize_t n;
    if (s->forked) return PyList_New(0);
    pthread_mutex_lock(&s->ring_mu); /* held for a copy only: never blocks long */
    n = s->count;
    if (n) copy = malloc((size_t)n * sizeof(Sample));
    for (Py_ssize_t i = 0; copy && i < n; i++) copy[i] = s->ring[(s->head + i) % s->cap];
    if (copy || !n) { s->head = 0; s->count = 0; }
    pthread_mutex_unlock(&s->ring_mu);
    if (n && !copy) return PyErr_NoMemory();
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list && i < n; i++) {
        PyObject *item = sample_tuple(&copy[i]);
        if (!item) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, i, item);
    }
    free(copy);
    return list;
}

static PyObject *Sampler_measure(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    Sample x;
    int reasons;
    if (check_alive(s)) return NULL;
    lock_tick(s);
    reasons = s->cfg && s->armed ? measure(s, s->cfg, &x, 1, monotonic_now()) : R_UNCONFIGURED;
    pthread_mutex_unlock(&s->tick_mu);
    if (reasons) return Py_BuildValue("(iO)", reasons, Py_None);
    return Py_BuildValue("(iN)", 0, sample_tuple(&x));
}

static PyObject *Sampler_take_tracked(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    /* Under tick_mu (recursive: also inside pause()), so no tick is half-way through. */
    if (s->forked) return PyList_New(0);
    lock_tick(s);
    Config *c = s->cfg;
    Py_ssize_t n = 0;
    for (Py_ssize_t g = 0; c && g < c->ngroups; g++) n += c->groups[g].fresh;
    PyObject *list = PyList_New(n);
    Py_ssize_t k = 0;
    for (Py_ssize_t g = 0; list && c && g < c->ngroups; g++) {
        Group *grp = &c->groups[g];
        if (!grp->fresh) continue;
        PyObject *item = Py_BuildValue("(nLL)", g, grp->current, grp->peak);
        if (!item) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, k++, item);
        grp->fresh = 0;
    }
    pthread_mutex_unlock(&s->tick_mu);
    return list;
}

static PyObject *Sampler_take_reasons(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&s->ring_mu);
    int r = s->reasons;
    s->reasons = 0;
    pthread_mutex_unlock(&s->ring_mu);
    return PyLong_FromLong(r);
}

static PyObject *Sampler_kick(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    __atomic_store_n(&s->kick, 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *Sampler_pause(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    if (check_alive(s)) return NULL;
    lock_tick(s);
    Py_RETURN_NONE;
}

static PyObject *Sampler_resume(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    if (check_alive(s)) return NULL;
    if (pthread_mutex_unlock(&s->tick_mu)) {
        PyErr_SetString(PyExc_RuntimeError, "resume() without pause()");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Sampler_disarm(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    if (check_alive(s)) return NULL;
    lock_tick(s);
    s->armed = 0;
    pthread_mutex_unlock(&s->tick_mu);
    Py_RETURN_NONE;
}

static PyObject *Sampler_set_interval(SamplerObject *s, PyObject *arg) {
    double v = PyFloat_AsDouble(arg);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    if (!(v > 0)) {
        PyErr_SetString(PyExc_ValueError, "interval must be > 0");
        return NULL;
    }
    s->interval_s = v;
    Py_RETURN_NONE;
}

static PyObject *Sampler_start(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    if (check_alive(s)) return NULL;
    if (s->running) Py_RETURN_NONE;
    __atomic_store_n(&s->stop, 0, __ATOMIC_RELEASE);
    int err = pthread_create(&s->thread, NULL, run, s);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    s->running = 1;
    Py_RETURN_NONE;
}

static void stop_thread(SamplerObject *s) {
    if (!s->running) return;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &s->stop, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL, NULL, 0);
    pthread_join(s->thread, NULL);
    s->running = 0;
}

static PyObject *Sampler_stop(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    /* Join the thread (GIL released), then wake Python's waiter one last time. */
    if (s->forked) Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    stop_thread(s);
    Py_END_ALLOW_THREADS
    char byte = 'x';
    ssize_t ignored = write(s->wake_w, &byte, 1);
    (void)ignored;
    Py_RETURN_NONE;
}

static PyObject *Sampler_counters(SamplerObject *s, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&s->ring_mu);
    PyObject *r = Py_BuildValue("{sKsKsKsn}", "ticks", __atomic_load_n(&s->ticks, __ATOMIC_RELAXED), "wakes", s->wakes, "dropped",
                                s->dropped, "capacity", s->cap);
    pthread_mutex_unlock(&s->ring_mu);
    return r;
}

static PyObject *Sampler_get_wake_fd(SamplerObject *s, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(s->wake_r);
}

static PyObject *Sampler_get_running(SamplerObject *s, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(s->running && !s->forked);
}

static PyObject *Sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"interval_s", "capacity", NULL};
    double interval = 0.1;
    Py_ssize_t cap = 600;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dn", kwlist, &interval, &cap)) return NULL;
    if (!(interval > 0) || cap < 1) {
        PyErr_SetString(PyExc_ValueError, "interval_s must be > 0 and capacity >= 1");
        return NULL;
    }
    SamplerObject *s = (SamplerObject *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->wake_r = s->wake_w = -1;
    s->interval_s = interval;
    s->cap = cap;
    s->page = sysconf(_SC_PAGESIZE);
    init_tick_mu(&s->tick_mu);
    pthread_mutex_init(&s->ring_mu, NULL);
    int wake_pipe[2];
    s->ring = calloc((size_t)cap, sizeof(Sample));
    if (!s->ring) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK)) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(s);
        return NULL;
    }
    s->wake_r = wake_pipe[0];
    s->wake_w = wake_pipe[1];
    pthread_mutex_lock(&live_mu);
    s->next_live = live_head;
    live_head = s;
    pthread_mutex_unlock(&live_mu);
    return (PyObject *)s;
}

static void Sampler_dealloc(SamplerObject *s) {
    pthread_mutex_lock(&live_mu);
    for (SamplerObject **p = &live_head; *p; p = &(*p)->next_live)
        if (*p == s) { *p = s->next_live; break; }
    pthread_mutex_unlock(&live_mu);
    if (!s->forked) {
        Py_BEGIN_ALLOW_THREADS
        stop_thread(s);
        Py_END_ALLOW_THREADS
    }
    free_config(s->cfg);
    free(s->ring);
    int fds[] = {s->wake_r, s->wake_w};
    for (size_t i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Sampler_methods[] = {
    {"configure", (PyCFunction)Sampler_configure, METH_VARARGS, configure_doc},
    {"drain", (PyCFunction)Sampler_drain, METH_NOARGS,
     "The steady samples since the last drain, oldest first: (t, used, available, swap_used,"
     " psi_some, psi_full, process_rss, tree_rss, percent)."},
    {"measure", (PyCFunction)Sampler_measure, METH_NOARGS,
     "One tick now, in this thread: (0, sample) if steady, else (reasons, None)."},
    {"take_tracked", (PyCFunction)Sampler_take_tracked, METH_NOARGS,
     "The groups measured since the last call: [(group, current RSS, peak RSS), ...]; the"
     " peak is the largest subtree RSS of those ticks. Clears them."},
    {"take_reasons", (PyCFunction)Sampler_take_reasons, METH_NOARGS,
     "Why Python was woken since the last call (bits), and clear them."},
    {"kick", (PyCFunction)Sampler_kick, METH_NOARGS, "Make the next tick wake Python."},
    {"disarm", (PyCFunction)Sampler_disarm, METH_NOARGS,
     "Drop the configuration's use: every tick wakes Python until configure()."},
    {"pause", (PyCFunction)Sampler_pause, METH_NOARGS,
     "Hold the tick lock (waits for a running tick, GIL released)."},
    {"resume", (PyCFunction)Sampler_resume, METH_NOARGS, "Release pause()."},
    {"set_interval", (PyCFunction)Sampler_set_interval, METH_O, "Seconds between ticks."},
    {"start", (PyCFunction)Sampler_start, METH_NOARGS, "Start the thread (idempotent)."},
    {"stop", (PyCFunction)Sampler_stop, METH_NOARGS,
     "Stop and join the thread, then put a byte on the wake pipe (idempotent)."},
    {"counters", (PyCFunction)Sampler_counters, METH_NOARGS,
     "{'ticks', 'wakes', 'dropped', 'capacity'}."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sampler_getset[] = {
    {"wake_fd", (getter)Sampler_get_wake_fd, NULL, "Readable when Python has work.", NULL},
    {"running", (getter)Sampler_get_running, NULL, "The thread runs.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "montage.memory._native_sampler.Sampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The steady tick of the memory monitor in a native thread.",
    .tp_methods = Sampler_methods,
    .tp_getset = Sampler_getset,
    .tp_new = Sampler_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_sampler", "Native steady tick of the memory monitor.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_sampler(void) {
    if (PyType_Ready(&SamplerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        atfork_done = 1;
    }
    Py_INCREF(&SamplerType);
    if (PyModule_AddObject(m, "Sampler", (PyObject *)&SamplerType) < 0 ||
        PyModule_AddIntConstant(m, "R_UNCONFIGURED", R_UNCONFIGURED) ||
        PyModule_AddIntConstant(m, "R_BAND", R_BAND) || PyModule_AddIntConstant(m, "R_TREE", R_TREE) ||
        PyModule_AddIntConstant(m, "R_MEMBER", R_MEMBER) ||
        PyModule_AddIntConstant(m, "R_EVERY", R_EVERY) || PyModule_AddIntConstant(m, "R_READ", R_READ) ||
        PyModule_AddIntConstant(m, "R_KICK", R_KICK) ||
        PyModule_AddIntConstant(m, "R_CURSOR_MISSED", R_CURSOR_MISSED) ||
        PyModule_AddIntConstant(m, "R_GUARD", R_GUARD)) {
        Py_DECREF(&SamplerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
