/* LD_PRELOAD library: this process (and what it execs, through LD_PRELOAD) sees a CPU without
 * AVX-512 and without VNNI (AVX-512 VNNI, AVX-VNNI), so onnxruntime's MLAS, PyTorch and oneDNN
 * pick the kernels they pick on an AVX2-only CPU, at native speed.
 *
 * How: Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, 0; the CPU must list `cpuid_fault` in
 * /proc/cpuinfo) makes every CPUID instruction of this process raise SIGSEGV; the handler runs
 * the real CPUID (faulting switched off around it), clears the feature bits named below, writes
 * the registers back and steps over the 2-byte instruction. A handler the program installs for
 * SIGSEGV later (Python's faulthandler, pytest's) is recorded instead of installed, through this
 * library's sigaction()/signal(), and any SIGSEGV that is not CPUID goes to it (or to the default
 * action). What stays visible: XGETBV (not trappable) still reports the AVX-512 state enabled, which
 * the libraries only read after seeing the CPUID bit; glibc's own ifunc choices (memcpy) were made
 * before this library loaded.
 *
 * AGC_CPUID_MASK=avx2 (default) masks as above; the process aborts with one line when faulting
 * cannot be switched on, so a run never silently measures the host's own kernels. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));
        /* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14 */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, FP16 23, AMX-TILE 24, AMX-INT8 25 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX-VNNI 4, AVX512_BF16 5, AVX-IFMA 23; EDX: AVX-VNNI-INT8 4, AVX10 19 */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 23));
        r[3] &= ~((1u << 4) | (1u << 19));
    } else if (leaf == 0xD && sub == 0) {
        r[0] &= ~(7u << 5); /* XCR0 components the OS may enable: opmask, ZMM_Hi256, Hi16_ZMM */
    }
}

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static int installed;             /* ours is the installed SIGSEGV handler */
static struct sigaction program;  /* what the program asked for SIGSEGV (SIG_DFL at first) */

static void on_segv(int sig, siginfo_t *info, void *ctx_) {
    ucontext_t *ctx = (ucontext_t *)ctx_;
    greg_t *g = ctx->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (info->si_code > 0 && ip[0] == 0x0F && ip[1] == 0xA2) { /* a CPUID fault */
        uint32_t r[4], leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        real_cpuid(leaf, sub, r);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0];
        g[REG_RBX] = r[1];
        g[REG_RCX] = r[2];
        g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    /* a real fault (or a raise()): the program's handler, else the default action */
    if (program.sa_flags & SA_SIGINFO) {
        program.sa_sigaction(sig, info, ctx_);
    } else if (program.sa_handler != SIG_DFL && program.sa_handler != SIG_IGN) {
        program.sa_handler(sig);
    } else {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        installed = 0;
        real_sigaction(SIGSEGV, &dfl, NULL);
        if (info->si_code <= 0) raise(sig); /* sent, not faulted: send it again, now fatal */
    }
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !installed) return real_sigaction(sig, act, old);
    if (old) *old = program;
    if (act) program = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void install(void) {
    const char *m = getenv("AGC_CPUID_MASK");
    if (m && *m && strcmp(m, "avx2") != 0) {
        fprintf(stderr, "cpuid_mask: AGC_CPUID_MASK=%s is not known (avx2)\n", m);
        _exit(2);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    memset(&program, 0, sizeof program);
    program.sa_handler = SIG_DFL;
    if (!real_sigaction || real_sigaction(SIGSEGV, &sa, NULL) != 0 ||
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_mask: CPUID faulting is not available here (no cpuid_fault in "
                        "/proc/cpuinfo): use qemu-x86_64 -cpu Haswell instead\n");
        _exit(2);
    }
    installed = 1;
}
