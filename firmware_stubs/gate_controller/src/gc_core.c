#include "gc_core.h"

#include "gc_crc.h"

static void logmsg(gc_core_t *c, const char *msg)
{
    if (c->hal.log != NULL) {
        c->hal.log(c->hal.ctx, msg);
    }
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)(v & 0xFFu);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)(v & 0xFFu);
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}

static void send(gc_core_t *c, uint8_t seq, uint8_t type, const uint8_t *payload, uint8_t len)
{
    uint8_t wire[GC_MAX_WIRE];
    size_t n = gc_frame_encode(seq, type, payload, len, wire, sizeof wire);
    if (n > 0) {
        c->hal.uart_write(c->hal.ctx, wire, n);
    }
}

static void respond(gc_core_t *c, const gc_frame_t *req, uint8_t result)
{
    send(c, req->seq, (uint8_t)(req->type | GC_RSP_FLAG), &result, 1);
}

/* ---- event queue ---------------------------------------------------------------- */

static void push_event(gc_core_t *c, uint8_t type, const uint8_t *payload, uint8_t len)
{
    if (c->ev_count == GC_EVENT_QUEUE) {
        /* drop the oldest: the host has not acknowledged anything for a long time */
        c->ev_head = (uint8_t)((c->ev_head + 1u) % GC_EVENT_QUEUE);
        c->ev_count--;
        c->ev_sent = false;
        c->events_dropped++;
        logmsg(c, "event queue full: dropped oldest event");
    }
    gc_event_t *e = &c->events[(c->ev_head + c->ev_count) % GC_EVENT_QUEUE];
    e->seq = c->ev_next_seq++;
    e->type = type;
    e->len = len > sizeof e->payload ? (uint8_t)sizeof e->payload : len;
    for (uint8_t i = 0; i < e->len; i++) {
        e->payload[i] = payload[i];
    }
    c->ev_count++;
}

static void service_events(gc_core_t *c)
{
    if (c->ev_count == 0) {
        return;
    }
    if (c->ev_sent && (uint32_t)(c->now_ms - c->ev_sent_at_ms) < GC_EVENT_RETRY_MS) {
        return;
    }
    const gc_event_t *e = &c->events[c->ev_head];
    send(c, e->seq, e->type, e->payload, e->len);
    c->ev_sent = true;
    c->ev_sent_at_ms = c->now_ms;
}

static void ack_event(gc_core_t *c, uint8_t seq)
{
    if (c->ev_count == 0 || c->events[c->ev_head].seq != seq) {
        return; /* stale or duplicate ack */
    }
    c->ev_head = (uint8_t)((c->ev_head + 1u) % GC_EVENT_QUEUE);
    c->ev_count--;
    c->ev_sent = false;
}

/* ---- barrier state machine -------------------------------------------------------- */

/* The barrier follows the direction: none = closed, in, out, both (see gc_hal.h). */
_Static_assert(GC_BARRIER_CLOSED == GC_DIR_NONE && GC_BARRIER_OPEN_IN == GC_DIR_IN &&
                   GC_BARRIER_OPEN_OUT == GC_DIR_OUT && GC_BARRIER_OPEN_BOTH == GC_DIR_BOTH,
               "barrier states mirror directions");

static void enter(gc_core_t *c, gc_state_t state, uint8_t direction)
{
    c->state = state;
    c->direction = direction;
    c->hal.set_barrier(c->hal.ctx, (gc_barrier_t)direction);
}

/* The open in progress ends without a passage: TIMEOUT(why). The caller moves the barrier. */
static void end_open(gc_core_t *c, uint8_t why)
{
    uint8_t p[4];
    put16(p, c->token);
    p[2] = c->direction;
    p[3] = why;
    push_event(c, GC_EVT_TIMEOUT, p, 4);
}

static void apply_emergency(gc_core_t *c)
{
    bool on = c->emergency != 0;
    if (on == (c->state == GC_STATE_EMERGENCY)) {
        return;
    }
    if (on) {
        if (c->state == GC_STATE_OPEN) {
            end_open(c, GC_TIMEOUT_EMERGENCY); /* straight to open-both, no close first */
        }
        enter(c, GC_STATE_EMERGENCY, GC_DIR_BOTH);
    } else {
        enter(c, GC_STATE_CLOSED, GC_DIR_NONE);
    }
    uint8_t p[2] = {on ? 1u : 0u, c->emergency};
    push_event(c, GC_EVT_EMERGENCY, p, 2);
    logmsg(c, on ? "emergency: open both ways" : "emergency cleared: closed");
}

/* ---- commands --------------------------------------------------------------------- */

static void cmd_status(gc_core_t *c, const gc_frame_t *f)
{
    uint8_t p[17];
    uint32_t remaining = 0;
    if (c->state == GC_STATE_OPEN) {
        uint32_t elapsed = (uint32_t)(c->now_ms - c->opened_at_ms);
        remaining = elapsed >= c->open_ms ? 0 : c->open_ms - elapsed;
    }
    p[0] = GC_OK;
    put16(&p[1], c->boot_id);
    p[3] = (uint8_t)c->state;
    p[4] = c->direction;
    put16(&p[5], c->token);
    put16(&p[7], (uint16_t)(remaining > 0xFFFFu ? 0xFFFFu : remaining));
    p[9] = (uint8_t)(((c->emergency & GC_EMERG_FIRE) ? 0x01u : 0u) | (c->tamper ? 0x02u : 0u) |
                     ((c->emergency & GC_EMERG_HOST) ? 0x04u : 0u));
    p[10] = c->ev_count;
    put16(&p[11], c->crc_errors);
    put32(&p[13], (uint32_t)(c->now_ms - c->boot_ms));
    send(c, f->seq, (uint8_t)(f->type | GC_RSP_FLAG), p, sizeof p);
    /* the host is listening: re-send an unacknowledged event now rather than at the next
     * retry, so events queued while nobody listened (e.g. BOOT) arrive promptly */
    if (c->ev_count > 0 && c->ev_sent &&
        (uint32_t)(c->now_ms - c->ev_sent_at_ms) >= GC_EVENT_EARLY_RETRY_MS) {
        c->ev_sent = false;
    }
}

static void cmd_open(gc_core_t *c, const gc_frame_t *f)
{
    uint8_t p[3];
    if (f->len != 5) {
        respond(c, f, GC_ERR_BAD_LENGTH);
        return;
    }
    uint8_t dir = f->payload[0];
    uint16_t ms = get16(&f->payload[1]);
    uint16_t token = get16(&f->payload[3]);
    put16(&p[1], token);
    if ((dir != GC_DIR_IN && dir != GC_DIR_OUT) || ms < GC_OPEN_MIN_MS || ms > GC_OPEN_MAX_MS) {
        p[0] = GC_ERR_BAD_PARAM;
    } else if (c->state == GC_STATE_EMERGENCY) {
        p[0] = GC_ERR_EMERGENCY;
    } else if (c->state == GC_STATE_OPEN) {
        /* a retransmitted OPEN (same token, same direction) is acknowledged again */
        p[0] = (uint8_t)((token == c->token && dir == c->direction) ? GC_OK : GC_ERR_BUSY);
    } else {
        c->token = token;
        c->open_ms = ms;
        c->opened_at_ms = c->now_ms;
        enter(c, GC_STATE_OPEN, dir);
        p[0] = GC_OK;
    }
    send(c, f->seq, (uint8_t)(f->type | GC_RSP_FLAG), p, sizeof p);
}

static void handle(gc_core_t *c, const gc_frame_t *f)
{
    if (f->type & GC_RSP_FLAG) {
        return; /* responses and events are never commands */
    }
    switch (f->type) {
    case GC_CMD_STATUS:
        cmd_status(c, f);
        break;
    case GC_CMD_OPEN:
        cmd_open(c, f);
        break;
    case GC_CMD_CLOSE:
        if (c->state == GC_STATE_OPEN) {
            end_open(c, GC_TIMEOUT_CLOSED);
            enter(c, GC_STATE_CLOSED, GC_DIR_NONE);
        }
        respond(c, f, GC_OK);
        break;
    case GC_CMD_EMERGENCY:
        if (f->len != 1) {
            respond(c, f, GC_ERR_BAD_LENGTH);
            break;
        }
        if (f->payload[0]) {
            c->emergency |= GC_EMERG_HOST;
        } else {
            c->emergency &= (uint8_t)~GC_EMERG_HOST;
        }
        apply_emergency(c);
        respond(c, f, GC_OK);
        break;
    case GC_CMD_REBOOT:
        respond(c, f, GC_OK);
        c->reboot_pending = true;
        c->reboot_at_ms = c->now_ms + GC_REBOOT_DELAY_MS;
        break;
    case GC_CMD_EVENT_ACK:
        if (f->len == 1) {
            ack_event(c, f->payload[0]);
        }
        break;
    default:
        if (f->type < GC_EVT_BOOT - GC_RSP_FLAG) {
            respond(c, f, GC_ERR_UNKNOWN_CMD); /* response type stays below the events */
        } else {
            uint8_t p[2] = {GC_ERR_UNKNOWN_CMD, f->type};
            send(c, f->seq, GC_RSP_NAK, p, 2);
        }
        break;
    }
}

/* ---- public API ------------------------------------------------------------------- */

void gc_core_init(gc_core_t *c, const gc_hal_t *hal, uint16_t boot_id, uint8_t boot_reason,
                  uint32_t now_ms)
{
    uint8_t *raw = (uint8_t *)c;
    for (size_t i = 0; i < sizeof *c; i++) {
        raw[i] = 0;
    }
    c->hal = *hal;
    gc_decoder_init(&c->decoder);
    c->boot_id = boot_id;
    c->boot_ms = now_ms;
    c->now_ms = now_ms;
    enter(c, GC_STATE_CLOSED, GC_DIR_NONE);
    uint8_t p[5];
    put16(p, boot_id);
    p[2] = boot_reason;
    p[3] = GC_FW_MAJOR;
    p[4] = GC_FW_MINOR;
    push_event(c, GC_EVT_BOOT, p, 5);
    service_events(c);
}

void gc_core_rx(gc_core_t *c, const uint8_t *data, size_t len, uint32_t now_ms)
{
    gc_frame_t f;
    c->now_ms = now_ms;
    for (size_t i = 0; i < len; i++) {
        switch (gc_decoder_feed(&c->decoder, data[i], &f)) {
        case GC_RX_FRAME:
            handle(c, &f);
            break;
        case GC_RX_CRC_ERROR:
            c->crc_errors++;
            logmsg(c, "dropped frame: bad CRC");
            break;
        case GC_RX_BAD_FRAME:
            c->bad_frames++;
            logmsg(c, "dropped frame: malformed");
            break;
        case GC_RX_NONE:
            break;
        }
    }
    service_events(c);
}

void gc_core_tick(gc_core_t *c, uint32_t now_ms)
{
    c->now_ms = now_ms;
    if (c->state == GC_STATE_OPEN && (uint32_t)(now_ms - c->opened_at_ms) >= c->open_ms) {
        end_open(c, GC_TIMEOUT_NO_PASSAGE);
        enter(c, GC_STATE_CLOSED, GC_DIR_NONE);
    }
    service_events(c);
    if (c->reboot_pending && (int32_t)(now_ms - c->reboot_at_ms) >= 0) {
        c->reboot_pending = false;
        logmsg(c, "rebooting on command");
        c->hal.reboot(c->hal.ctx);
    }
}

void gc_core_passage(gc_core_t *c, uint8_t direction, uint32_t now_ms)
{
    uint8_t p[5];
    c->now_ms = now_ms;
    if (c->state == GC_STATE_EMERGENCY) {
        return; /* free passage */
    }
    if (c->state == GC_STATE_OPEN && direction == c->direction) {
        uint32_t elapsed = (uint32_t)(now_ms - c->opened_at_ms);
        put16(p, c->token);
        p[2] = direction;
        put16(&p[3], (uint16_t)(elapsed > 0xFFFFu ? 0xFFFFu : elapsed));
        push_event(c, GC_EVT_PASSAGE, p, 5);
        enter(c, GC_STATE_CLOSED, GC_DIR_NONE);
    } else {
        p[0] = GC_ALARM_FORCED;
        p[1] = 1;
        p[2] = direction;
        push_event(c, GC_EVT_ALARM, p, 3);
        logmsg(c, "alarm: forced passage");
    }
    service_events(c);
}

void gc_core_fire_input(gc_core_t *c, bool active, uint32_t now_ms)
{
    c->now_ms = now_ms;
    bool was = (c->emergency & GC_EMERG_FIRE) != 0;
    if (was == active) {
        return;
    }
    uint8_t p[3] = {GC_ALARM_FIRE, active ? 1u : 0u, GC_DIR_NONE};
    push_event(c, GC_EVT_ALARM, p, 3);
    if (active) {
        c->emergency |= GC_EMERG_FIRE;
    } else {
        c->emergency &= (uint8_t)~GC_EMERG_FIRE;
    }
    apply_emergency(c);
    service_events(c);
}

void gc_core_tamper_input(gc_core_t *c, bool active, uint32_t now_ms)
{
    c->now_ms = now_ms;
    if (c->tamper == active) {
        return;
    }
    c->tamper = active;
    uint8_t p[3] = {GC_ALARM_TAMPER, active ? 1u : 0u, GC_DIR_NONE};
    push_event(c, GC_EVT_ALARM, p, 3);
    service_events(c);
}
