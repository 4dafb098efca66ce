#include "gc_frame.h"

#include "gc_crc.h"

void gc_decoder_init(gc_decoder_t *d)
{
    d->len = 0;
    d->escaped = false;
    d->overflow = false;
    d->in_frame = false;
}

static gc_rx_result_t finish(gc_decoder_t *d, gc_frame_t *out)
{
    size_t n = d->len;
    bool overflow = d->overflow;
    bool escaped = d->escaped;
    d->len = 0;
    d->escaped = false;
    d->overflow = false;
    if (n == 0 && !overflow && !escaped) {
        return GC_RX_NONE; /* back-to-back flags */
    }
    if (overflow || escaped || n < GC_HEADER_LEN + 2u) {
        return GC_RX_BAD_FRAME;
    }
    uint16_t want = (uint16_t)(((uint16_t)d->buf[n - 2] << 8) | d->buf[n - 1]);
    if (gc_crc16(d->buf, n - 2) != want) {
        return GC_RX_CRC_ERROR;
    }
    uint8_t len = d->buf[3];
    if (d->buf[0] != GC_VERSION || len > GC_MAX_PAYLOAD || (size_t)len + GC_HEADER_LEN + 2u != n) {
        return GC_RX_BAD_FRAME;
    }
    out->seq = d->buf[1];
    out->type = d->buf[2];
    out->len = len;
    for (uint8_t i = 0; i < len; i++) {
        out->payload[i] = d->buf[GC_HEADER_LEN + i];
    }
    return GC_RX_FRAME;
}

gc_rx_result_t gc_decoder_feed(gc_decoder_t *d, uint8_t byte, gc_frame_t *out)
{
    if (byte == GC_FLAG) {
        gc_rx_result_t r = d->in_frame ? finish(d, out) : GC_RX_NONE;
        d->in_frame = true;
        return r;
    }
    if (!d->in_frame) {
        return GC_RX_NONE; /* noise before the first flag */
    }
    if (byte == GC_ESC) {
        d->escaped = true;
        return GC_RX_NONE;
    }
    if (d->escaped) {
        byte ^= GC_ESC_XOR;
        d->escaped = false;
    }
    if (d->len >= GC_MAX_BODY) {
        d->overflow = true;
        return GC_RX_NONE;
    }
    d->buf[d->len++] = byte;
    return GC_RX_NONE;
}

/* Append byte, escaped if needed, at out[n]; returns the new length. The caller has
 * checked that out holds GC_MAX_WIRE bytes, the worst case. */
static size_t put(uint8_t byte, uint8_t *out, size_t n)
{
    if (byte == GC_FLAG || byte == GC_ESC) {
        out[n++] = GC_ESC;
        byte ^= GC_ESC_XOR;
    }
    out[n++] = byte;
    return n;
}

size_t gc_frame_encode(uint8_t seq, uint8_t type, const uint8_t *payload, uint8_t len,
                       uint8_t *out, size_t cap)
{
    if (len > GC_MAX_PAYLOAD || cap < GC_MAX_WIRE) {
        return 0;
    }
    uint8_t header[GC_HEADER_LEN] = {GC_VERSION, seq, type, len};
    uint16_t crc = gc_crc16_update(GC_CRC_INIT, header, GC_HEADER_LEN);
    crc = gc_crc16_update(crc, payload, len);
    size_t n = 0;
    out[n++] = GC_FLAG;
    for (size_t i = 0; i < GC_HEADER_LEN; i++) {
        n = put(header[i], out, n);
    }
    for (size_t i = 0; i < len; i++) {
        n = put(payload[i], out, n);
    }
    n = put((uint8_t)(crc >> 8), out, n);
    n = put((uint8_t)(crc & 0xFFu), out, n);
    out[n++] = GC_FLAG;
    return n;
}
