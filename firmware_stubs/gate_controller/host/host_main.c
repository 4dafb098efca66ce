/* Host build of the gate controller: the portable core behind a pseudo-terminal.
 *
 * Usage:
 *   gate_controller --pty            create a pty; its slave path is printed as "READY ..."
 *   gate_controller --fd N           use inherited fd N (e.g. a pty master owned by the
 *                                    simulator, so the line survives a controller restart)
 *   gate_controller --tty PATH       open a tty (e.g. one end of socat) in raw mode
 *
 * stdout (line-buffered) reports "READY boot_id=XXXX reason=R pty=PATH", then one line per
 * barrier change ("barrier closed|open_in|open_out|open_both") and one "ok <cmd>" per
 * control command. stdin takes control commands, one per line, that stand in for the
 * board's inputs and for line faults:
 *   pass in|out        the passage sensors saw someone go through
 *   fire 1|0           fire-alarm input on/off
 *   tamper 1|0         tamper switch on/off
 *   mute 1|0           stop answering (ignore received bytes, send nothing)
 *   deaf 1|0           ignore received bytes but keep sending (a broken receive wire:
 *                      events are re-sent because their acknowledgements are lost)
 *   garble N           corrupt the CRC of the next N transmitted frames
 *   truncate N         send only the first half of the next N transmitted frames
 *   noise              send a burst of garbage bytes (including a stray flag)
 *   reset              power-cycle: re-execute with boot reason "watchdog"
 *   quit               exit
 * A "reboot" command received over the protocol re-executes the program on the same fd. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../src/gc_core.h"

typedef struct host {
    int fd;
    int mute;
    int deaf;
    int garble;
    int truncate;
    gc_core_t core;
} host_t;

static volatile sig_atomic_t g_stop = 0;
static host_t g_host;

static uint32_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static void write_raw(host_t *h, const uint8_t *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(h->fd, data, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return; /* EAGAIN (nobody reading) or EIO (no slave): the bytes are lost */
        }
        data += n;
        len -= (size_t)n;
    }
}

static void hal_uart_write(void *ctx, const uint8_t *data, size_t len)
{
    host_t *h = ctx;
    if (h->mute) {
        return;
    }
    uint8_t buf[GC_MAX_WIRE];
    if (len > sizeof buf) {
        return;
    }
    memcpy(buf, data, len);
    if (h->garble > 0 && len > 3) {
        h->garble--;
        buf[len - 2] ^= 0x5Au; /* a CRC byte (or its escape) */
        if (buf[len - 2] == GC_FLAG || buf[len - 2] == GC_ESC) {
            buf[len - 2] ^= 0x01u;
        }
    }
    if (h->truncate > 0) {
        h->truncate--;
        len /= 2;
    }
    write_raw(h, buf, len);
}

static void hal_set_barrier(void *ctx, gc_barrier_t state)
{
    (void)ctx;
    static const char *names[] = {"closed", "open_in", "open_out", "open_both"};
    printf("barrier %s\n", names[state]);
}

static char *g_exe_args[8];

static void reexec(host_t *h, int reason)
{
    char fdbuf[16];
    char reasonbuf[8];
    snprintf(fdbuf, sizeof fdbuf, "%d", h->fd);
    snprintf(reasonbuf, sizeof reasonbuf, "%d", reason);
    int fl = fcntl(h->fd, F_GETFD);
    if (fl >= 0) {
        fcntl(h->fd, F_SETFD, fl & ~FD_CLOEXEC);
    }
    g_exe_args[0] = "gate_controller";
    g_exe_args[1] = "--fd";
    g_exe_args[2] = fdbuf;
    g_exe_args[3] = "--boot-reason";
    g_exe_args[4] = reasonbuf;
    g_exe_args[5] = NULL;
    fflush(stdout);
    execv("/proc/self/exe", g_exe_args);
    perror("gate_controller: execv");
    _exit(3);
}

static void hal_reboot(void *ctx)
{
    reexec(ctx, GC_BOOT_COMMANDED);
}

static void hal_log(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "gate_controller: %s\n", msg);
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int set_raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) != 0) {
        return -1;
    }
    cfmakeraw(&t);
    return tcsetattr(fd, TCSANOW, &t);
}

static void control(host_t *h, char *line)
{
    char cmd[16] = {0};
    char arg[16] = {0};
    uint32_t t = now_ms();
    if (sscanf(line, "%15s %15s", cmd, arg) < 1) {
        return;
    }
    int n = atoi(arg);
    if (strcmp(cmd, "pass") == 0) {
        uint8_t dir = strcmp(arg, "out") == 0 ? GC_DIR_OUT : GC_DIR_IN;
        gc_core_passage(&h->core, dir, t);
    } else if (strcmp(cmd, "fire") == 0) {
        gc_core_fire_input(&h->core, n != 0, t);
    } else if (strcmp(cmd, "tamper") == 0) {
        gc_core_tamper_input(&h->core, n != 0, t);
    } else if (strcmp(cmd, "mute") == 0) {
        h->mute = n != 0;
    } else if (strcmp(cmd, "deaf") == 0) {
        h->deaf = n != 0;
    } else if (strcmp(cmd, "garble") == 0) {
        h->garble = n > 0 ? n : 1;
    } else if (strcmp(cmd, "truncate") == 0) {
        h->truncate = n > 0 ? n : 1;
    } else if (strcmp(cmd, "noise") == 0) {
        static const uint8_t junk[] = {0x13, 0x37, GC_FLAG, 0x01, 0x99, GC_ESC, 0x42, 0x00};
        write_raw(h, junk, sizeof junk);
    } else if (strcmp(cmd, "reset") == 0) {
        printf("ok reset\n");
        reexec(h, GC_BOOT_WATCHDOG);
    } else if (strcmp(cmd, "quit") == 0) {
        g_stop = 1;
    } else {
        printf("err unknown command %s\n", cmd);
        return;
    }
    printf("ok %s\n", cmd);
}

int main(int argc, char **argv)
{
    host_t *h = &g_host;
    int boot_reason = GC_BOOT_POWER_ON;
    const char *tty = NULL;
    int make_pty = 0;
    h->fd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--pty") == 0) {
            make_pty = 1;
        } else if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc) {
            h->fd = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--tty") == 0 && i + 1 < argc) {
            tty = argv[++i];
        } else if (strcmp(argv[i], "--boot-reason") == 0 && i + 1 < argc) {
            boot_reason = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s --pty | --fd N | --tty PATH\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (make_pty) {
        h->fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (h->fd < 0 || grantpt(h->fd) != 0 || unlockpt(h->fd) != 0) {
            perror("gate_controller: pty");
            return 1;
        }
    } else if (tty != NULL) {
        h->fd = open(tty, O_RDWR | O_NOCTTY);
        if (h->fd < 0 || set_raw(h->fd) != 0) {
            perror("gate_controller: tty");
            return 1;
        }
    }
    if (h->fd < 0) {
        fprintf(stderr, "gate_controller: need --pty, --fd N or --tty PATH\n");
        return 2;
    }
    if (make_pty || tty == NULL) {
        set_raw(h->fd); /* pty master: make the slave side raw too */
    }
    fcntl(h->fd, F_SETFL, fcntl(h->fd, F_GETFL) | O_NONBLOCK);
    /* a UART receives nothing from before its reset: discard what is queued */
    uint8_t junk[256];
    while (read(h->fd, junk, sizeof junk) > 0) {
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    uint16_t boot_id = 0;
    int ur = open("/dev/urandom", O_RDONLY);
    if (ur < 0 || read(ur, &boot_id, sizeof boot_id) != (ssize_t)sizeof boot_id) {
        boot_id = (uint16_t)(now_ms() ^ (uint32_t)getpid());
    }
    if (ur >= 0) {
        close(ur);
    }
    gc_hal_t hal = {h, hal_uart_write, hal_set_barrier, hal_reboot, hal_log};
    const char *path = make_pty || tty == NULL ? ptsname(h->fd) : tty;
    gc_core_init(&h->core, &hal, boot_id, (uint8_t)boot_reason, now_ms());
    printf("READY boot_id=%04X reason=%d pty=%s\n", boot_id, boot_reason, path ? path : "-");

    char line[128];
    size_t line_len = 0;
    int stdin_open = 1;
    while (!g_stop) {
        struct pollfd fds[2] = {{h->fd, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
        int nfds = stdin_open ? 2 : 1;
        int r = poll(fds, (nfds_t)nfds, 5);
        if (r < 0 && errno != EINTR) {
            perror("gate_controller: poll");
            return 1;
        }
        if (r > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            uint8_t buf[256];
            ssize_t n = read(h->fd, buf, sizeof buf);
            if (n > 0 && !h->mute && !h->deaf) {
                gc_core_rx(&h->core, buf, (size_t)n, now_ms());
            } else if (n <= 0 && errno != EAGAIN && errno != EINTR) {
                struct timespec ts = {0, 5000000};
                nanosleep(&ts, NULL); /* no slave open yet (EIO): wait for one */
            }
        }
        if (stdin_open && r > 0 && (fds[1].revents & (POLLIN | POLLHUP))) {
            char c;
            ssize_t n = read(STDIN_FILENO, &c, 1);
            if (n <= 0) {
                stdin_open = 0;
            } else if (c == '\n' || line_len + 1 >= sizeof line) {
                line[line_len] = '\0';
                line_len = 0;
                control(h, line);
            } else {
                line[line_len++] = c;
            }
        }
        gc_core_tick(&h->core, now_ms());
    }
    return 0;
}
