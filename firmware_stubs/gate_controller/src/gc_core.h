/* Gate-controller protocol core: command handling and the barrier state machine.
 *
 * States: CLOSED --OPEN(dir, ms, token)--> OPEN --passage--> CLOSED (+PASSAGE event)
 *                                          OPEN --ms elapsed--> CLOSED (+TIMEOUT event)
 *         any --fire input / EMERGENCY cmd--> EMERGENCY (open both ways) --cleared--> CLOSED
 * Events (BOOT, PASSAGE, TIMEOUT, ALARM, EMERGENCY) wait in a small queue; the head is
 * sent and re-sent every GC_EVENT_RETRY_MS until the host acknowledges its sequence
 * number with EVENT_ACK. See docs/gate-protocol.md. Freestanding C11. */
#ifndef GC_CORE_H
#define GC_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "gc_frame.h"
#include "gc_hal.h"

#define GC_FW_MAJOR 1u
#define GC_FW_MINOR 0u

/* commands (host -> controller); the response type is cmd | 0x80 */
#define GC_CMD_STATUS 0x02u
#define GC_CMD_OPEN 0x03u
#define GC_CMD_CLOSE 0x04u
#define GC_CMD_EMERGENCY 0x05u
#define GC_CMD_REBOOT 0x06u
#define GC_CMD_EVENT_ACK 0x07u /* no response */
#define GC_RSP_FLAG 0x80u
/* commands are 0x00..0x3F, responses 0x80..0xBF, events 0xC0..0xFF; an unknown command
 * in 0x40..0x7F is answered with NAK (result, command type) so it cannot look like an event */
#define GC_RSP_NAK 0xBFu

/* events (controller -> host) */
#define GC_EVT_BOOT 0xC0u
#define GC_EVT_PASSAGE 0xC1u
#define GC_EVT_TIMEOUT 0xC2u
#define GC_EVT_ALARM 0xC3u
#define GC_EVT_EMERGENCY 0xC4u

/* result codes (first payload byte of every response) */
#define GC_OK 0x00u
#define GC_ERR_BUSY 0x01u
#define GC_ERR_EMERGENCY 0x02u
#define GC_ERR_BAD_PARAM 0x03u
#define GC_ERR_FAULT 0x04u
#define GC_ERR_UNKNOWN_CMD 0x05u
#define GC_ERR_BAD_LENGTH 0x06u

/* directions */
#define GC_DIR_NONE 0u
#define GC_DIR_IN 1u
#define GC_DIR_OUT 2u
#define GC_DIR_BOTH 3u

/* alarm kinds */
#define GC_ALARM_FORCED 1u  /* passage without (or against) an open */
#define GC_ALARM_TAMPER 2u
#define GC_ALARM_FIRE 3u

/* boot reasons */
#define GC_BOOT_POWER_ON 0u
#define GC_BOOT_COMMANDED 1u
#define GC_BOOT_WATCHDOG 2u

/* timeout reasons */
#define GC_TIMEOUT_NO_PASSAGE 0u
#define GC_TIMEOUT_EMERGENCY 1u
#define GC_TIMEOUT_CLOSED 2u

/* emergency sources (bit mask) */
#define GC_EMERG_FIRE 0x01u
#define GC_EMERG_HOST 0x02u

#define GC_OPEN_MIN_MS 100u
#define GC_OPEN_MAX_MS 60000u
#define GC_EVENT_RETRY_MS 200u
#define GC_EVENT_EARLY_RETRY_MS 20u /* after a STATUS request */
#define GC_EVENT_QUEUE 8u
#define GC_REBOOT_DELAY_MS 20u

typedef enum gc_state {
    GC_STATE_CLOSED = 0,
    GC_STATE_OPEN = 1,
    GC_STATE_EMERGENCY = 2
} gc_state_t;

typedef struct gc_event {
    uint8_t seq;
    uint8_t type;
    uint8_t len;
    uint8_t payload[8];
} gc_event_t;

typedef struct gc_core {
    gc_hal_t hal;
    gc_decoder_t decoder;
    gc_state_t state;
    uint8_t direction;
    uint16_t token;
    uint32_t opened_at_ms;
    uint32_t open_ms;
    uint8_t emergency; /* GC_EMERG_* mask */
    bool tamper;
    uint16_t boot_id;
    uint32_t boot_ms;
    uint32_t now_ms;
    /* event queue (ring) */
    gc_event_t events[GC_EVENT_QUEUE];
    uint8_t ev_head;
    uint8_t ev_count;
    uint8_t ev_next_seq;
    bool ev_sent;
    uint32_t ev_sent_at_ms;
    /* counters */
    uint16_t crc_errors;
    uint16_t bad_frames;
    uint16_t events_dropped;
    /* pending reboot */
    bool reboot_pending;
    uint32_t reboot_at_ms;
} gc_core_t;

/* Initialise; queues a BOOT event. now_ms: any monotonic millisecond clock. */
void gc_core_init(gc_core_t *c, const gc_hal_t *hal, uint16_t boot_id, uint8_t boot_reason,
                  uint32_t now_ms);
/* Feed received UART bytes. */
void gc_core_rx(gc_core_t *c, const uint8_t *data, size_t len, uint32_t now_ms);
/* Run timers (open timeout, event retransmission, pending reboot); call every few ms. */
void gc_core_tick(gc_core_t *c, uint32_t now_ms);
/* Board inputs. */
void gc_core_passage(gc_core_t *c, uint8_t direction, uint32_t now_ms);
void gc_core_fire_input(gc_core_t *c, bool active, uint32_t now_ms);
void gc_core_tamper_input(gc_core_t *c, bool active, uint32_t now_ms);

#endif
