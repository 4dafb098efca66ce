/* Framing of the gate-controller protocol (see docs/gate-protocol.md).
 *
 * On the wire:   0x7E | escaped(body) | 0x7E
 * body:          VER(0x01) SEQ TYPE LEN PAYLOAD[LEN] CRC16_HI CRC16_LO
 * escaping:      0x7E -> 0x7D 0x5E, 0x7D -> 0x7D 0x5D (HDLC style)
 * CRC:           CRC-16/CCITT-FALSE over VER..PAYLOAD, big-endian.
 *
 * The decoder is a byte-at-a-time state machine: a flag always (re)starts a frame, so
 * a partial frame is dropped as soon as the next frame begins, and a frame with a bad
 * CRC, a bad length or an unknown version is counted and dropped. Freestanding C11. */
#ifndef GC_FRAME_H
#define GC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GC_FLAG 0x7Eu
#define GC_ESC 0x7Du
#define GC_ESC_XOR 0x20u
#define GC_VERSION 0x01u
#define GC_MAX_PAYLOAD 32u
#define GC_HEADER_LEN 4u
#define GC_MAX_BODY (GC_HEADER_LEN + GC_MAX_PAYLOAD + 2u)
/* worst case: every body byte escaped, plus two flags */
#define GC_MAX_WIRE (2u * GC_MAX_BODY + 2u)

typedef struct gc_frame {
    uint8_t seq;
    uint8_t type;
    uint8_t len;
    uint8_t payload[GC_MAX_PAYLOAD];
} gc_frame_t;

typedef enum gc_rx_result {
    GC_RX_NONE = 0,      /* byte consumed, no frame yet */
    GC_RX_FRAME,         /* a complete, valid frame is in *out */
    GC_RX_CRC_ERROR,     /* a frame ended with a bad CRC: dropped */
    GC_RX_BAD_FRAME      /* too short/long, length mismatch or bad version: dropped */
} gc_rx_result_t;

typedef struct gc_decoder {
    uint8_t buf[GC_MAX_BODY];
    size_t len;
    bool escaped;
    bool overflow;
    bool in_frame;
} gc_decoder_t;

void gc_decoder_init(gc_decoder_t *d);
/* Feed one received byte. Returns GC_RX_FRAME when *out holds a new frame. */
gc_rx_result_t gc_decoder_feed(gc_decoder_t *d, uint8_t byte, gc_frame_t *out);

/* Encode a frame into out (capacity cap, at least GC_MAX_WIRE). Returns the number of
 * bytes written, or 0 if len > GC_MAX_PAYLOAD or cap is too small. */
size_t gc_frame_encode(uint8_t seq, uint8_t type, const uint8_t *payload, uint8_t len,
                       uint8_t *out, size_t cap);

#endif
