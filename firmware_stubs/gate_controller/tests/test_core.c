/* Host unit tests of the portable core: CRC, framing, commands, state machine, events. */
#include <stdio.h>
#include <string.h>

#include "../src/gc_core.h"
#include "../src/gc_crc.h"

static int g_failed = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        g_checks++;                                                                  \
        if (!(cond)) {                                                               \
            g_failed++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

/* ---- fake board ------------------------------------------------------------------- */

typedef struct fake {
    uint8_t tx[4096];
    size_t tx_len;
    gc_barrier_t barrier;
    int barrier_changes;
    int reboots;
} fake_t;

static void f_write(void *ctx, const uint8_t *d, size_t n)
{
    fake_t *f = ctx;
    if (f->tx_len + n <= sizeof f->tx) {
        memcpy(f->tx + f->tx_len, d, n);
        f->tx_len += n;
    }
}

static void f_barrier(void *ctx, gc_barrier_t s)
{
    fake_t *f = ctx;
    f->barrier = s;
    f->barrier_changes++;
}

static void f_reboot(void *ctx)
{
    ((fake_t *)ctx)->reboots++;
}

/* Decode everything transmitted so far into frames[], clearing tx. */
static int take_frames(fake_t *f, gc_frame_t *frames, int max)
{
    gc_decoder_t d;
    gc_decoder_init(&d);
    int n = 0;
    for (size_t i = 0; i < f->tx_len; i++) {
        gc_frame_t fr;
        if (gc_decoder_feed(&d, f->tx[i], &fr) == GC_RX_FRAME && n < max) {
            frames[n++] = fr;
        }
    }
    f->tx_len = 0;
    return n;
}

static void send_cmd(gc_core_t *c, uint8_t seq, uint8_t type, const uint8_t *p, uint8_t len,
                     uint32_t now)
{
    uint8_t wire[GC_MAX_WIRE];
    size_t n = gc_frame_encode(seq, type, p, len, wire, sizeof wire);
    gc_core_rx(c, wire, n, now);
}

/* A controller booted at time now (boot id 0xBEEF); its BOOT event is still unacknowledged. */
static void setup_at(gc_core_t *c, fake_t *f, uint32_t now)
{
    memset(f, 0, sizeof *f);
    gc_hal_t hal = {f, f_write, f_barrier, f_reboot, NULL};
    gc_core_init(c, &hal, 0xBEEF, GC_BOOT_POWER_ON, now);
}

static void setup(gc_core_t *c, fake_t *f)
{
    setup_at(c, f, 1000);
}

static void ack(gc_core_t *c, uint8_t evseq, uint32_t now)
{
    send_cmd(c, 0x55, GC_CMD_EVENT_ACK, &evseq, 1, now);
}

/* setup_at, then the host acknowledges the BOOT event: the queue is empty, tx is clear. */
static void setup_acked_at(gc_core_t *c, fake_t *f, uint32_t now)
{
    gc_frame_t boot[2];
    setup_at(c, f, now);
    CHECK(take_frames(f, boot, 2) == 1 && boot[0].type == GC_EVT_BOOT && boot[0].seq == 0);
    ack(c, 0, now);
    CHECK(c->ev_count == 0 && f->tx_len == 0);
    f->barrier_changes = 0;
}

static void setup_acked(gc_core_t *c, fake_t *f)
{
    setup_acked_at(c, f, 1000);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_crc(void)
{
    const uint8_t check[] = "123456789";
    CHECK(gc_crc16(check, 9) == 0x29B1);
    CHECK(gc_crc16(check, 0) == 0xFFFF);
}

static void test_frame_roundtrip_and_escaping(void)
{
    uint8_t payload[] = {GC_FLAG, GC_ESC, 0x00, 0xFF};
    uint8_t wire[GC_MAX_WIRE];
    size_t n = gc_frame_encode(0x7E, 0x7D, payload, sizeof payload, wire, sizeof wire);
    CHECK(n > 0);
    CHECK(wire[0] == GC_FLAG && wire[n - 1] == GC_FLAG);
    for (size_t i = 1; i + 1 < n; i++) {
        CHECK(wire[i] != GC_FLAG);
    }
    gc_decoder_t d;
    gc_decoder_init(&d);
    gc_frame_t fr;
    int frames = 0;
    for (size_t i = 0; i < n; i++) {
        if (gc_decoder_feed(&d, wire[i], &fr) == GC_RX_FRAME) {
            frames++;
        }
    }
    CHECK(frames == 1);
    CHECK(fr.seq == 0x7E && fr.type == 0x7D && fr.len == 4);
    CHECK(memcmp(fr.payload, payload, 4) == 0);
    CHECK(gc_frame_encode(0, 0, payload, GC_MAX_PAYLOAD + 1, wire, sizeof wire) == 0);
}

static void test_worked_example(void)
{
    /* docs/gate-protocol.md: OPEN in, 5000 ms, token 0x0001, seq 0x01 */
    const uint8_t payload[] = {0x01, 0x13, 0x88, 0x00, 0x01};
    const uint8_t expect[] = {0x7E, 0x01, 0x01, 0x03, 0x05, 0x01, 0x13,
                              0x88, 0x00, 0x01, 0x87, 0xF1, 0x7E};
    uint8_t wire[GC_MAX_WIRE];
    size_t n = gc_frame_encode(0x01, GC_CMD_OPEN, payload, 5, wire, sizeof wire);
    CHECK(n == sizeof expect);
    CHECK(memcmp(wire, expect, sizeof expect) == 0);
}

static void test_decoder_errors(void)
{
    gc_decoder_t d;
    gc_decoder_init(&d);
    gc_frame_t fr;
    uint8_t wire[GC_MAX_WIRE];
    const uint8_t p[] = {1, 2, 3};
    size_t n = gc_frame_encode(9, GC_CMD_STATUS, p, 3, wire, sizeof wire);
    /* bad CRC */
    wire[5] ^= 0x01;
    gc_rx_result_t last = GC_RX_NONE;
    for (size_t i = 0; i < n; i++) {
        last = gc_decoder_feed(&d, wire[i], &fr);
    }
    CHECK(last == GC_RX_CRC_ERROR);
    wire[5] ^= 0x01;
    /* partial frame (first half) then a full frame: the partial one is dropped */
    int got = 0;
    int bad = 0;
    for (size_t i = 0; i < n / 2; i++) {
        gc_decoder_feed(&d, wire[i], &fr);
    }
    for (size_t i = 0; i < n; i++) {
        gc_rx_result_t r = gc_decoder_feed(&d, wire[i], &fr);
        got += r == GC_RX_FRAME;
        bad += r == GC_RX_BAD_FRAME || r == GC_RX_CRC_ERROR;
    }
    CHECK(got == 1 && bad == 1);
    CHECK(fr.seq == 9 && fr.len == 3);
    /* noise before the first flag, and an over-long frame */
    gc_decoder_init(&d);
    CHECK(gc_decoder_feed(&d, 0x42, &fr) == GC_RX_NONE);
    gc_decoder_feed(&d, GC_FLAG, &fr);
    for (int i = 0; i < 100; i++) {
        gc_decoder_feed(&d, 0x11, &fr);
    }
    CHECK(gc_decoder_feed(&d, GC_FLAG, &fr) == GC_RX_BAD_FRAME);
    /* a frame that ends inside an escape, even an empty one */
    gc_decoder_feed(&d, GC_ESC, &fr);
    CHECK(gc_decoder_feed(&d, GC_FLAG, &fr) == GC_RX_BAD_FRAME);
    /* a length byte that disagrees with the frame */
    uint8_t body[] = {GC_VERSION, 1, GC_CMD_STATUS, 4, 0, 0};
    uint16_t crc = gc_crc16(body, 4);
    body[4] = (uint8_t)(crc >> 8);
    body[5] = (uint8_t)crc;
    gc_decoder_feed(&d, GC_FLAG, &fr);
    for (size_t i = 0; i < sizeof body; i++) {
        gc_decoder_feed(&d, body[i], &fr);
    }
    CHECK(gc_decoder_feed(&d, GC_FLAG, &fr) == GC_RX_BAD_FRAME);
}

static void test_boot_event_retransmitted_until_acked(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    setup(&c, &f);
    CHECK(f.barrier == GC_BARRIER_CLOSED);
    int n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_BOOT && fr[0].payload[0] == 0xBE);
    gc_core_tick(&c, 1100);
    CHECK(take_frames(&f, fr, 8) == 0);
    gc_core_tick(&c, 1000 + GC_EVENT_RETRY_MS);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_BOOT);
    ack(&c, fr[0].seq, 1300);
    gc_core_tick(&c, 2000);
    CHECK(take_frames(&f, fr, 8) == 0);
}

static void open_gate(gc_core_t *c, fake_t *f, uint8_t dir, uint16_t ms, uint16_t token,
                      uint32_t now, uint8_t *result)
{
    gc_frame_t fr[8];
    uint8_t p[5] = {dir, (uint8_t)(ms >> 8), (uint8_t)ms, (uint8_t)(token >> 8), (uint8_t)token};
    send_cmd(c, 0x21, GC_CMD_OPEN, p, 5, now);
    int n = take_frames(f, fr, 8);
    *result = 0xEE;
    for (int i = 0; i < n; i++) {
        if (fr[i].type == (GC_CMD_OPEN | GC_RSP_FLAG) && fr[i].seq == 0x21) {
            *result = fr[i].payload[0];
        }
    }
}

static void test_open_passage(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    uint8_t result;
    setup_acked(&c, &f);
    open_gate(&c, &f, GC_DIR_IN, 3000, 0x1234, 1010, &result);
    CHECK(result == GC_OK);
    CHECK(f.barrier == GC_BARRIER_OPEN_IN);
    /* a retransmitted OPEN with the same token is acknowledged, another is busy */
    open_gate(&c, &f, GC_DIR_IN, 3000, 0x1234, 1020, &result);
    CHECK(result == GC_OK);
    open_gate(&c, &f, GC_DIR_IN, 3000, 0x9999, 1030, &result);
    CHECK(result == GC_ERR_BUSY);
    /* status while open */
    send_cmd(&c, 0x30, GC_CMD_STATUS, NULL, 0, 2010);
    int n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == (GC_CMD_STATUS | GC_RSP_FLAG) && fr[0].len == 17);
    CHECK(fr[0].payload[3] == GC_STATE_OPEN && fr[0].payload[4] == GC_DIR_IN);
    CHECK(((fr[0].payload[7] << 8) | fr[0].payload[8]) == 2000);
    gc_core_passage(&c, GC_DIR_IN, 2500);
    CHECK(f.barrier == GC_BARRIER_CLOSED);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_PASSAGE);
    CHECK(fr[0].payload[0] == 0x12 && fr[0].payload[1] == 0x34 && fr[0].payload[2] == GC_DIR_IN);
    CHECK(((fr[0].payload[3] << 8) | fr[0].payload[4]) == 1490);
}

static void test_open_timeout_and_bad_params(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    uint8_t result;
    setup_acked(&c, &f);
    open_gate(&c, &f, 7, 3000, 1, 1000, &result);
    CHECK(result == GC_ERR_BAD_PARAM);
    open_gate(&c, &f, GC_DIR_OUT, 10, 1, 1000, &result);
    CHECK(result == GC_ERR_BAD_PARAM);
    open_gate(&c, &f, GC_DIR_OUT, GC_OPEN_MAX_MS + 1, 1, 1000, &result);
    CHECK(result == GC_ERR_BAD_PARAM && f.barrier_changes == 0);
    send_cmd(&c, 0x22, GC_CMD_OPEN, (const uint8_t *)"\x01", 1, 1000);
    int n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].payload[0] == GC_ERR_BAD_LENGTH);
    send_cmd(&c, 0x23, 0x42, NULL, 0, 1000);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_RSP_NAK && fr[0].payload[0] == GC_ERR_UNKNOWN_CMD);
    CHECK(fr[0].payload[1] == 0x42);
    send_cmd(&c, 0x24, 0x3E, NULL, 0, 1000);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == 0xBE && fr[0].payload[0] == GC_ERR_UNKNOWN_CMD);
    open_gate(&c, &f, GC_DIR_OUT, 500, 7, 1000, &result);
    CHECK(result == GC_OK && f.barrier == GC_BARRIER_OPEN_OUT);
    gc_core_tick(&c, 1499);
    CHECK(f.barrier == GC_BARRIER_OPEN_OUT);
    gc_core_tick(&c, 1500);
    CHECK(f.barrier == GC_BARRIER_CLOSED);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_TIMEOUT && fr[0].payload[1] == 7);
    CHECK(fr[0].payload[3] == GC_TIMEOUT_NO_PASSAGE);
}

static void test_forced_passage_and_tamper(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    setup_acked(&c, &f);
    gc_core_passage(&c, GC_DIR_OUT, 1100);
    int n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_ALARM && fr[0].payload[0] == GC_ALARM_FORCED);
    uint8_t forced_seq = fr[0].seq;
    /* the tamper alarm queues behind the unacknowledged forced-passage alarm */
    gc_core_tamper_input(&c, true, 1110);
    CHECK(take_frames(&f, fr, 8) == 0);
    ack(&c, forced_seq, 1120);
    n = take_frames(&f, fr, 8);
    CHECK(n == 1 && fr[0].type == GC_EVT_ALARM && fr[0].payload[0] == GC_ALARM_TAMPER);
    CHECK(fr[0].payload[1] == 1);
}

static void test_fire_alarm_emergency(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    uint8_t result;
    setup_acked(&c, &f);
    open_gate(&c, &f, GC_DIR_IN, 5000, 3, 1000, &result);
    CHECK(result == GC_OK);
    f.barrier_changes = 0;
    gc_core_fire_input(&c, true, 1200);
    CHECK(f.barrier == GC_BARRIER_OPEN_BOTH && c.state == GC_STATE_EMERGENCY);
    CHECK(f.barrier_changes == 1); /* straight from open-in to open-both, never closed between */
    /* queued: ALARM(fire), TIMEOUT(token 3, emergency), EMERGENCY(on) */
    uint8_t types[3] = {0};
    for (int i = 0; i < 3; i++) {
        int n = take_frames(&f, fr, 8);
        CHECK(n == 1);
        types[i] = fr[0].type;
        if (fr[0].type == GC_EVT_TIMEOUT) {
            CHECK(fr[0].payload[3] == GC_TIMEOUT_EMERGENCY);
        }
        ack(&c, fr[0].seq, 1210);
    }
    CHECK(types[0] == GC_EVT_ALARM && types[1] == GC_EVT_TIMEOUT && types[2] == GC_EVT_EMERGENCY);
    open_gate(&c, &f, GC_DIR_IN, 5000, 4, 1300, &result);
    CHECK(result == GC_ERR_EMERGENCY);
    gc_core_passage(&c, GC_DIR_IN, 1400); /* free passage: no alarm */
    CHECK(take_frames(&f, fr, 8) == 0);
    /* host-commanded emergency keeps it open after the fire input clears */
    const uint8_t on = 1;
    send_cmd(&c, 0x40, GC_CMD_EMERGENCY, &on, 1, 1500);
    take_frames(&f, fr, 8);
    gc_core_fire_input(&c, false, 1600);
    CHECK(f.barrier == GC_BARRIER_OPEN_BOTH);
    const uint8_t off = 0;
    send_cmd(&c, 0x41, GC_CMD_EMERGENCY, &off, 1, 1700);
    CHECK(f.barrier == GC_BARRIER_CLOSED && c.state == GC_STATE_CLOSED);
}

static void test_event_queue_overflow(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    setup(&c, &f);
    for (int i = 0; i < 20; i++) {
        gc_core_passage(&c, GC_DIR_IN, (uint32_t)(1000 + i));
    }
    CHECK(c.ev_count == GC_EVENT_QUEUE);
    CHECK(c.events_dropped == 20 + 1 - GC_EVENT_QUEUE);
    /* the oldest (BOOT and the first forced-passage alarms) went; the newest are kept */
    CHECK(c.events[c.ev_head].seq == 20 + 1 - GC_EVENT_QUEUE);
    take_frames(&f, fr, 8); /* each new head was sent as the old one was dropped */
    gc_core_tick(&c, 1019 + GC_EVENT_RETRY_MS);
    CHECK(take_frames(&f, fr, 8) == 1 && fr[0].seq == 20 + 1 - GC_EVENT_QUEUE);
}

static void test_crc_error_counted_and_ignored(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    setup_acked(&c, &f);
    uint8_t wire[GC_MAX_WIRE];
    size_t n = gc_frame_encode(5, GC_CMD_STATUS, NULL, 0, wire, sizeof wire);
    wire[n - 2] ^= 0x01;
    gc_core_rx(&c, wire, n, 1000);
    CHECK(take_frames(&f, fr, 8) == 0);
    CHECK(c.crc_errors == 1);
    send_cmd(&c, 6, GC_CMD_STATUS, NULL, 0, 1000);
    CHECK(take_frames(&f, fr, 8) == 1 && fr[0].seq == 6);
    CHECK(((fr[0].payload[11] << 8) | fr[0].payload[12]) == 1);
}

static void test_reboot_command(void)
{
    gc_core_t c;
    fake_t f;
    gc_frame_t fr[8];
    setup_acked(&c, &f);
    send_cmd(&c, 9, GC_CMD_REBOOT, NULL, 0, 1000);
    CHECK(take_frames(&f, fr, 8) == 1 && fr[0].seq == 9);
    CHECK(fr[0].type == (GC_CMD_REBOOT | GC_RSP_FLAG) && fr[0].payload[0] == GC_OK);
    gc_core_tick(&c, 1000 + GC_REBOOT_DELAY_MS - 1);
    CHECK(f.reboots == 0);
    gc_core_tick(&c, 1000 + GC_REBOOT_DELAY_MS);
    CHECK(f.reboots == 1);
}

static void test_clock_wraparound(void)
{
    gc_core_t c;
    fake_t f;
    uint8_t result;
    setup_acked_at(&c, &f, 0xFFFFFF00u);
    open_gate(&c, &f, GC_DIR_IN, 1000, 1, 0xFFFFFF00u, &result);
    CHECK(result == GC_OK);
    gc_core_tick(&c, 0x00000100u); /* 512 ms later, across the wrap */
    CHECK(f.barrier == GC_BARRIER_OPEN_IN);
    gc_core_tick(&c, 0x000002E8u); /* 1000 ms later */
    CHECK(f.barrier == GC_BARRIER_CLOSED);
}

int main(void)
{
    test_crc();
    test_frame_roundtrip_and_escaping();
    test_worked_example();
    test_decoder_errors();
    test_boot_event_retransmitted_until_acked();
    test_open_passage();
    test_open_timeout_and_bad_params();
    test_forced_passage_and_tamper();
    test_fire_alarm_emergency();
    test_event_queue_overflow();
    test_crc_error_counted_and_ignored();
    test_reboot_command();
    test_clock_wraparound();
    printf("%d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
